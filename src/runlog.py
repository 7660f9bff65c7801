"""Run logs and run records: model-zoo log lines, JSON-lines metrics, the run manifest.

log.txt carries the greppable model-zoo lines
    epoch: 1, step: 100, outputs are 0.523411 | att 0.41 rep 0.11 | lr 4.50e-05 | 31.2 seq/s | eta 0:03:12
    The best acc is 0.8412
plus one `eval ...` line per evaluation with every metric. metrics.jsonl beside it has one JSON object per
logging step and per eval. manifest.json has the resolved config, seed, package versions and git hash.
In data-parallel runs rank 0 writes log.txt; every other rank writes log_rank<k>.txt.
"""
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from src.errors import UserError
from src.fileio import atomic_json


class RunLog:
    def __init__(self, out_dir: str, rank: int = 0, echo: bool = True):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir = out_dir
        self.rank = rank
        name = "log.txt" if rank == 0 else f"log_rank{rank}.txt"
        self.path = os.path.join(out_dir, name)
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl" if rank == 0 else f"metrics_rank{rank}.jsonl")
        self.echo = echo
        self._f = open(self.path, "a", encoding="utf-8")
        self._m = open(self.metrics_path, "a", encoding="utf-8")

    def info(self, line: str):
        self._f.write(line + "\n")
        self._f.flush()
        if self.echo:
            print(line, flush=True)

    def record(self, kind: str, **values):
        values = {"kind": kind, "time": round(time.time(), 3), **values}
        self._m.write(json.dumps(values, sort_keys=True) + "\n")
        self._m.flush()

    def close(self):
        self._f.close()
        self._m.close()


def read_records(run_dir: str, kind: str = None, missing_ok: bool = False) -> list:
    """The records `RunLog.record` wrote to <run_dir>/metrics.jsonl (rank 0), in order; only those of `kind`
    ("train", "eval", "width", ...) when given. A missing file is a UserError naming it ([] with missing_ok)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        if missing_ok:
            return []
        raise UserError(f"{path}: missing (is '{run_dir}' a finished run? see its log.txt)")
    with open(path, encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [r for r in recs if r.get("kind") == kind] if kind else recs


def read_manifest(run_dir: str, missing_ok: bool = False) -> dict:
    """<run_dir>/manifest.json as `RunLog` wrote it (resolved config, command, seed, versions, git hash). A missing
    file is a UserError naming it ({} with missing_ok)."""
    path = os.path.join(run_dir, "manifest.json")
    if not os.path.isfile(path):
        if missing_ok:
            return {}
        raise UserError(f"{path}: missing (is '{run_dir}' a run folder? see its log.txt)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def train_line(epoch: int, step: int, loss: float, parts: dict, lr: float, seq_per_s: float, eta_s: float) -> str:
    part_txt = " ".join(f"{k} {v:.6f}" for k, v in parts.items())
    return (f"epoch: {epoch}, step: {step}, outputs are {loss:.6f} | {part_txt} | lr {lr:.3e} | "
            f"{seq_per_s:.1f} seq/s | eta {format_duration(eta_s)}")


def eval_line(epoch: int, step: int, metrics: dict, main: str, best: float, best_step: int) -> str:
    txt = ", ".join(f"{k} {v:.6f}" for k, v in metrics.items())
    return f"eval epoch: {epoch}, step: {step}, {txt}, best {main} {best:.6f} (step {best_step})"


def git_hash() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        h = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                           timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (h + ("-dirty" if dirty else "")) if h else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("mindspore", "numpy", "tokenizers", "safetensors", "tfrecord", "onnxruntime", "pyyaml"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_manifest(out_dir: str, config: dict, seed: int, extra: dict = None) -> str:
    """Resolved config, seed, package versions, git hash and command line: enough to rerun the job."""
    manifest = {
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "git": git_hash(),
        "packages": package_versions(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "config": config,
    }
    if extra:
        manifest.update(extra)
    path = atomic_json(os.path.join(out_dir, "manifest.json"), manifest, sort_keys=True)
    return path
