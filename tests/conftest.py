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

# ----------------------------------------------------------------------------------------------------------
# one private Milvus server per run, for the tests that ask for `milvus`
# ----------------------------------------------------------------------------------------------------------
_MILVUS: dict = {}


def pytest_collection_modifyitems(session, config, items):
    # start the server as soon as a test will need it: it takes 10-25 s, spent while earlier tests run
    def wants(item) -> bool:
        params = getattr(getattr(item, "callspec", None), "params", {})
        return "milvus" in getattr(item, "fixturenames", ()) or "milvus" in params.values()

    if any(wants(item) for item in items):
        _launch_milvus(config)


def _launch_milvus(config) -> None:
    if _MILVUS:
        return
    from milvus_server import PrivateMilvus, why_unavailable

    why = why_unavailable()
    if why:
        _MILVUS["why"] = why
        return
    import tempfile

    base = config._tmp_path_factory.getbasetemp() if hasattr(config, "_tmp_path_factory") else \
        tempfile.mkdtemp(prefix="s5vh-milvus-")
    server = PrivateMilvus(os.path.join(str(base), "milvus"))
    try:
        server.launch()
    except Exception as e:  # noqa: BLE001 - reported by the fixture
        _MILVUS["why"] = f"could not start: {e}"
        return
    _MILVUS["server"] = server


def pytest_unconfigure(config):
    server = _MILVUS.pop("server", None)
    if server is not None:
        server.stop()
        import shutil

        shutil.rmtree(server.data_dir, ignore_errors=True)  # about 500 MB, most of it unpacked binaries


@pytest.fixture(scope="session")
def milvus(request):
    """The private Milvus server (tests/milvus_server.py): skipped when it cannot run here, failed in CI."""
    _launch_milvus(request.config)
    server = _MILVUS.get("server")
    why = _MILVUS.get("why")
    if server is not None and why is None:
        try:
            server.wait_ready()
        except Exception as e:  # noqa: BLE001
            why = _MILVUS["why"] = f"did not start: {e}"
    if why:
        if os.environ.get("S5VH_REQUIRE_MILVUS"):
            pytest.fail(f"Milvus required (S5VH_REQUIRE_MILVUS is set) but {why}")
        pytest.skip(f"Milvus server unavailable: {why}")
    return server
