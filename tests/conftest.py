import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes 20 s or more (msrun launches, several end-to-end training runs); "
                                       "`make test` runs them, `pytest -m 'not slow'` leaves them out")


@pytest.fixture(scope="session", autouse=True)
def graph_mode():
    """Tests run MindSpore the way users do: graph mode on CPU, 2 threads."""
    import mindspore as ms
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(2)
    yield


def ragged_arrays(n=10, seq=8):
    """`n` rows of real lengths 2..8 padded to `seq` (token ids, mask, segments, labels 0..n-1): batching and
    prediction tests see rows that differ in length and content."""
    rng = np.random.default_rng(0)
    lengths = np.array([2, 3, 8, 8, 4, 7, 2, 5, 6, 3])[:n]
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return {"input_ids": rng.integers(1, 30, (n, seq)) * mask, "input_mask": mask,
            "segment_ids": np.zeros((n, seq), np.int32), "label_ids": np.arange(n, dtype=np.int32)}
