"""Damaged index files that still pass the metadata's sha256 check reach faiss's own parser and search.

The metadata is re-signed after each mutation (its `index_sha256` names the damaged bytes), so the file gets
past the pair check that stops every other damaged index, for every index type (flat, IVF, HNSW, one hash
table, multi-index hashing). Opening and searching must then end in the results or in one ArtifactError line:
never a crash of the process, a hang, or memory out of proportion to the file. The mutations run in a child
process with a data-size limit and a timeout, so a crash or a runaway allocation fails the test instead of the
suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from s5vh_cli import artifacts
from s5vh_cli.search.index import build_index

TYPES = ["BFlat", "BIVF8", "BHNSW8", "BHash16", "BHash2x16"]

CHILD = textwrap.dedent("""
    import hashlib, json, os, resource, sys
    import h5py, numpy as np
    from s5vh_cli.errors import S5VHError
    from s5vh_cli.search.index import open_index, range_search, search

    src, work, seed, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    # what the process holds now + 400 MB: a runaway allocation fails here instead of taking the machine
    with open("/proc/self/status") as f:
        held = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmData:"))
    resource.setrlimit(resource.RLIMIT_DATA, (held + (400 << 20), hard))
    raw = open(src + "/i.bin", "rb").read()
    meta = open(src + "/i.bin.meta.h5", "rb").read()
    r = np.random.default_rng(seed)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(rounds):
        b = bytearray(raw)
        how = r.integers(0, 5)
        if how == 0:  # flip random bytes
            for p in r.integers(0, len(b), size=int(r.integers(1, 8))):
                b[p] = int(r.integers(0, 256))
        elif how == 1:  # a random 8-byte field set to a huge or negative number
            p = int(r.integers(0, max(1, len(b) - 8)))
            b[p:p + 8] = int(r.choice([2**31 - 1, 2**40, -1, 2**62])).to_bytes(8, "little", signed=True)
        elif how == 2:  # truncate
            b = b[: int(r.integers(0, len(b)))]
        elif how == 3:  # extend with junk
            b += bytes(r.integers(0, 256, size=int(r.integers(1, 64)), dtype=np.uint8))
        else:  # a random 4-byte field
            p = int(r.integers(0, max(1, len(b) - 4)))
            b[p:p + 4] = int(r.integers(-2**31, 2**31)).to_bytes(4, "little", signed=True)
        open(work + "/i.bin", "wb").write(bytes(b))
        open(work + "/i.bin.meta.h5", "wb").write(meta)
        with h5py.File(work + "/i.bin.meta.h5", "r+") as f:
            f.attrs["index_sha256"] = hashlib.sha256(bytes(b)).hexdigest()
        try:
            h = open_index(work + "/i.bin", retries=0)
            q = h.codes[:5] if h.n else np.zeros((1, h.bits // 8), np.uint8)
            for d, k in search(h, q, 5) + range_search(h, q, 3):
                assert set(k.tolist()) <= set(h.keys.tolist()), "a key that is not in the index"
            outcomes["ok"] += 1
        except S5VHError as e:
            assert "\\n" not in str(e)
            outcomes["refused"] += 1
    print(json.dumps(outcomes))
""")


@pytest.mark.parametrize("rounds", [25, pytest.param(400, marks=pytest.mark.slow)])
@pytest.mark.parametrize("index_type", TYPES)
def test_resigned_damaged_index_files(tmp_path, index_type, rounds):
    r = np.random.default_rng(0)
    n = 300
    c = artifacts.Codes(path=None, codes=r.integers(0, 256, size=(n, 4), dtype=np.uint8),
                        ids=[f"v{i}" for i in range(n)], paths=[f"/v/{i}.mp4" for i in range(n)], bits=32,
                        model_sha256="m" * 64)
    artifacts.write_codes(tmp_path / "c.h5", c, artifacts.provenance("encode"))
    src = tmp_path / "src"
    src.mkdir()
    build_index(artifacts.read_codes(tmp_path / "c.h5"), src / "i.bin", index_type)
    work = tmp_path / "work"
    work.mkdir()
    p = subprocess.run([sys.executable, "-c", CHILD, str(src), str(work), "1", str(rounds)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, f"rc {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["ok"] + out["refused"] == rounds and out["refused"] > 0
