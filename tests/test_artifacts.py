"""Artifacts round-trip, and every way a file can be wrong gives a one-line ArtifactError/InputError."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from s5vh_cli import artifacts as A
from s5vh_cli.errors import ArtifactError, InputError, S5VHError


def _feats(tmp_path, n=5, t=4, d=6, name="feats.h5", **kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    path = tmp_path / name
    paths = [f"/videos/v {i}.mp4" for i in range(n)]
    paths[0] = os.fsdecode(b"/videos/caf\xe9-latin1.mp4")  # not UTF-8: must survive
    A.write_features(path, x, [f"v{i}" for i in range(n)], paths, backbone="mobilenet_v2", backbone_sha256="ab",
                     sampling="uniform", meta={"duration": np.arange(n, dtype=float)},
                     failures=[("/videos/bad.mp4", "cannot open")], prov=A.provenance("extract", {"frames": t}), **kw)
    return path, x, paths


def test_features_round_trip(tmp_path):
    path, x, paths = _feats(tmp_path)
    f = A.read_features(path)
    np.testing.assert_array_equal(f.feats, x)
    assert f.ids == [f"v{i}" for i in range(5)]
    assert f.paths == paths
    assert f.backbone == "mobilenet_v2" and f.sampling == "uniform"
    assert f.attrs["s5vh_artifact"] == "features" and f.attrs["format_version"] == 1
    assert f.sha256 == A.sha256_file(path)
    np.testing.assert_array_equal(f.meta["duration"], np.arange(5))
    assert A.read_failures(path) == [("/videos/bad.mp4", "cannot open")]


def test_public_feature_file_loads_unchanged(tmp_path):
    path = tmp_path / "ucf_train_feats.h5"
    x = np.random.default_rng(1).standard_normal((3, 25, 8)).astype(np.float32)
    with h5py.File(path, "w") as h5:
        h5["feats"] = x
    f = A.read_features(path)
    assert f.n == 3 and f.frames == 25 and f.dim == 8
    assert f.ids == ["0", "1", "2"] and f.backbone == "unknown"


def _one_line(err: S5VHError, path) -> None:
    msg = str(err)
    assert "\n" not in msg and str(path) in msg


def test_wrong_stage(tmp_path):
    path, *_ = _feats(tmp_path)
    with pytest.raises(ArtifactError) as e:
        A.read_codes(path)
    _one_line(e.value, path)
    assert "features" in str(e.value) and "codes" in str(e.value)


def test_truncated_file(tmp_path):
    path, *_ = _feats(tmp_path, n=50, t=10, d=32)
    data = path.read_bytes()
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError) as e:
        A.read_features(bad)
    _one_line(e.value, bad)


def test_missing_key(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as h5:
        A.set_provenance(h5, "codes", A.provenance("encode"))
        h5.attrs["bits"] = 64
    with pytest.raises(ArtifactError, match="missing 'codes'"):
        A.read_codes(path)


@pytest.mark.parametrize("content", [b"", b"not hdf5 at all\n" * 10])
def test_empty_or_foreign_file(tmp_path, content):
    p = tmp_path / "x.h5"
    p.write_bytes(content)
    with pytest.raises(ArtifactError) as e:
        A.read_features(p)
    _one_line(e.value, p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        A.read_features(tmp_path / "nope.h5")
    with pytest.raises(InputError, match="is a folder"):
        A.read_features(tmp_path)


def test_bad_feature_arrays(tmp_path):
    for name, arr in {"nan": np.full((2, 3, 4), np.nan, np.float32), "int": np.zeros((2, 3, 4), np.int32),
                      "2d": np.zeros((2, 3), np.float32), "empty": np.zeros((0, 3, 4), np.float32)}.items():
        p = tmp_path / f"{name}.h5"
        with h5py.File(p, "w") as h5:
            h5["feats"] = arr
        with pytest.raises(ArtifactError) as e:
            A.read_features(p)
        _one_line(e.value, p)


def test_codes_round_trip_and_validation(tmp_path):
    codes = np.random.default_rng(2).integers(0, 256, (7, 8), dtype=np.uint8)
    c = A.Codes(path=None, codes=codes, ids=[str(i) for i in range(7)], paths=[f"/v/{i}" for i in range(7)], bits=64,
                model_sha256="m")
    p = tmp_path / "codes.h5"
    A.write_codes(p, c, A.provenance("encode"), extra_attrs={"backbone": "mobilenet_v2"})
    r = A.read_codes(p)
    np.testing.assert_array_equal(r.codes, codes)
    assert r.bits == 64 and r.model_sha256 == "m" and r.attrs["backbone"] == "mobilenet_v2"
    with pytest.raises(ArtifactError):
        A.write_codes(tmp_path / "bad.h5", A.Codes(None, codes, c.ids, c.paths, bits=32), A.provenance("encode"))


def test_centers_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    hc = np.where(rng.random((4, 16)) > 0.5, 1, -1).astype(np.int8)
    c = A.Centers(path=None, pseudo_labels=np.array([0, 1, 2, 3, 1]), centroids=rng.random((4, 3)).astype(np.float32),
                  pca_mean=np.zeros(6), pca_components=np.zeros((3, 6)), hash_centers={16: hc},
                  stats={16: {"min_hamming": 4}}, features_sha256="f")
    p = tmp_path / "centers.h5"
    A.write_centers(p, c, A.provenance("centers"))
    r = A.read_centers(p)
    np.testing.assert_array_equal(r.hash_centers[16], hc)
    assert r.stats[16]["min_hamming"] == 4 and r.features_sha256 == "f" and r.n_clusters == 4


def test_atomic_output_keeps_previous_file_on_error(tmp_path):
    target = tmp_path / "out.h5"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with A.atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_atomic_output_read_only_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match="cannot write"):
            with A.atomic_output(ro / "x.h5"):
                pass
    finally:
        ro.chmod(0o700)


def test_output_lock_refuses_second_writer(tmp_path):
    target = tmp_path / "x.h5"
    with A.output_lock(target):
        with pytest.raises(InputError, match="another s5vh process"):
            with A.output_lock(target, wait=False):
                pass
