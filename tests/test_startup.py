"""Start-up: every argument error and every --help is answered before torch, numba, cv2, faiss or h5py is
imported (importing them takes seconds; `s5vh train missing.h5` once took 14 s to say "no such file").
Speed itself is measured by benchmarks/bench_startup.py; here, what was imported is checked exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "numba", "cv2", "faiss", "h5py")

_RUN = """
import json, sys
from s5vh_cli.cli import main
try:
    main(json.loads(sys.argv[1]))
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
else:
    code = 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY_NAMES)
sys.stderr.write("\\nHEAVY " + json.dumps(sorted({m.split(".")[0] for m in heavy})) + "\\n")
sys.stderr.flush()
import os
os._exit(code)
""".replace("HEAVY_NAMES", repr(HEAVY))


def run(args: list[str], cwd) -> tuple[int, str, list[str]]:
    p = subprocess.run([sys.executable, "-c", _RUN, json.dumps([str(a) for a in args])], capture_output=True,
                       text=True, cwd=cwd, timeout=300)
    err, _, tail = p.stderr.rpartition("\nHEAVY ")
    return p.returncode, err.strip(), json.loads(tail) if tail else ["(no report)"]


CASES = [
    ["train", "missing.h5"],
    ["train", "feats.txt", "--centers", "missing_c.h5"],
    ["train", "feats.txt", "--bits", "7"],
    ["train", "feats.txt", "--preset", "nope"],
    ["train", "feats.txt", "--epochs", "0"],
    ["train", "feats.txt", "--threads", "0"],
    ["train", "feats.txt", "-o", "nofolder/model.pt"],
    ["train", "feats.txt", "--device", "gpu"],
    ["extract", "missing.mp4", "-o", "f.h5"],
    ["extract", "folder", "-o", "nofolder/f.h5"],
    ["extract", "folder", "-o", "f.h5", "--frames", "0"],
    ["extract", "folder", "-o", "f.h5", "--dtype", "int8"],
    ["extract", "folder", "-o", "f.h5", "--weights", "missing.pth"],
    ["centers", "missing.h5", "-o", "c.h5"],
    ["centers", "feats.txt", "-o", "c.h5", "--bits", "7"],
    ["encode", "missing.pt", "feats.txt", "-o", "c.h5"],
    ["encode", "model.txt", "missing.h5", "-o", "c.h5"],
    ["encode", "model.txt", "feats.txt", "-o", "c.h5", "--ssm-backend", "fast"],
    ["index", "missing.h5", "-o", "i.bin"],
    ["index", "add", "missing.bin", "codes.txt"],
    ["index", "add", "index.txt", "codes.txt", "--on-existing", "maybe"],
    ["index", "remove", "missing.bin", "--id", "x"],
    ["index", "info", "missing.bin"],
    ["query", "missing.bin", "clip.mp4"],
    ["query", "index.txt", "missing.mp4"],
    ["query", "index.txt", "folder", "--radius", "-1"],
    ["query", "index.txt", "folder", "--topk", "0"],
    ["query", "index.txt", "folder", "--model", "missing.pt"],
    ["sync", "nofolder", "index.txt"],
    ["sync", "folder", "missing.bin"],
    ["dedup", "missing.bin"],
    ["dedup", "index.txt", "--radius", "-1"],
    ["eval", "missing.h5", "--labels", "labels.txt"],
    ["eval", "feats.txt", "--labels", "missing.h5"],
    ["serve", "missing.bin"],
    ["serve", "index.txt", "--port", "70000"],
    ["serve", "index.txt", "--root", "nofolder"],
    ["serve", "index.txt", "--host", "0.0.0.0"],
    # options that came with the backbone runtimes, the engines and the Milvus backend
    ["extract", "folder", "-o", "f.h5", "--runtime", "tensorrt"],
    ["extract", "folder", "-o", "f.h5", "--precision", "int8"],
    ["extract", "folder", "-o", "f.h5", "--decoder", "gstreamer"],
    ["extract", "folder", "-o", "f.h5", "--engine", "spark"],
    ["extract", "folder", "-o", "f.h5", "--engine", "ray", "--workers", "2"],
    ["extract", "folder", "-o", "f.h5", "--ray-address", "auto"],
    ["train", "feats.txt", "--nproc", "0"],
    ["train", "missing.h5", "--nproc", "2"],
    ["query", "index.txt", "folder", "--runtime", "tensorrt"],
    ["query", "index.txt", "folder", "--precision", "int8"],
    ["serve", "index.txt", "--runtime", "tensorrt"],
    ["serve", "index.txt", "--precision", "int8"],
    ["index", "codes.txt", "-o", "i.bin", "--backend", "sqlite"],
    ["index", "migrate", "missing.bin", "-o", "i.bin", "--backend", "faiss"],
    ["index", "migrate", "index.txt", "-o", "nofolder/i.bin", "--backend", "faiss"],
    ["index", "migrate", "index.txt", "-o", "i.bin", "--backend", "sqlite"],
]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup")
    (d / "folder").mkdir()
    for name in ("feats.txt", "model.txt", "codes.txt", "index.txt", "labels.txt"):
        (d / name).write_text("placeholder: these cases fail on their arguments before any file is read\n")
    return d


@pytest.mark.parametrize("args", CASES, ids=[" ".join(c) for c in CASES])
def test_argument_errors_come_before_heavy_imports(place, args):
    rc, err, heavy = run(args, place)
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and (len(lines) == 1 or lines[0].startswith("Usage:")), err
    assert "Traceback" not in err
    assert heavy == [], f"{' '.join(args)} imported {heavy} before answering: {err}"


@pytest.mark.parametrize("sub", [[], ["extract"], ["centers"], ["train"], ["encode"], ["index"], ["index", "add"],
                                 ["index", "migrate"], ["query"], ["serve"], ["sync"], ["dedup"], ["eval"], ["info"], ["demo"]])
def test_help_imports_nothing_heavy(place, sub):
    rc, err, heavy = run([*sub, "--help"], place)
    assert rc == 0, err
    assert heavy == []


def test_early_checks_know_the_cores_names():
    """The name lists in commands/_check.py (standard library only) are the core's, so an early check never
    refuses what the core accepts, nor lets through what it refuses."""
    from s5vh_cli import runtimes, video
    from s5vh_cli.commands import _check
    from s5vh_cli.engines import ENGINES
    from s5vh_cli.search.backends import BACKENDS

    assert _check.RUNTIMES == ("auto", *runtimes.RUNTIMES)
    assert _check.PRECISIONS == ("auto", *runtimes.PRECISIONS)
    for alias in _check.PRECISION_ALIASES:
        assert runtimes.resolve_precision(alias, "cpu") in runtimes.PRECISIONS
    assert _check.DECODERS == video.DECODERS
    assert _check.ENGINES == ENGINES
    assert set(_check.BACKENDS) == set(BACKENDS)


_KERNEL_CACHE = """
import json
from numba.core.registry import CPUDispatcher
from s5vh_cli.ssm import cpu_kernel as ck
ck.smoke_test()
stats = [v.stats for v in vars(ck).values() if isinstance(v, CPUDispatcher)]
print(json.dumps([sum(sum(s.cache_hits.values()) for s in stats), sum(sum(s.cache_misses.values()) for s in stats)]))
"""


def test_nothing_is_compiled_on_the_query_path():
    """The fused CPU scan's kernels (what encoding a clip runs) come from numba's on-disk cache in every process
    after the first on a machine: a cold query loads machine code, it compiles nothing."""
    from s5vh_cli.ssm import available_backends

    if not available_backends()["cpu"].startswith("available"):
        pytest.skip("the fused CPU scan is not available here")
    counts = []
    for _ in range(2):  # the first may compile (an empty cache), the second must not
        p = subprocess.run([sys.executable, "-c", _KERNEL_CACHE], capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        counts.append(json.loads(p.stdout.strip().splitlines()[-1]))
    hits, misses = counts[1]
    assert misses == 0 and hits >= 4, counts
