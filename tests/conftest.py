import os

import pytest
import torch

# Tests share two cores with everything else; one thread keeps them deterministic and polite.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


# the real little video library of tests/library.py, built once per run
from library import lib, work  # noqa: E402, F401
