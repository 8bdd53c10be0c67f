"""Many writers on one index at once (adds and a rebuild racing): the result is always that of some serial
order of the operations - no add lost, no rebuild undone, no key handed out twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from s5vh_cli import api, artifacts

S5VH = [sys.executable, "-m", "s5vh_cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "S5VH_DEBUG": ""}


def codes_file(path, prefix: str, n: int, seed: int) -> set[str]:
    r = np.random.default_rng(seed)
    paths = [f"/lib/{prefix}/{i}.mp4" for i in range(n)]
    c = artifacts.Codes(path=None, codes=r.integers(0, 256, size=(n, 8), dtype=np.uint8), ids=[f"{prefix}{i}" for i in range(n)],
                        paths=paths, bits=64, model_sha256="m" * 64)
    artifacts.write_codes(path, c, artifacts.provenance("encode"), extra_attrs={"backbone": "mobilenet_v2",
                                                                               "sampling": "uniform", "frames": 8})
    return set(paths)


def race(cmds: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = []
    for cmd in cmds:
        procs.append(subprocess.Popen([*S5VH, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=ENV))
        time.sleep(0.05)
    outs = []
    for p, cmd in zip(procs, cmds, strict=True):
        out, err = p.communicate(timeout=300)
        outs.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
    return outs


def check_pair(index) -> set[str]:
    h = api.open_index(index)
    assert h.backend.ntotal == h.n and len(set(h.keys.tolist())) == h.n and h.next_key > int(h.keys.max())
    assert len(set(h.paths)) == h.n
    return set(h.paths)


def test_six_adders_lose_nothing(tmp_path):
    old = codes_file(tmp_path / "old.h5", "old", 50, 0)
    api.build(tmp_path / "old.h5", tmp_path / "i.bin")
    adds = {f"a{k}": codes_file(tmp_path / f"a{k}.h5", f"a{k}", 40, k + 1) for k in range(6)}
    outs = race([["index", "add", str(tmp_path / "i.bin"), str(tmp_path / f"{k}.h5"), "--json"] for k in adds])
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    assert check_pair(tmp_path / "i.bin") == old.union(*adds.values())


def test_adds_and_a_rebuild_race_to_a_serial_result(tmp_path):
    old = codes_file(tmp_path / "old.h5", "old", 50, 0)
    api.build(tmp_path / "old.h5", tmp_path / "i.bin")
    new = codes_file(tmp_path / "new.h5", "new", 30, 9)
    adds = {f"a{k}": codes_file(tmp_path / f"a{k}.h5", f"a{k}", 40, k + 1) for k in range(4)}
    cmds = [["index", "add", str(tmp_path / "i.bin"), str(tmp_path / f"{k}.h5")] for k in list(adds)[:2]]
    cmds.append(["index", str(tmp_path / "new.h5"), "-o", str(tmp_path / "i.bin")])
    cmds += [["index", "add", str(tmp_path / "i.bin"), str(tmp_path / f"{k}.h5")] for k in list(adds)[2:]]
    outs = race(cmds)
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    final = check_pair(tmp_path / "i.bin")
    # the rebuild happened (its codes are all there) and nothing from before it survived it
    assert new <= final and not (old & final)
    # every add is all or nothing, and what is there beyond the rebuild is exactly whole adds
    present = [k for k, v in adds.items() if v <= final]
    assert all(not (v & final) for k, v in adds.items() if k not in present)
    assert final == new.union(*(adds[k] for k in present))
