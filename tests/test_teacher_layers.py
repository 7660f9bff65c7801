"""student.init teacher_layers (DistilBERT-style init, src/tinybert_model.copy_teacher_layers): the student's
embeddings, pooler and encoder layer i are copies of the teacher's embeddings, pooler and encoder layer
teacher_layers[i]; bad indices and shapes are one UserError. In process, then through general distillation and
TD phase 1 (subprocesses on tiny models; a learning rate of 1e-9 and one step keep the trained student at its
initialisation to 1e-6)."""
import os
import re
import sys

import numpy as np
import pytest
import mindspore as ms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402

from src.checkpoint import save_cell  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.tinybert_model import (BertConfig, BertForSequenceClassification, BertModel,  # noqa: E402
                                copy_teacher_layers)

TEACHER = BertConfig(**tiny_run.TINY).replace(num_hidden_layers=3)
STUDENT = TEACHER.replace(num_hidden_layers=2)
LAYERS = [2, 0]


def _randomised(cell, seed):
    """Every parameter (LayerNorm gamma/beta included) set to distinct random values, so a copy from the wrong
    place, or no copy, shows in every tensor."""
    rng = np.random.default_rng(seed)
    for p in cell.get_parameters():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.1 + 0.5))
    return cell


def _expected(teacher: dict, layers, t_prefix: str = "", s_prefix: str = "") -> dict:
    """Student name -> teacher tensor for what teacher_layers copies: embeddings, pooler, encoder i <- layers[i]."""
    out = {}
    for name, value in teacher.items():
        rest = name[len(t_prefix):]
        if rest.startswith(("embeddings.", "pooler.")):
            out[s_prefix + rest] = value
        m = re.match(r"encoder\.(\d+)\.(.*)", rest)
        if m:
            for i, ti in enumerate(layers):
                if int(m.group(1)) == ti:
                    out[f"{s_prefix}encoder.{i}.{m.group(2)}"] = value
    return out


def _state(cell):
    return {n: p.asnumpy() for n, p in cell.parameters_and_names()}


def _check_copied(student: dict, teacher: dict, layers, t_prefix="", s_prefix="", atol=0.0):
    want = _expected(teacher, layers, t_prefix, s_prefix)
    assert len(want) == len([k for k in student if not k.startswith(("classifier.", "fit_dense."))])
    for k, v in want.items():
        np.testing.assert_allclose(student[k], v, rtol=0, atol=atol, err_msg=k)


def test_copy_teacher_layers_copies_embeddings_pooler_and_the_chosen_layers():
    teacher = _randomised(BertForSequenceClassification(TEACHER), 0)
    student = BertForSequenceClassification(STUDENT)
    head = student.classifier.weight.asnumpy().copy()
    copy_teacher_layers(student, teacher, LAYERS)
    _check_copied(_state(student), _state(teacher), LAYERS, "bert.", "bert.")
    np.testing.assert_array_equal(student.classifier.weight.asnumpy(), head)      # the head is not the teacher's
    s_model = BertModel(STUDENT)                                                  # GD: plain BertModels
    copy_teacher_layers(s_model, teacher.bert, [1, 1])
    _check_copied(_state(s_model), _state(teacher.bert), [1, 1])


@pytest.mark.parametrize("layers, student, message", [
    ([0], STUDENT, r"student.teacher_layers \[0\]: expected 2 indices in \[0, 2\]"),
    ([0, 3], STUDENT, r"student.teacher_layers \[0, 3\]: expected 2 indices in \[0, 2\]"),
    ([-1, 0], STUDENT, r"student.teacher_layers \[-1, 0\]: expected 2 indices in \[0, 2\]"),
    ([0, 1], STUDENT.replace(hidden_size=8, num_attention_heads=2),
     r"needs equal hidden sizes \(student 8, teacher 16\)"),
    ([0, 1], STUDENT.replace(intermediate_size=24),
     r"encoder.0.ffn.intermediate.weight shape \(24, 16\) differs from teacher \(32, 16\)"),
])
def test_copy_teacher_layers_refuses_bad_indices_and_shapes(layers, student, message):
    with pytest.raises(UserError, match=message):
        copy_teacher_layers(BertModel(student), BertModel(TEACHER), layers)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("teacher_layers"))
    ws = tiny_run.make_workspace(root)
    d = os.path.join(root, "deep")
    os.makedirs(d)
    TEACHER.to_json_file(os.path.join(d, "config.json"))
    STUDENT.to_json_file(os.path.join(d, "student.json"))
    save_cell(_randomised(BertModel(TEACHER), 1), os.path.join(d, "bert.ckpt"))
    save_cell(_randomised(BertForSequenceClassification(TEACHER), 2), os.path.join(d, "classifier.ckpt"))
    return ws, d


# 3 teacher layers do not divide into 2 student layers, so the distillation layer map is given explicitly
ONE_TINY_STEP = {"student.init": "teacher_layers", "student.teacher_layers": LAYERS, "checkpoint.every_steps": 0,
                 "layer_map.attention": [1, 2], "layer_map.hidden": [0, 2, 3]}


def test_general_distillation_starts_from_the_chosen_teacher_layers(models, tmp_path):
    ws, d = models

    def gd(out, **extra):
        return tiny_run.run_script("run_general_distill.py", tiny_run.gd_args(ws, out, **{
            "teacher.config": os.path.join(d, "config.json"), "teacher.ckpt": os.path.join(d, "bert.ckpt"),
            "student.arch.num_hidden_layers": 2, "train.lr": 1e-9, "train.max_steps": 1, **ONE_TINY_STEP, **extra}))
    res = gd(str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "student initialised from teacher layers [2, 0]" in res.stdout
    student = tiny_run.read_ckpt(str(tmp_path / "student.ckpt"))[0]
    _check_copied(student, tiny_run.read_ckpt(os.path.join(d, "bert.ckpt"))[0], LAYERS, "", "bert.", atol=1e-6)

    bad = gd(str(tmp_path / "bad"), **{"student.teacher_layers": [0, 3]})
    assert bad.returncode == 2 and bad.stderr.count("ERROR:") == 1, bad.stderr[-2000:]
    assert "student.teacher_layers [0, 3]: expected 2 indices in [0, 2]" in bad.stderr


def test_td_phase1_starts_from_the_chosen_teacher_layers(models, tmp_path):
    ws, d = models
    args = tiny_run.cli({"phase": "td1", "threads": 1, "output_dir": str(tmp_path), "data.dir": ws["data"],
                         "data.max_seq_length": tiny_run.SEQ, "data.length_buckets": [tiny_run.SEQ],
                         "teacher.config": os.path.join(d, "config.json"),
                         "teacher.ckpt": os.path.join(d, "classifier.ckpt"),
                         "student.config": os.path.join(d, "student.json"), "td1.lr": 1e-9, "td1.max_steps": 1,
                         "td1.batch_size": 4, **ONE_TINY_STEP})
    res = tiny_run.run_script("run_task_distill.py", args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "student initialised from teacher layers [2, 0]" in res.stdout
    student = tiny_run.read_ckpt(str(tmp_path / "td1" / "student.ckpt"))[0]
    teacher = tiny_run.read_ckpt(os.path.join(d, "classifier.ckpt"))[0]
    _check_copied(student, teacher, LAYERS, "bert.", "bert.", atol=1e-6)
    assert np.abs(student["classifier.weight"] - teacher["classifier.weight"]).max() > 0.1
