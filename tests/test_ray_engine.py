"""The Ray engine on a real local Ray cluster: `extract --engine ray` and `encode --engine ray` make the files the
local engine makes (features within 1e-6, in fact bit for bit; the same ids, metadata, failure records and
provenance), and resume a partial run. The cluster runs in a private network namespace (tests/private_net.py),
without token authentication, with its temporary folder under the test's and a small object store; the test
checks that nothing it started is left running."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from s5vh_cli import extract as ex
from s5vh_cli.artifacts import read_codes, read_failures, read_features
from s5vh_cli.checkpoint import save_model
from s5vh_cli.config import ExtractConfig, TrainConfig, preset
from s5vh_cli.encode import encode_file
from s5vh_cli.extract import extract
from s5vh_cli.model import S5VH
from s5vh_cli.progress import Recorder

sys.path.insert(0, str(Path(__file__).parent))
from private_net import private_net, processes_left
from test_backbones import MNV2, need_assets
from test_video import make_index_video

T, BATCH = 4, 8  # two videos per forward pass

# Runs inside the namespace: one Ray instance started here, then a resumed extraction and an encoding through
# the command line (the engine uses the Ray connection it finds). With "own": first a plain
# `s5vh extract --engine ray` in a process of its own, which starts and stops its own Ray.
CHILD = r"""
import os, subprocess, sys
tmp, vids, weights, model, ray_tmp, own = sys.argv[1:7]
common = ["--frames", "4", "--batch-size", "8", "--weights", weights, "--device", "cpu", "--quiet", "--engine", "ray"]
if own == "own":
    subprocess.run([sys.executable, "-m", "s5vh_cli", "extract", vids, "-o", f"{tmp}/ray.h5", *common], check=True)
import ray
ray.init(num_cpus=2, object_store_memory=256 << 20, _temp_dir=f"{ray_tmp}/session", include_dashboard=False,
         _node_ip_address="127.0.0.1", log_to_driver=False)
try:
    from s5vh_cli.cli import main
    for args in (["extract", vids, "-o", f"{tmp}/resumed.h5", *common],
                 ["encode", model, f"{tmp}/local.h5", "-o", f"{tmp}/ray_codes.h5", "--engine", "ray",
                  "--batch-size", "2", "--device", "cpu", "--ssm-backend", "torch", "--quiet"]):
        try:
            main(args)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
finally:
    ray.shutdown()
"""


def h5_content(path: Path) -> dict:
    """Every dataset and attribute except the creation time; feature arrays kept as arrays."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for k, v in obj.attrs.items():
                out[f"{name}@{k}"] = np.asarray(v).tolist()
            if isinstance(obj, h5py.Dataset):
                v = obj[()]
                out[name] = v if name == "feats" else repr(v.tolist())
        out |= {f"@{k}": np.asarray(v).tolist() for k, v in f.attrs.items() if k != "created"}
        f.visititems(visit)
    return out


def assert_same_artifact(got: Path, want: Path) -> None:
    a, b = h5_content(got), h5_content(want)
    assert a.keys() == b.keys()
    for k in a:
        if k == "feats":
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6)
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("own", [pytest.param(False, id="resume+encode"),
                                 pytest.param(True, id="own-cluster", marks=pytest.mark.slow)])
def test_ray_engine_equals_local(tmp_path, own):
    """Resumed from a torn journal, the Ray run's rows (and its failure records) equal the local run's; the
    Ray encoding equals the local one. The slow variant also extracts everything in a process that starts
    and stops a Ray of its own (about 30 s more)."""
    pytest.importorskip("ray.data", reason="needs s5vh[distributed]")
    need_assets(MNV2)
    vids = tmp_path / "vids"
    vids.mkdir()
    for i in range(5):
        make_index_video(vids / f"v{i}.mp4", 12 + 3 * i)
    (vids / "empty.mp4").write_bytes(b"")
    (vids / "text.mkv").write_text("not a video\n" * 20)
    cfg = ExtractConfig(frames=T, batch_size=BATCH)
    local = extract([str(vids)], tmp_path / "local.h5", config=cfg, weights=str(MNV2), device="cpu", workers=1)
    assert local.videos == 5 and len(local.failed) == 2

    # a killed run of 3 videos done of which the last record is torn: the Ray run must resume from it
    f = read_features(tmp_path / "local.h5")
    with h5py.File(tmp_path / "local.h5", "r") as h5:
        settings = {k: (h5.attrs[k].item() if hasattr(h5.attrs[k], "item") else h5.attrs[k])
                    for k in (*ex._SETTING_KEYS, "weights_file")}
    j = ex._open_journal(tmp_path / "resumed.h5", settings, Recorder())
    for i in range(2):
        head = {"id": f.ids[i], "path": os.fsencode(f.paths[i]).hex()}
        for k in f.meta:
            x = f.meta[k][i].tolist()
            head[k] = x.decode() if isinstance(x, bytes) else x
        j.add_video(head, f.feats[i])
    j.f.write(ex._pack(b"V", {"id": f.ids[2], "path": "00"}, b"\0" * 4000)[:-100])
    j.f.close()

    m, _, _ = preset("demo")
    m = dataclasses.replace(m, bits=16, d_model=32, depth=2, dec_d_model=24, feature_dim=1280, frames=T,
                            n_clusters=4)
    save_model(tmp_path / "m.pt", S5VH(m), m, TrainConfig(), f)
    encode_file(tmp_path / "m.pt", tmp_path / "local.h5", tmp_path / "local_codes.h5", batch_size=2, device="cpu",
                ssm_backend="torch")

    mark = f"ray-{tmp_path}"
    # Ray's sockets live in its temporary folder, and a socket path may not exceed 107 bytes: pytest's folders
    # are longer, so Ray gets a short one of its own, removed at the end
    ray_tmp = Path(tempfile.mkdtemp(prefix="s5vh-ray-"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(ray_tmp), S5VH_TEST_MARK=mark,
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning", S5VH_DEBUG="1")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(private_net([sys.executable, "-c", CHILD, str(tmp_path), str(vids), str(MNV2),
                                        str(tmp_path / "m.pt"), str(ray_tmp), "own" if own else "-"]), env=env,
                           capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stderr[-4000:]
    print(f"Ray runs: {time.perf_counter() - t0:.1f} s")
    assert not processes_left(mark), "processes of the test's Ray cluster are still running"

    if own:
        assert_same_artifact(tmp_path / "ray.h5", tmp_path / "local.h5")
    assert not (tmp_path / "resumed.h5.partial").exists()
    assert_same_artifact(tmp_path / "resumed.h5", tmp_path / "local.h5")
    a, b = read_codes(tmp_path / "ray_codes.h5"), read_codes(tmp_path / "local_codes.h5")
    assert np.array_equal(a.codes, b.codes) and a.ids == b.ids and a.paths == b.paths
    assert {k: v for k, v in a.attrs.items() if k != "created"} == {k: v for k, v in b.attrs.items() if k != "created"}


def test_nothing_of_the_extra_is_imported_unless_asked_for():
    code = ("import sys; import s5vh_cli.cli, s5vh_cli.extract, s5vh_cli.encode, s5vh_cli.train, s5vh_cli.engines, "
            "s5vh_cli.engines.local, s5vh_cli.engines.ddp; from s5vh_cli.engines import get_engine; "
            "get_engine('ray'); print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    """Without Ray installed, --engine ray stops with one line naming the extra (ray hidden from the import)."""
    import builtins

    from s5vh_cli.engines.ray import RayEngine
    from s5vh_cli.errors import BackendError

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(BackendError, match=r"pip install 's5vh\[distributed\]'") as e:
        RayEngine()._connect()
    assert "\n" not in str(e.value)


CRASH_HOOK = r"""
import os
if os.environ.get("S5VH_TEST_CRASH"):
    import s5vh_cli.extract as ex
    real = ex._decode_job
    def job(path, *a, **k):
        if "crash" in os.path.basename(path):
            os._exit(3)  # what a decoder that segfaults on a file does to its process
        return real(path, *a, **k)
    ex._decode_job = job
"""


@pytest.mark.slow
def test_crashing_decoder_is_isolated(tmp_path):
    """A file that kills its decode task's process: Ray retries the task twice, drops the block, the block's
    videos are tried again one per block, and only the culprit is recorded as failed (about 60 s)."""
    pytest.importorskip("ray.data", reason="needs s5vh[distributed]")
    need_assets(MNV2)
    vids = tmp_path / "vids"
    vids.mkdir()
    for i in range(4):
        make_index_video(vids / f"v{i}.mp4", 12 + 3 * i)
    make_index_video(vids / "v1crash.mp4", 12)
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(CRASH_HOOK)
    mark = f"ray-crash-{tmp_path}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="s5vh-ray-"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(ray_tmp), S5VH_TEST_MARK=mark,
               OMP_NUM_THREADS="1", S5VH_TEST_CRASH="1", S5VH_DEBUG="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "hook"), os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run(private_net([sys.executable, "-m", "s5vh_cli", "extract", str(vids), "-o",
                                        str(tmp_path / "ray.h5"), "--frames", str(T), "--batch-size", str(BATCH),
                                        "--weights", str(MNV2), "--device", "cpu", "--quiet", "--json",
                                        "--engine", "ray"]), env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stderr[-4000:]
    assert not processes_left(mark)
    got = read_features(tmp_path / "ray.h5")
    assert sorted(got.ids) == [f"v{i}.mp4" for i in range(4)]
    (path, reason), = read_failures(tmp_path / "ray.h5")
    assert path.endswith("v1crash.mp4") and "even alone" in reason
    extract([str(vids / f"v{i}.mp4") for i in range(4)], tmp_path / "local.h5",
            config=ExtractConfig(frames=T, batch_size=BATCH), weights=str(MNV2), device="cpu", workers=0)
    want = read_features(tmp_path / "local.h5")
    order = [got.ids.index(os.path.basename(i)) for i in want.ids]
    np.testing.assert_allclose(got.feats[order], want.feats, rtol=0, atol=1e-6)


CLIENT = r"""
set -e
ray start --head --port=6379 --ray-client-server-port=10001 --num-cpus=2 --object-store-memory=268435456 \
    --include-dashboard=false --node-ip-address=127.0.0.1 --disable-usage-stats > "$1/ray-start.log" 2>&1
trap 'ray stop --force > /dev/null 2>&1' EXIT
for address in ray://127.0.0.1:10001 auto; do
    name=$(echo "$address" | tr -c 'a-z0-9\n' _)
    python -m s5vh_cli extract "$2" -o "$1/$name.h5" --frames 4 --batch-size 8 --weights "$3" --device cpu \
        --quiet --engine ray --ray-address "$address"
done
"""


@pytest.mark.slow
def test_ray_client_and_auto_addresses(tmp_path):
    """A cluster started with `ray start`, reached through Ray Client (ray://) and as "auto" (about 60 s)."""
    pytest.importorskip("ray.data", reason="needs s5vh[distributed]")
    need_assets(MNV2)
    vids = tmp_path / "vids"
    vids.mkdir()
    for i in range(3):
        make_index_video(vids / f"v{i}.mp4", 12 + 3 * i)
    mark = f"ray-client-{tmp_path}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="s5vh-ray-"))
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(ray_tmp), S5VH_TEST_MARK=mark,
               OMP_NUM_THREADS="1", PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]))
    try:
        p = subprocess.run(private_net(["bash", "-c", CLIENT, "client", str(tmp_path), str(vids), str(MNV2)]),
                           env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert p.returncode == 0, p.stderr[-4000:]
    assert not processes_left(mark)
    extract([str(vids)], tmp_path / "local.h5", config=ExtractConfig(frames=T, batch_size=BATCH),
            weights=str(MNV2), device="cpu", workers=0)
    for name in ("ray___127_0_0_1_10001", "auto"):
        assert_same_artifact(tmp_path / f"{name}.h5", tmp_path / "local.h5")
