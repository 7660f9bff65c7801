"""The output folder of a run: no partial outputs on errors (`output_guard`), and a clear error when the folder or
one of its parents is a file."""
import contextlib
import os

from src.config import RESOLVED_NAME
from src.errors import UserError


def check_output_dir(out_dir: str, what: str = "output_dir") -> str:
    """UserError if `out_dir` or one of its existing ancestors is a file (makedirs would fail with a traceback)."""
    path = os.path.abspath(out_dir)
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what}: '{path}' is a file, expected a directory (for '{out_dir}')")
    return out_dir


def _stamp(path: str):
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def _files_under(folder: str) -> set:
    out = set()
    for base, _, files in os.walk(folder):
        out.update(os.path.join(base, f) for f in files)
    return out


RUN_DESCRIPTION_FILES = (RESOLVED_NAME, "manifest.json", "config.json", "quant.json")


@contextlib.contextmanager
def output_guard(out_dir: str, what: str = "output_dir"):
    """No partial outputs on user errors: files (and folders) that did not exist before and were created inside
    the block are removed again when it raises a UserError, unless the error says keep_outputs (a run that
    diverged keeps its logs and last good checkpoints). A rerun into a folder that holds an earlier run rewrites
    that run's description (RUN_DESCRIPTION_FILES: resolved config, manifest, model and quant configs) as it
    starts; on such an error, if the earlier run's other outputs (checkpoints, ...; logs aside) are all unchanged,
    those files get their earlier content back, so they still describe the checkpoints beside them. Other
    pre-existing files are never touched."""
    check_output_dir(out_dir, what)
    out_dir = os.path.abspath(out_dir)
    missing = []                                      # folders this run creates, deepest first
    path = out_dir
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    before = _files_under(out_dir) if not missing else set()
    dirs_before = {b for b, _, _ in os.walk(out_dir)}
    described, outputs = {}, {}
    for f in before:
        if os.path.basename(f) in RUN_DESCRIPTION_FILES:
            with open(f, "rb") as fh:
                described[f] = fh.read()
        elif not f.endswith((".txt", ".jsonl")):                 # logs are appended to, not replaced
            outputs[f] = _stamp(f)
    try:
        yield
    except UserError as e:
        if not getattr(e, "keep_outputs", False):
            for f in sorted(_files_under(out_dir) - before):
                with contextlib.suppress(OSError):
                    os.remove(f)
            replaced = any(_stamp(f) != stamp for f, stamp in outputs.items())
            for f, data in ({} if replaced else described).items():
                try:
                    with open(f, "rb") as fh:
                        same = fh.read() == data
                except OSError:
                    same = False
                if not same:
                    with contextlib.suppress(OSError):
                        with open(f + ".restore", "wb") as fh:
                            fh.write(data)
                        os.replace(f + ".restore", f)
            for base in sorted({b for b, _, _ in os.walk(out_dir)} - dirs_before, reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(base)                          # new and empty (deepest first)
            for folder in missing:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        raise
