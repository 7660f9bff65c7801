"""Resume after a crash for general distillation (in memory and streamed) and TD phases 1 and 2, end to end on the
tiny workspace (tests/tiny_run.py), at 1 CPU thread.

The crash is deterministic: the entry script runs under a wrapper that kills its own process (SIGKILL) right after
the training state of a given step is written, mid-epoch in the second epoch; `--resume true` then continues from
that state. Each resumed run is compared with an uninterrupted run of the same config, checkpoint by checkpoint.
"""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402

pytestmark = pytest.mark.slow          # several tiny end-to-end runs

# Runs an entry script (argv[1:]) and SIGKILLs it right after TrainState writes the state of step >= CRASH_STEP.
CRASH = """
import os, runpy, signal, sys
from src import trainer
after, save = int(os.environ["CRASH_STEP"]), trainer.TrainState.save
def save_then_die(self, meta):
    path = save(self, meta)
    if meta["step"] >= after:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
trainer.TrainState.save = save_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
STEPS = 16                  # steps per epoch: 64 rows at batch 4
CRASH_STEP = 21             # the state of epoch 2, batch 5 (every 3 steps: 18, 21)
STATE = {"checkpoint.every_steps": 3, "checkpoint.keep_last": 2}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_run.make_workspace(str(tmp_path_factory.mktemp("resume_phases_ws")))


def _crash(script, args, state_dir):
    proc = subprocess.run([sys.executable, "-c", CRASH, os.path.join(tiny_run.ROOT, script)] + args,
                          cwd=tiny_run.ROOT, env=dict(tiny_run.env(), CRASH_STEP=str(CRASH_STEP)),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout[-2000:], proc.stderr[-2000:])
    states = sorted(os.listdir(state_dir))
    assert states[-1] == f"state_step{CRASH_STEP:09d}.ckpt", states
    return proc


def _run(script, args):
    res = tiny_run.run_script(script, args)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    return res


def _interrupted_and_resumed(script, args_of, state_dir):
    """(uninterrupted run, resumed run): the second was killed after the state of CRASH_STEP and resumed."""
    ref = _run(script, args_of("a"))
    _crash(script, args_of("b"), state_dir)
    res = _run(script, args_of("b") + ["--resume", "true"])
    resumed = [ln for ln in res.stdout.splitlines() if ln.startswith("resumed from")]
    assert len(resumed) == 1 and f"epoch 2, {CRASH_STEP - STEPS} of {STEPS} batches done, step {CRASH_STEP}," in \
        resumed[0], res.stdout[-2000:]
    return ref, res


def _same_checkpoints(a, b, names):
    for name in names:
        ta, tb = tiny_run.read_ckpt(os.path.join(a, name))[0], tiny_run.read_ckpt(os.path.join(b, name))[0]
        assert sorted(ta) == sorted(tb), name
        for k in ta:
            np.testing.assert_array_equal(tb[k], ta[k], err_msg=f"{name}:{k}")


def _train_losses(log_dir):
    with open(os.path.join(log_dir, "log.txt"), encoding="utf-8") as f:
        return [ln.split(" | ")[0] for ln in f if ln.startswith("epoch: ")]


def _sharded(ws):
    """The workspace's 64 training rows as a sharded GD corpus: 4 shards of 16 rows and one schema."""
    from src.corpus import write_shards
    folder = os.path.join(ws["root"], "shards")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        write_shards(folder, tiny_run.rows(64, 1), tiny_run.COLUMNS, "tfrecord", 16)
    return folder


@pytest.mark.parametrize("layout", ["in_memory", "streamed", "shards"])
def test_general_distillation_resume_equals_uninterrupted(ws, tmp_path, layout):
    """GD in memory (ArrayBatcher), streamed from the one record file and from 4 shards (data.in_memory false,
    ShardBatcher; the resumed run reads past the rows consumed before the crash, a shuffle buffer of 8 rows mixing
    the shards): killed mid-corpus in epoch 2, resumed, the student and its fit_dense are bit-identical to an
    uninterrupted run, and so are the losses logged after the resume."""
    data = {"data.in_memory": layout == "in_memory", "data.shuffle_buffer": 8}
    if layout == "shards":
        data["data.dir"] = _sharded(ws)

    def args(name):
        return tiny_run.gd_args(ws, str(tmp_path / name), **data, **{"train.epochs": 2}, **STATE)
    _interrupted_and_resumed("run_general_distill.py", args, str(tmp_path / "b" / "state"))
    _same_checkpoints(str(tmp_path / "a"), str(tmp_path / "b"), ["student.ckpt"])
    la, lb = _train_losses(str(tmp_path / "a")), _train_losses(str(tmp_path / "b"))
    assert len(la) == 2 * STEPS // 4 and lb[-3:] == la[-3:]         # steps 24, 28, 32: after the resume
    first, last = (float(line.split("outputs are ")[1]) for line in (la[0], la[-1]))
    assert last < 0.5 * first                                          # it trains
    student = tiny_run.read_ckpt(str(tmp_path / "a" / "student.ckpt"))[0]
    assert "fit_dense.dense.weight" in student


def _td_args(ws, out, phase, **extra):
    """run_task_distill.py --phase td1|td2 on the tiny workspace: the random classifier teacher, a random student of
    the same shape, 2 epochs."""
    args = {"phase": phase, "threads": 1, "output_dir": out, "data.dir": ws["data"],
            "data.max_seq_length": tiny_run.SEQ, "data.length_buckets": [tiny_run.SEQ], "teacher.config": ws["config"],
            "teacher.ckpt": tiny_run.classifier_teacher(ws), "student.config": ws["config"], "student.init": "random",
            f"{phase}.epochs": 2, f"{phase}.max_steps": 0, f"{phase}.batch_size": 4, f"{phase}.lr": 0.005,
            "eval.batch_size": 16, "log_every": 4, **STATE}
    args.update(extra)
    return tiny_run.cli(args)


@pytest.mark.parametrize("cache", [False, True])
def test_td_phase1_resume_equals_uninterrupted(ws, tmp_path, cache):
    """TD phase 1, with and without td1.cache_teacher_outputs: killed in epoch 2, resumed, the student, its
    fit_dense and the teacher logits kept for phase 2 (teacher_logits.npz, every row seen: the rows seen before
    the crash come from the training state) equal the uninterrupted run's. The teacher-output cache is not part of
    the state: after the resume it starts empty and the rest of epoch 2 runs the live step, which trains exactly
    as the cached one."""
    def args(name):
        return _td_args(ws, str(tmp_path / name), "td1", **{"td1.cache_teacher_outputs": cache})
    ref, res = _interrupted_and_resumed("run_task_distill.py", args, str(tmp_path / "b" / "td1" / "state"))
    if cache:
        cached = [re.search(r"(\d+) read it from the cache", r.stdout) for r in (ref, res)]
        assert int(cached[0].group(1)) > 0 and int(cached[1].group(1)) == 0
    a, b = str(tmp_path / "a" / "td1"), str(tmp_path / "b" / "td1")
    _same_checkpoints(a, b, ["student.ckpt"])
    assert "fit_dense.dense.weight" in tiny_run.read_ckpt(os.path.join(b, "student.ckpt"))[0]
    assert _train_losses(b)[-3:] == _train_losses(a)[-3:]
    with np.load(os.path.join(a, "teacher_logits.npz")) as fa, np.load(os.path.join(b, "teacher_logits.npz")) as fb:
        np.testing.assert_array_equal(fb["seen"], fa["seen"])
        np.testing.assert_array_equal(fb["logits"], fa["logits"])
        assert fa["seen"].all() and fa["logits"].shape == (64, 2)


def test_td_phase2_resume_equals_uninterrupted(ws, tmp_path):
    """TD phase 2 (teacher logits from phase 1's file) with keep-best every 4 steps: killed in epoch 2, resumed,
    best.ckpt, last.ckpt and the 'The best acc is' lines equal the uninterrupted run's."""
    td1 = str(tmp_path / "td1")
    _run("run_task_distill.py", _td_args(ws, td1, "td1", **{"td1.epochs": 1, "checkpoint.every_steps": 0}))

    def args(name):
        ckpt = os.path.join(td1, "td1", "student.ckpt")
        return _td_args(ws, str(tmp_path / name), "td2", **{"eval.every": 4, "student.td1_ckpt": ckpt})
    _, res = _interrupted_and_resumed("run_task_distill.py", args, str(tmp_path / "b" / "td2" / "state"))
    assert "rows from" in res.stdout and "; 0 rows computed" in res.stdout       # phase 1's logits were used
    a, b = str(tmp_path / "a" / "td2"), str(tmp_path / "b" / "td2")
    _same_checkpoints(a, b, ["best.ckpt", "last.ckpt"])
    best_a, best_b = tiny_run.best_acc(os.path.join(a, "log.txt")), tiny_run.best_acc(os.path.join(b, "log.txt"))
    assert best_a and best_b[-1] == best_a[-1]
