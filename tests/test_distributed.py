"""Data parallel through msrun (CPU, mccl, loopback) and the Ascend rank-table contract.

- `test_grads_averaged_exactly_once`: 2 msrun workers, TrainStep(data_parallel=True) + plain SGD (lr 1) on
  loss = sum(w * x) with x different per rank: the update must be exactly -mean(x) (sum: -sum, double
  averaging: -mean/2, no reduction: -x of the rank). SGD, because Adam's update is invariant to a global
  gradient scale and would hide a double average.
- `test_two_workers_match_one_worker_at_double_batch`: run_task_distill.py (teacher fine-tuning, CE mean over
  the batch, no dropout) on 2 msrun workers (scripts/run_distributed_td_cpu.sh) at batch 2 vs 1 process at
  batch 4: same global batches, so the same weights after 16 steps (<= 1e-5), rank 0 alone logs "The best acc
  is", rank 1 logs to log_rank1.txt. The same for TernaryBERT (2-bit weights) and the width supernet through
  their msrun scripts.
- every msrun launch (marked `slow`) runs once more on another port when msrun's scheduler could not bind the
  free port it was given (run_msrun);
- rank table: validation (one UserError naming the field) and this host's ranks on multi-server tables; the
  Ascend script stops with the validator's one-line error before launching anything.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402

from src.errors import UserError  # noqa: E402
from src.rank_table import load_rank_table, local_ranks, rank_size, validate_rank_table  # noqa: E402

ROOT = tiny_run.ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# what msrun's scheduler logs when its master port is taken: free_port() only saw the port free, another process can
# bind it before msrun does (the workers would then wait for the scheduler until --cluster_time_out)
PORT_TAKEN = "Failed to init the tcp server"


def run_msrun(make_cmd, log_dir, clean=(), timeout=400):
    """make_cmd(port) -> (argv, env) of an msrun launch with its logs in `log_dir`, run on a free port. When the
    scheduler log says the port was taken, that try is stopped at once and the launch runs once more on another
    port, after removing `clean` (the first try's output folders) and its logs."""
    sched = os.path.join(log_dir, "scheduler.log")
    for _ in range(2):
        argv, env = make_cmd(free_port())
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        deadline = time.time() + timeout
        while True:
            try:
                out, err = proc.communicate(timeout=1)
                return subprocess.CompletedProcess(argv, proc.returncode, out, err)
            except subprocess.TimeoutExpired:
                pass
            taken = os.path.exists(sched) and PORT_TAKEN in _read(sched)
            if taken or time.time() > deadline:
                _stop(proc)
                if not taken:
                    raise subprocess.TimeoutExpired(argv, timeout)
                break
        for path in (*clean, log_dir):
            shutil.rmtree(path, ignore_errors=True)
    pytest.fail(f"msrun: the master port was taken twice ({PORT_TAKEN!r} in {sched})")


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _stop(proc):
    """Stop a launch started by run_msrun: SIGINT to its session (msrun then kills its workers, which run in
    sessions of their own, and its scheduler), SIGKILL to the session if it is still there after 60 s."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def msrun(args, log_dir, workers=2, timeout=400):
    def cmd(port):
        return ([os.path.join(os.path.dirname(sys.executable), "msrun"), f"--worker_num={workers}",
                 f"--local_worker_num={workers}", "--master_addr=127.0.0.1", f"--master_port={port}",
                 f"--log_dir={log_dir}", "--join=True", "--cluster_time_out=300"] + list(args), tiny_run.env())
    return run_msrun(cmd, log_dir, timeout=timeout)


def msrun_script(script, args, log_dir, clean, timeout=400):
    """bash `script` (a user-facing scripts/run_distributed_*_cpu.sh) with `args`, through run_msrun."""
    def cmd(port):
        env = dict(tiny_run.env(), PYTHON=sys.executable, MASTER_PORT=str(port), LOG_DIR=log_dir)
        return ["bash", script] + list(args), env
    return run_msrun(cmd, log_dir, clean, timeout)


def worker_logs(log_dir, workers=2):
    out = []
    for r in range(workers):
        with open(os.path.join(log_dir, f"worker_{r}.log"), encoding="utf-8", errors="replace") as f:
            out.append(f.read())
    return out


PROBE = '''
import sys
import numpy as np, mindspore as ms
from mindspore import nn, Parameter
from src import runtime
from src.train_step import TrainStep
rank, world = runtime.init_context("CPU", "graph", 1, distributed=True)

class LinearLoss(nn.Cell):
    def __init__(self):
        super().__init__()
        self.w = Parameter(ms.Tensor(np.zeros(3, np.float32)), name="w")
    def construct(self, x):
        loss = (self.w * x).sum()
        return loss, (loss,)

net = LinearLoss()
step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=1.0), clip_mode="none", data_parallel=True)
step.set_train(True)
step(ms.Tensor(np.array([1.0, 2.0, 4.0], np.float32) * (rank + 1) ** 2))   # rank 0: x, rank 1: 4x
print(f"PROBE rank={rank} world={world} w={net.w.asnumpy().tolist()}", flush=True)
'''


@pytest.mark.slow
def test_grads_averaged_exactly_once(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    res = msrun([str(script)], str(tmp_path / "log"))
    logs = worker_logs(str(tmp_path / "log"))
    assert res.returncode == 0, (res.stdout[-1500:], logs[0][-1500:])
    mean = -(np.array([1.0, 2.0, 4.0]) * (1 + 4) / 2)                  # -(x + 4x) / 2 = [-2.5, -5, -10]
    for r, text in enumerate(logs):
        line = [ln for ln in text.splitlines() if ln.startswith("PROBE")][0]
        assert f"rank={r} world=2" in line
        w = json.loads(line.split("w=", 1)[1])
        np.testing.assert_array_equal(w, mean)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_run.make_workspace(str(tmp_path_factory.mktemp("dist_ws")))


@pytest.mark.slow
def test_two_workers_match_one_worker_at_double_batch(ws, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    common = {"finetune.epochs": 1, "eval.every": 8}
    ref = tiny_run.run_script("run_task_distill.py", tiny_run.finetune_args(ws, one, batch=4, **common))
    assert ref.returncode == 0, ref.stderr[-2000:]
    res = msrun_script("scripts/run_distributed_td_cpu.sh",                       # the user-facing msrun script
                       ["2"] + tiny_run.finetune_args(ws, two, batch=2, **common), str(tmp_path / "log"), [two])
    logs = worker_logs(str(tmp_path / "log"))
    assert res.returncode == 0, (res.stdout[-1500:], logs[0][-2000:], logs[1][-2000:])

    a = tiny_run.read_ckpt(os.path.join(one, "teacher", "last.ckpt"))[0]
    b = tiny_run.read_ckpt(os.path.join(two, "teacher", "last.ckpt"))[0]
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)
    init = tiny_run.read_ckpt(ws["ckpt"])[0]
    moved = max(float(np.abs(a["bert." + k] - v).max()) for k, v in init.items() if "bert." + k in a)
    assert moved > 1e-3                                                    # training really changed the weights

    with open(os.path.join(one, "teacher", "log.txt")) as f:
        log_one = f.read()
    with open(os.path.join(two, "teacher", "log.txt")) as f:
        log_two = f.read()
    assert "16 steps per epoch" in log_one and "16 steps per epoch" in log_two and "rank 0/2" in log_two
    # throughput and counts are global: both runs saw 16 x 4 rows (rank 0 once counted only its own 16 x 2)
    assert "training done: 16 steps, 64 sequences" in log_one and "training done: 16 steps, 64 sequences" in log_two
    assert tiny_run.best_acc(os.path.join(two, "teacher", "log.txt")) == \
        tiny_run.best_acc(os.path.join(one, "teacher", "log.txt"))
    with open(os.path.join(two, "teacher", "log_rank1.txt")) as f:
        log_r1 = f.read()
    assert "rank 1/2" in log_r1 and "The best acc" not in log_r1 and "eval epoch" not in log_r1
    logged = [[ln.split("outputs are ")[1].split()[0] for ln in text.splitlines() if "outputs are" in ln]
              for text in (log_two, log_r1)]
    assert logged[0] and logged[0] == logged[1]      # the step's loss is the global batch's, the same on every rank


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gd", "ternary", "ternary_ema", "width"])
def test_gd_ternary_width_two_workers_match_one_worker(method, ws, tmp_path):
    """General distillation (random 1-layer student), TernaryBERT (2-bit weights, 8-bit activations with dynamic
    per-batch scales, or EMA ranges) and the width supernet (all widths every step, importance + rewiring first)
    on 2 msrun workers at batch 2 == 1 process at batch 4 after one epoch (16 steps), each through its msrun
    script. Two batch statistics would differ per rank and are made global (docs/distributed.md): padding-masked
    MSE (on by default; the tiny rows have different lengths) is scaled to each rank's share of the global masked
    mean (losses.GlobalMaskCounts), and the activation quantizers' max|x| / EMA ranges are all-reduced."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    if method == "gd":
        script, make, run_dir, final = "run_general_distill.py", tiny_run.gd_args, "", "student.ckpt"
        extra = {}
        dist = "scripts/run_distributed_gd_cpu.sh"
    elif method.startswith("ternary"):
        script, make, run_dir, final = "run_ternary.py", tiny_run.ternary_args, "w2e2a8", "best.ckpt"
        extra = {"quant.activation_scale": "ema"} if method == "ternary_ema" else {}
        dist = "scripts/run_distributed_ternary_cpu.sh"
    else:
        script, make, run_dir, final = "run_ofa_width.py", tiny_run.ofa_args, "", "supernet.ckpt"
        extra = {}
        dist = "scripts/run_distributed_ofa_cpu.sh"
    ref = tiny_run.run_script(script, make(ws, one, batch=4, **extra))
    assert ref.returncode == 0, ref.stderr[-2000:]
    res = msrun_script(dist, ["2"] + make(ws, two, batch=2, **extra), str(tmp_path / "log"), [two])
    logs = worker_logs(str(tmp_path / "log"))
    assert res.returncode == 0, (res.stdout[-1500:], logs[0][-2000:], logs[1][-2000:])

    one, two = os.path.join(one, run_dir), os.path.join(two, run_dir)
    a, b = tiny_run.read_ckpt(os.path.join(one, final))[0], tiny_run.read_ckpt(os.path.join(two, final))[0]
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)
    if method == "ternary_ema":                # the EMA ranges were compared too, and training moved them
        assert [k for k in a if k.endswith("amax") and a[k] > 0]
    if method == "gd":                         # random student: training shows in the logged loss
        with open(os.path.join(one, "log.txt")) as f:
            losses = [float(ln.split("outputs are ")[1].split()[0]) for ln in f if "outputs are" in ln]
        assert len(losses) == 4 and losses[-1] < losses[0], losses
    else:
        init = tiny_run.read_ckpt(tiny_run.classifier_teacher(ws))[0]
        moved = max(float(np.abs(a[k] - v).max()) for k, v in init.items()
                    if k.startswith(("classifier", "bert.pooler")))
        assert moved > 1e-3                    # training really changed the weights (rewiring leaves these alone)
    assert tiny_run.best_acc(os.path.join(two, "log.txt")) == tiny_run.best_acc(os.path.join(one, "log.txt"))
    with open(os.path.join(two, "log.txt")) as f:
        assert "rank 0/2" in f.read()
    with open(os.path.join(two, "log_rank1.txt")) as f:
        log_r1 = f.read()
    assert "rank 1/2" in log_r1 and "The best acc" not in log_r1 and "eval epoch" not in log_r1
    if method == "width":                                                 # rank 0's permutation, saved once
        with open(os.path.join(one, "permutation.json")) as f1, open(os.path.join(two, "permutation.json")) as f2:
            assert json.load(f1)["ffn_order"] == json.load(f2)["ffn_order"]


# ---------------------------------------------------------------- rank tables

def table(servers=(("10.0.0.1", 8),), **top):
    rank = 0
    server_list = []
    for sid, n in servers:
        devs = []
        for d in range(n):
            devs.append({"device_id": str(d), "device_ip": f"192.168.{len(server_list)}.{d + 1}",
                         "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": sid, "device": devs, "host_nic_ip": "reserve"})
    t = {"version": "1.0", "server_count": str(len(server_list)), "server_list": server_list,
         "status": "completed"}
    t.update(top)
    return t


def test_rank_table_valid_and_multi_node_ranks():
    t = validate_rank_table(table((("10.0.0.1", 8), ("10.0.0.2", 8))))
    assert rank_size(t) == 16
    assert local_ranks(t, ["127.0.0.1", "10.0.0.2"], 8) == [(8 + d, d) for d in range(8)]   # not d % 8
    assert local_ranks(table(), [], 8) == [(d, d) for d in range(8)]                      # single server
    with pytest.raises(UserError, match=r"none of this host's addresses .* set SERVER_ID"):
        local_ranks(t, ["10.9.9.9"], 8)
    with pytest.raises(UserError, match=r"DEVICE_NUM 4: .* lists 8 device\(s\) for server '10.0.0.1'"):
        local_ranks(t, ["10.0.0.1"], 4)


def _mutate(fn):
    t = table((("10.0.0.1", 2), ("10.0.0.2", 2)))
    fn(t)
    return t


BAD_TABLES = {
    "version": (lambda t: t.update(version="2.0"), r"version '2.0': expected one of 1.0, 1.2"),
    "server_count": (lambda t: t.update(server_count="3"), r"server_count 3 but server_list has 2 server"),
    "status": (lambda t: t.update(status="pending"), r"status 'pending': expected \"completed\""),
    "no_devices": (lambda t: t["server_list"][1].update(device=[]), r"server_list\[1\]\.device: expected a non-empty"),
    "rank_dup": (lambda t: t["server_list"][1]["device"][0].update(rank_id="1"),
                 r"server_list\[1\]\.device\[0\]\.rank_id 1 already used by server_list\[0\]\.device\[1\]"),
    "rank_gap": (lambda t: t["server_list"][1]["device"][1].update(rank_id="7"), r"without gaps; missing \[3\]"),
    "device_ip": (lambda t: t["server_list"][0]["device"][0].update(device_ip="192.168.0"),
                  r"server_list\[0\]\.device\[0\]\.device_ip '192.168.0': expected an IPv4"),
    "device_id": (lambda t: t["server_list"][0]["device"][1].update(device_id="one"),
                  r"server_list\[0\]\.device\[1\]: device_id 'one': expected a non-negative integer"),
    "missing_rank": (lambda t: t["server_list"][0]["device"][1].pop("rank_id"),
                     r"server_list\[0\]\.device\[1\]\.rank_id missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_rank_table_malformed(case, tmp_path):
    fn, match = BAD_TABLES[case]
    path = tmp_path / "rank_table.json"
    path.write_text(json.dumps(_mutate(fn)))
    with pytest.raises(UserError, match=match) as e:
        load_rank_table(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_rank_table_unreadable(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_rank_table(str(tmp_path / "missing.json"))
    (tmp_path / "t.json").write_text('{"version": "1.0",')
    with pytest.raises(UserError, match=r"not valid JSON"):
        load_rank_table(str(tmp_path / "t.json"))


def test_ascend_script_validates_rank_table_before_launching(tmp_path):
    bad = tmp_path / "rank_table.json"
    bad.write_text(json.dumps(_mutate(BAD_TABLES["rank_dup"][0])))
    env = tiny_run.env()
    env["PYTHON"] = sys.executable
    res = subprocess.run(["bash", "scripts/run_distributed_gd_ascend.sh", "2", "1", str(bad)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
    assert len(errors) == 1 and "rank_id 1 already used" in errors[0] and "Traceback" not in res.stderr
    assert not any(p.startswith("LOG") for p in os.listdir(ROOT))               # nothing launched
    good = tmp_path / "good.json"
    good.write_text(json.dumps(table((("10.0.0.1", 2), ("10.0.0.2", 2)))))
    res = subprocess.run([sys.executable, "-m", "src.rank_table", str(good), "--device_num", "2",
                          "--host_ips", "10.0.0.2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.split("\n")[:3] == ["RANK_SIZE 4", "2 0", "3 1"]


def test_ascend_td_script_runs_whole_epochs_per_rank(tmp_path):
    """run_distributed_td_ascend.sh DEVICE_NUM EPOCH_SIZE RANK_TABLE --phase td1: every rank of this server gets
    --td1.epochs EPOCH_SIZE and --td1.max_steps 0 (td_mr.yaml caps td1 at 150 steps, which made EPOCH_SIZE do
    nothing), before the user's own flags, which still win. A stand-in PYTHON records each rank's command line
    (the rank-table step runs for real)."""
    good = tmp_path / "table.json"
    good.write_text(json.dumps(table((("10.0.0.1", 2),))))
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-m" ]; then exec "{sys.executable}" "$@"; fi\n'
                    f'echo "$RANK_ID $DEVICE_ID $*" >> "{calls}"\n')
    fake.chmod(0o755)
    env = dict(tiny_run.env(), PYTHON=str(fake), SERVER_ID="10.0.0.1", LOG_ROOT=str(tmp_path / "logs"))
    res = subprocess.run(["bash", "scripts/run_distributed_td_ascend.sh", "2", "3", str(good), "--phase", "td1",
                          "--td1.max_steps", "40"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    common = ("run_task_distill.py --config_path configs/td_mr.yaml --device_target Ascend --distributed true "
              "--td1.epochs 3 --td1.max_steps 0 --phase td1 --td1.max_steps 40")
    assert sorted(calls.read_text().splitlines()) == [f"0 0 {common}", f"1 1 {common}"]
    assert sorted(os.listdir(tmp_path / "logs")) == ["LOG0", "LOG1"]


@pytest.mark.parametrize("script,config,calls", [
    ("run_standalone_td.sh", "configs/td_mr.yaml", ["run_task_distill.py --config_path {c} --phase td1 {a}",
                                                     "run_task_distill.py --config_path {c} --phase td2 {a}"]),
    ("run_standalone_gd.sh", "configs/gd.yaml", ["run_general_distill.py --config_path {c} {a}"])])
def test_standalone_script_config_is_optional_before_flags(tmp_path, script, config, calls):
    """`bash scripts/run_standalone_td.sh --key value` keeps the default config and passes the flags on (the first
    argument was always taken as CONFIG: --config_path --key). A stand-in PYTHON records the command lines."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n')
    fake.chmod(0o755)
    env = dict(tiny_run.env(), PYTHON=str(fake))
    for args, cfg in ((["--train.max_steps", "5"], config), (["my.yaml", "--train.max_steps", "5"], "my.yaml")):
        log.unlink(missing_ok=True)
        res = subprocess.run(["bash", f"scripts/{script}"] + args, cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert log.read_text().splitlines() == [c.format(c=cfg, a="--train.max_steps 5") for c in calls]
