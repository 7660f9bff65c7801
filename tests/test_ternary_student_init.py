"""TernaryBERT with `student.init: ckpt`: a TinyBERT student checkpoint (fewer layers, its fit_dense beside it) is
quantized and distilled from the deeper teacher through the uniform layer map, end to end through run_ternary.py
on the tiny workspace (tests/tiny_run.py); a student of another hidden size is one error."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402

from src.checkpoint import save_cell  # noqa: E402
from src.distill import FitDense  # noqa: E402
from src.tinybert_model import BertConfig, BertForSequenceClassification  # noqa: E402

TEACHER = BertConfig(**tiny_run.TINY).replace(num_hidden_layers=2, initializer_range=0.2)
STUDENT = TEACHER.replace(num_hidden_layers=1)


def _setup(root):
    import mindspore as ms
    ws = tiny_run.make_workspace(root)
    t_dir, s_dir = os.path.join(root, "teacher2"), os.path.join(root, "tinybert")
    for d, cfg, seed in ((t_dir, TEACHER, 4), (s_dir, STUDENT, 5)):
        os.makedirs(d)
        cfg.to_json_file(os.path.join(d, "config.json"))
        ms.set_seed(seed)
        extra = {"fit_dense": FitDense(16, 16)} if d == s_dir else {}     # as TD phase 1 saves its student
        save_cell(BertForSequenceClassification(cfg), os.path.join(d, "best.ckpt" if d == t_dir else "student.ckpt"),
                  **extra)
    return ws, t_dir, s_dir


def test_ternary_from_a_tinybert_student_checkpoint(tmp_path):
    """The 1-layer student starts from its checkpoint (fit_dense ignored), distils from the 2-layer teacher with
    the uniform map (attention [1], hidden [0, 2]: not 1:1) and trains; its config is the student's. At lr 1e-9
    for 2 steps the kept latent weights are the checkpoint's to 1e-6, so they really came from it."""
    ws, t_dir, s_dir = _setup(str(tmp_path / "ws"))
    out = tmp_path / "run"
    args = tiny_run.ternary_args(ws, str(out), **{
        "teacher.config": os.path.join(t_dir, "config.json"), "teacher.ckpt": os.path.join(t_dir, "best.ckpt"),
        "student.init": "ckpt", "student.ckpt": os.path.join(s_dir, "student.ckpt"), "train.lr": 1e-9,
        "train.max_steps": 2})
    res = tiny_run.run_script("run_ternary.py", args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"student initialised from {os.path.join(s_dir, 'student.ckpt')}" in res.stdout
    assert "layer map: attention [1] (per-head scores), hidden [0, 2]" in res.stdout
    run = out / "w2e2a8"
    assert BertConfig.from_json_file(str(run / "config.json")).num_hidden_layers == 1
    init = tiny_run.read_ckpt(os.path.join(s_dir, "student.ckpt"))[0]
    best = tiny_run.read_ckpt(str(run / "best.ckpt"))[0]
    model_keys = {k for k in init if not k.startswith("fit_dense.")}
    assert model_keys <= set(best) and not any(k.startswith("fit_dense.") for k in best)
    assert not any(k.startswith("bert.encoder.1.") for k in best)
    for k in model_keys:
        np.testing.assert_allclose(best[k], init[k], rtol=0, atol=1e-6, err_msg=k)
    train = [ln for ln in res.stdout.splitlines() if ln.startswith("epoch: ")]
    att = float(train[-1].split("| att ")[1].split()[0])
    assert att > 0                                              # the attention loss against teacher layer 1 runs

    small = STUDENT.replace(hidden_size=8, num_attention_heads=2, intermediate_size=16)
    small.to_json_file(str(tmp_path / "small.json"))
    bad = tiny_run.run_script("run_ternary.py", tiny_run.ternary_args(ws, str(tmp_path / "bad"), **{
        "teacher.config": os.path.join(t_dir, "config.json"), "teacher.ckpt": os.path.join(t_dir, "best.ckpt"),
        "student.init": "ckpt", "student.ckpt": os.path.join(s_dir, "student.ckpt"),
        "student.config": str(tmp_path / "small.json")}))
    assert bad.returncode == 2 and bad.stderr.count("ERROR:") == 1, bad.stderr[-2000:]
    assert "student.config hidden_size 8 differs from the teacher's 16" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad" / "w2e2a8" / "best.ckpt").exists()
