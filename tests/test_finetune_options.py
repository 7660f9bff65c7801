"""Teacher fine-tuning options end to end (run_task_distill.py --phase finetune on the tiny workspace)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # noqa: E402


def test_freeze_word_embeddings_keeps_the_pretrained_table(tmp_path):
    """finetune.freeze_word_embeddings: the fine-tuned teacher's word embedding table is the pretrained one, bit for
    bit, while the rest of the backbone (position embeddings, encoder) trains."""
    ws = tiny_run.make_workspace(str(tmp_path / "ws"))
    out = tmp_path / "run"
    res = tiny_run.run_script("run_task_distill.py", tiny_run.finetune_args(
        ws, str(out), epochs=1, **{"finetune.freeze_word_embeddings": True}))
    assert res.returncode == 0, res.stderr[-2000:]
    pre = tiny_run.read_ckpt(ws["ckpt"])[0]
    tuned = tiny_run.read_ckpt(str(out / "teacher" / "best.ckpt"))[0]
    table = "embeddings.word_embeddings.embedding_table"
    np.testing.assert_array_equal(tuned["bert." + table], pre[table])
    for name in ("embeddings.position_embeddings.embedding_table", "encoder.0.attention.query.weight"):
        assert np.abs(tuned["bert." + name] - pre[name]).max() > 1e-3, name
