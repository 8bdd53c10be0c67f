import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Tests share two cores with everything else; one thread keeps them deterministic and polite.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Exported backbone graphs and `--runtime auto` measurements go to a cache folder: never the user's from tests
# (subprocesses inherit this too).
if "S5VH_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="s5vh-test-cache-")
    os.environ["S5VH_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


# the real little video library of tests/library.py, built once per run
from library import lib, work  # noqa: E402, F401
