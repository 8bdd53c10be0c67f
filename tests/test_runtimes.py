"""Backbone runtimes: float32 parity with torch on the real checkpoint, the on-disk graph cache, `auto`, and
precision recorded in the features (assets from scripts/fetch_test_assets.sh, found through S5VH_TEST_ASSETS)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from s5vh_cli import runtimes
from s5vh_cli.errors import BackendError, InputError, MismatchError
from s5vh_cli.runtimes import graphs

ASSETS = Path(os.environ.get("S5VH_TEST_ASSETS", ".bench-data/assets"))
MNV2 = ASSETS / "weights" / "mobilenet_v2-b0353104.pth"
PHOTOS = ["squirrel_cls.jpg", "orange.jpg", "baboon.jpg"]
CPU_RUNTIMES = [r for r in ("onnxruntime", "openvino")]


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        msg = f"test assets missing ({', '.join(missing)}); run scripts/fetch_test_assets.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def need_runtime(name: str) -> None:
    if not runtimes.installed(name):
        pytest.skip(f"{name} not installed (pip install 's5vh[{name}]')")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One graph cache for the module (exporting is the slow part), never the user's."""
    d = tmp_path_factory.mktemp("s5vh-cache")
    old = os.environ.get("S5VH_CACHE_DIR")
    os.environ["S5VH_CACHE_DIR"] = str(d)
    runtimes.clear_cache()
    yield d
    runtimes.clear_cache()
    if old is None:
        os.environ.pop("S5VH_CACHE_DIR", None)
    else:
        os.environ["S5VH_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def photos():
    import cv2

    from s5vh_cli.video import resize_crop

    need(MNV2, *[ASSETS / "photos" / p for p in PHOTOS])
    return np.stack([resize_crop(cv2.imread(str(ASSETS / "photos" / p)), 224, 256) for p in PHOTOS])


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_float32_features_match_torch_on_real_weights(cache, photos, runtime):
    need_runtime(runtime)
    ref, _ = runtimes.load_embedder("mobilenet_v2", MNV2, runtime="torch", precision="float32", device="cpu")
    emb, choice = runtimes.load_embedder("mobilenet_v2", MNV2, runtime=runtime, precision="float32", device="cpu")
    assert emb.runtime == runtime and emb.precision == "float32" and choice.reason == "as asked"
    want = ref.embed(photos)
    got = emb.embed(photos)
    assert got.dtype == np.float32 and got.shape == (3, 1280)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(want).max() > 1.0  # the features are not trivially small
    # one more batch size than the export's: the graph's batch is dynamic
    assert np.abs(emb.embed(photos[:1]) - want[:1]).max() < 1e-4
    # the same arguments give the same loaded runtime (cached in the process)
    again, _ = runtimes.load_embedder("mobilenet_v2", MNV2, runtime=runtime, precision="float32", device="cpu")
    assert again is emb


def test_export_leaves_the_torch_model_untouched(cache, photos):
    """The exporter switches the module it is given between modes; the caller's model must stay in eval mode."""
    need_runtime("onnxruntime")
    from s5vh_cli.backbones import create_backbone

    m = create_backbone("mobilenet_v2", MNV2)
    with torch.inference_mode():
        before = m(torch.from_numpy(photos))
    d = cache / "private"
    os.environ["S5VH_CACHE_DIR"] = str(d)
    try:
        graphs.onnx_graph(m)
    finally:
        os.environ["S5VH_CACHE_DIR"] = str(cache)
    assert not m.training and not any(x.training for x in m.modules())
    with torch.inference_mode():
        assert torch.equal(m(torch.from_numpy(photos)), before)


def test_bfloat16_is_reduced_precision_not_the_same_features(cache, photos):
    need_runtime("openvino")
    if not runtimes.openvino_supports("bfloat16"):
        pytest.skip("this CPU has no bf16 instructions")
    ref, _ = runtimes.load_embedder("mobilenet_v2", MNV2, runtime="torch", precision="float32", device="cpu")
    emb, _ = runtimes.load_embedder("mobilenet_v2", MNV2, runtime="openvino", precision="bfloat16", device="cpu")
    a, b = ref.embed(photos), emb.embed(photos)
    assert emb.record()["precision"] == "bfloat16"
    diff = np.abs(a - b).max()
    assert 1e-4 < diff < 0.1 * np.abs(a).max()  # close, but not the float32 features
    # the same photo stays nearest to itself
    sim = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assert (sim.argmax(1) == np.arange(3)).all()


def test_graph_cache_key_follows_weights_and_reuses_export(cache, photos):
    need_runtime("onnxruntime")
    from s5vh_cli.backbones import create_backbone

    m = create_backbone("mobilenet_v2", MNV2)
    folder, built = graphs.onnx_graph(m)
    assert folder.is_dir() and not built  # exported by the parity test above
    assert m.weights_sha256[:16] in folder.name
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["weights_sha256"] == m.weights_sha256
    m.weights_sha256 = "0" * 64  # other weights: another graph, never the cached one
    other, built = graphs.onnx_graph(m)
    assert built and other != folder


def _build_slowly(root: str, key: str, counter: str) -> str:
    os.environ["S5VH_CACHE_DIR"] = root

    def build(tmp: Path) -> dict:
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.5)
        (tmp / "graph.bin").write_bytes(b"g" * 1000)
        return {"ok": True}

    folder, _ = graphs.cached_graph(key, build)
    return (folder / "graph.bin").read_bytes().decode()[:3]


def test_graph_cache_is_built_once_by_two_processes(tmp_path):
    counter = tmp_path / "builds"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        got = pool.starmap(_build_slowly, [(str(tmp_path / "c"), "k1", str(counter))] * 2)
    assert got == ["ggg", "ggg"]
    assert counter.read_text() == "x"  # the second process waited for the first one's graph
    assert [p.name for p in (tmp_path / "c" / "graphs").iterdir() if not p.name.startswith(".")] == ["k1"]


def test_graph_cache_replaces_a_torn_folder_and_keeps_none_on_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("S5VH_CACHE_DIR", str(tmp_path))
    torn = tmp_path / "graphs" / "k2"
    torn.mkdir(parents=True)
    (torn / "graph.bin").write_bytes(b"half")  # a crash before meta.json was written
    folder, built = graphs.cached_graph("k2", lambda t: (t / "graph.bin").write_bytes(b"whole") and {})
    assert built and (folder / "graph.bin").read_bytes() == b"whole"

    def fail(t: Path) -> dict:
        (t / "graph.bin").write_bytes(b"partial")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        graphs.cached_graph("k3", fail)
    assert not (tmp_path / "graphs" / "k3").exists()
    assert not [p for p in (tmp_path / "graphs").iterdir() if p.name.startswith(".k3.") and p.is_dir()]


def test_a_graph_that_disagrees_with_torch_is_refused(cache, photos, monkeypatch):
    need_runtime("onnxruntime")
    runtimes.clear_cache()
    emb, _ = runtimes.load_embedder("mobilenet_v2", MNV2, runtime="onnxruntime", precision="float32", device="cpu")
    ref = emb.graph / "reference.npy"
    good = np.load(ref)
    try:
        np.save(ref, good + 0.01)  # as if a runtime upgrade changed the results
        runtimes.clear_cache()
        with pytest.raises(BackendError, match="disagrees with torch"):
            runtimes.load_embedder("mobilenet_v2", MNV2, runtime="onnxruntime", precision="float32", device="cpu")
    finally:
        np.save(ref, good)
        runtimes.clear_cache()


def test_missing_runtime_names_the_extra(monkeypatch):
    need(MNV2)
    runtimes.clear_cache()
    monkeypatch.setattr(runtimes, "installed", lambda r: r == "torch")
    with pytest.raises(BackendError) as e:
        runtimes.load_embedder("mobilenet_v2", MNV2, runtime="openvino", device="cpu")
    assert "pip install 's5vh[openvino]'" in str(e.value) and "\n" not in str(e.value)
    emb, choice = runtimes.load_embedder("mobilenet_v2", MNV2, runtime="auto", device="cpu")
    assert emb.runtime == "torch" and "only one installed" in choice.reason
    runtimes.clear_cache()


@pytest.mark.parametrize("kw,err", [({"runtime": "tensorrt"}, InputError), ({"precision": "int4"}, InputError),
                                    ({"runtime": "onnxruntime", "precision": "bfloat16"}, BackendError)])
def test_bad_runtime_or_precision_is_one_line_error(kw, err):
    need(MNV2)
    if kw.get("runtime") == "onnxruntime":
        need_runtime("onnxruntime")
    runtimes.clear_cache()
    with pytest.raises(err) as e:
        runtimes.load_embedder("mobilenet_v2", MNV2, device="cpu", **kw)
    assert "\n" not in str(e.value)


def test_auto_measures_once_and_remembers(cache, monkeypatch):
    need(MNV2)
    need_runtime("onnxruntime")
    runtimes.clear_cache()
    calls = []

    def fake(embedders, batch, rounds=3):
        calls.append(sorted(embedders))
        return {name: (100.0 if name == "onnxruntime" else 10.0) for name in embedders}

    monkeypatch.setattr(runtimes, "measure_all", fake)
    emb, choice = runtimes.load_embedder("mobilenet_v2", MNV2, runtime="auto", device="cpu", batch_size=8)
    assert emb.runtime == "onnxruntime" and "measured now" in choice.reason
    assert "torch" in calls[0] and "onnxruntime" in calls[0]
    stored = json.loads((cache / "auto-runtime.json").read_text())
    assert [v["runtime"] for v in stored.values()] == ["onnxruntime"]
    runtimes.clear_cache()
    emb, choice = runtimes.load_embedder("mobilenet_v2", MNV2, runtime="auto", device="cpu", batch_size=8)
    assert emb.runtime == "onnxruntime" and "when measured on" in choice.reason
    assert len(calls) == 1  # the stored decision was used, nothing measured again
    runtimes.clear_cache()


# ----------------------------------------------------------------------------------------------------------
# through extract and extract_clips
# ----------------------------------------------------------------------------------------------------------
def _videos(folder: Path, n: int = 2, start: int = 0) -> Path:
    import cv2

    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        w = cv2.VideoWriter(str(folder / f"v{i}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25, (96, 80))
        base = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
        for k in range(30):
            w.write(np.roll(base, 3 * k, axis=1))
        w.release()
    return folder


def test_extract_records_runtime_and_precision_and_clips_match(cache, tmp_path):
    need(MNV2)
    need_runtime("onnxruntime")
    from s5vh_cli.config import ExtractConfig
    from s5vh_cli.extract import extract, extract_clips

    vids = _videos(tmp_path / "v")
    out = tmp_path / "f.h5"
    cfg = ExtractConfig(frames=4, batch_size=8, runtime="onnxruntime", precision="float32")
    res = extract([str(vids)], out, config=cfg, weights=str(MNV2), device="cpu", workers=0)
    assert res.videos == 2 and res.runtime.startswith("onnxruntime")
    with h5py.File(out) as h5:
        assert h5.attrs["precision"] == "float32"
        conf = json.loads(h5.attrs["config"])
        assert conf["runtime"] == "onnxruntime" and conf["precision"] == "float32" and conf["runtime_version"]
        feats = h5["feats"][()]
    # the query path: the same frames through the same runtime call give the same features
    clip_feats, infos = extract_clips([str(vids / "v1.mp4")], backbone="mobilenet_v2", frames=4,
                                      sampling="uniform", weights=str(MNV2), device="cpu", batch_size=8,
                                      runtime="onnxruntime", precision="float32")
    assert infos[0]["runtime"] == "onnxruntime" and infos[0]["precision"] == "float32"
    assert np.abs(clip_feats[0] - feats[1]).max() < 1e-5
    # torch's features of the same videos agree within the float32 tolerance
    out2 = tmp_path / "t.h5"
    extract([str(vids)], out2, config=ExtractConfig(frames=4, batch_size=8, runtime="torch"),
            weights=str(MNV2), device="cpu", workers=0)
    with h5py.File(out2) as h5:
        assert np.abs(h5["feats"][()] - feats).max() < 1e-4


def test_resume_refuses_another_precision(cache, tmp_path):
    need(MNV2)
    need_runtime("openvino")
    if not runtimes.openvino_supports("bfloat16"):
        pytest.skip("this CPU has no bf16 instructions")
    from s5vh_cli.config import ExtractConfig
    from s5vh_cli.extract import extract

    vids = _videos(tmp_path / "v")
    out = tmp_path / "f.h5"
    extract([str(vids / "v0.mp4")], out, config=ExtractConfig(frames=4, runtime="openvino", precision="bfloat16"),
            weights=str(MNV2), device="cpu", workers=0)
    with h5py.File(out) as h5:
        assert h5.attrs["precision"] == "bfloat16"
    with pytest.raises(MismatchError, match="precision 'bfloat16' vs 'float32'"):
        extract([str(vids)], out, config=ExtractConfig(frames=4, runtime="openvino", precision="float32"),
                weights=str(MNV2), device="cpu", workers=0)


def test_files_without_a_precision_attribute_still_resume(cache, tmp_path):
    """Outputs written before the precision was recorded: accepted, new rows appended."""
    need(MNV2)
    from s5vh_cli.config import ExtractConfig
    from s5vh_cli.extract import extract

    vids = _videos(tmp_path / "v", 1)
    out = tmp_path / "f.h5"
    cfg = ExtractConfig(frames=4, runtime="torch")
    extract([str(vids)], out, config=cfg, weights=str(MNV2), device="cpu", workers=0)
    with h5py.File(out, "a") as h5:
        del h5.attrs["precision"]
    _videos(vids, 1, start=1)
    res = extract([str(vids)], out, config=cfg, weights=str(MNV2), device="cpu", workers=0)
    assert res.videos == 2 and res.extracted == 1
