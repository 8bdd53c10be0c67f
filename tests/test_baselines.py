"""LSH and ITQ baselines: code layout, determinism, ITQ's loss, LSH locality, the CLI's codes artifact."""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package

from benchmarks import baselines as bl  # noqa: E402
from s5vh_cli.errors import InputError  # noqa: E402


def _popcount(a: np.ndarray) -> np.ndarray:
    return np.unpackbits(a, axis=-1).sum(-1)


@pytest.fixture
def clustered():
    """Gaussian clusters in 48 dimensions with a common offset, so centring matters."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 48)) * 3
    labels = rng.integers(0, 8, 600)
    return centres[labels] + rng.standard_normal((600, 48)) + 10.0, labels


@pytest.mark.parametrize("method", ["lsh", "itq"])
def test_codes_are_packed_bits_and_deterministic(method, clustered):
    x, _ = clustered
    make = bl.lsh if method == "lsh" else bl.itq
    enc = make(x, 32, seed=3)
    codes = enc(x)
    assert codes.dtype == np.uint8 and codes.shape == (600, 4)
    # big-endian packing: bit 0 of the code is the MSB of byte 0
    assert np.array_equal(np.unpackbits(codes, axis=1), enc.signs(x).astype(np.uint8))
    again = make(x, 32, seed=3)
    assert np.array_equal(again(x), codes) and again.fingerprint() == enc.fingerprint()
    other = make(x, 32, seed=4)
    assert other.fingerprint() != enc.fingerprint()
    assert enc.fingerprint().startswith(f"baseline:{method}:")


@pytest.mark.parametrize("method", ["lsh", "itq"])
def test_bits_are_roughly_balanced(method, clustered):
    x, _ = clustered
    enc = (bl.lsh if method == "lsh" else bl.itq)(x, 32, seed=0)
    frac = enc.signs(x).mean(axis=0)
    # centred projections split the data; a far-off-centre hyperplane would give 0 or 1
    assert 0.2 < frac.mean() < 0.8 and (frac > 0.02).all() and (frac < 0.98).all()


def test_itq_loss_decreases(clustered):
    x, _ = clustered
    enc = bl.itq(x, 16, n_iter=30, seed=1)
    h = np.array(enc.loss_history)
    assert len(h) == 30
    assert (np.diff(h) <= 1e-6 * h[0]).all()  # never increases
    assert h[-1] < h[0]


def test_itq_projection_is_orthonormal_rotation_of_pca(clustered):
    x, _ = clustered
    enc = bl.itq(x, 16, n_iter=10, seed=0)
    w = enc.projection
    assert np.allclose(w.T @ w, np.eye(16), atol=1e-8)


def test_lsh_locality():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 64))
    enc = bl.lsh(x, 64, seed=0)
    near = x + 0.1 * rng.standard_normal(x.shape)
    far = rng.standard_normal(x.shape)
    d_near = _popcount(enc(x) ^ enc(near)).mean()
    d_far = _popcount(enc(x) ^ enc(far)).mean()
    assert d_near < 0.5 * d_far
    assert 24 < d_far < 40  # unrelated vectors differ in about half the bits


def test_itq_retrieves_clusters_better_than_chance(clustered):
    x, labels = clustered
    codes = bl.itq(x, 32, seed=0)(x)
    d = np.unpackbits(codes[:50, None, :] ^ codes[None, :, :], axis=-1).sum(-1)
    d[np.arange(50), np.arange(50)] = 99
    nn = d.argmin(axis=1)
    assert (labels[nn] == labels[:50]).mean() > 0.8


def test_bad_inputs_raise_one_line_errors(clustered):
    x, _ = clustered
    with pytest.raises(InputError, match="multiple of 8"):
        bl.lsh(x, 12)
    with pytest.raises(InputError, match="at least 64"):
        bl.itq(x[:20], 64)
    enc = bl.lsh(x, 16)
    with pytest.raises(InputError, match="dimensions"):
        enc(x[:, :10])
    with pytest.raises(InputError, match="NaN"):
        bl.lsh(np.full((4, 3), np.nan), 8)


def _write_feats(path, feats):
    from s5vh_cli.artifacts import provenance, write_features

    ids = [f"v{i:03d}.mp4" for i in range(len(feats))]
    write_features(path, feats.astype(np.float32), ids, ids, backbone="test", backbone_sha256="", sampling="uniform",
                   prov=provenance("test"))


@pytest.mark.parametrize("method", ["lsh", "itq"])
def test_cli_writes_codes_artifact(method, tmp_path, capsys):
    from s5vh_cli.artifacts import read_codes

    rng = np.random.default_rng(0)
    _write_feats(tmp_path / "train.h5", rng.standard_normal((80, 5, 32)))
    _write_feats(tmp_path / "q.h5", rng.standard_normal((10, 5, 32)))
    argv = ["--method", method, "--bits", "16", "--train", str(tmp_path / "train.h5"),
            "--encode", str(tmp_path / "q.h5"), "-o", str(tmp_path / "q_codes.h5"),
            "--encode", str(tmp_path / "train.h5"), "-o", str(tmp_path / "t_codes.h5")]
    assert bl.main(argv) == 0
    c = read_codes(tmp_path / "q_codes.h5")
    assert c.bits == 16 and c.codes.shape == (10, 2) and c.ids[0] == "v000.mp4"
    assert c.model_sha256.startswith(f"baseline:{method}:")
    assert read_codes(tmp_path / "t_codes.h5").model_sha256 == c.model_sha256
    from s5vh_cli.artifacts import read_features

    means = read_features(tmp_path / "train.h5").feats.astype(np.float64).mean(1)
    enc = bl.lsh(means, 16, 0) if method == "lsh" else bl.itq(means, 16, 50, 0)
    assert np.array_equal(c.codes, enc(read_features(tmp_path / "q.h5").feats.astype(np.float64).mean(1)))


def test_cli_reports_bad_file(tmp_path, capsys):
    assert bl.main(["--method", "lsh", "--train", str(tmp_path / "none.h5"), "--encode", "x", "-o", "y"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="videohash needs ffmpeg")
def test_videohash_reports_missing_package(tmp_path):
    from s5vh_cli.errors import S5VHError

    try:
        import videohash  # noqa: F401

        pytest.skip("videohash is installed here")
    except ImportError:
        pass
    with pytest.raises(S5VHError, match="videohash"):
        bl.videohash_codes([str(tmp_path / "a.mp4")], workers=1)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("S5VH_VIDEOHASH_PYTHON") or shutil.which("ffmpeg") is None,
                    reason="set S5VH_VIDEOHASH_PYTHON to an interpreter with videohash and Pillow<10; needs ffmpeg")
def test_videohash_codes_match_copies(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        base = cv2.resize(rng.integers(0, 255, (6, 8, 3)).astype(np.uint8), (160, 120))
        for name, f in (("orig", lambda a: a), ("bright", lambda a: cv2.convertScaleAbs(a, alpha=1.2, beta=10))):
            p = tmp_path / f"{k}_{name}.mp4"
            vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
            for t in range(40):
                vw.write(f(np.roll(base, 2 * t, axis=1)))
            vw.release()
            paths.append(str(p))
    codes = bl.videohash_codes(paths, os.environ["S5VH_VIDEOHASH_PYTHON"], workers=2)
    d = _popcount(codes[:, None, :] ^ codes[None, :, :])
    assert codes.shape == (4, 8)
    assert d[0, 1] < d[0, 2] and d[2, 3] < d[2, 1]


def test_videohash_codes_order_and_parsing(tmp_path, monkeypatch):
    # A stand-in videohash module: the hash is the file's stem; it prints chatter of its own and, like the
    # ffmpeg that the real one runs, reads whatever its stdin holds.
    (tmp_path / "videohash.py").write_text(
        "import os, sys\n"
        "class VideoHash:\n"
        "    def __init__(self, path):\n"
        "        print('downloading nothing')\n"
        "        sys.stdin.read()\n"
        "        stem = os.path.basename(path).split('.')[0]\n"
        "        if stem == 'bad':\n"
        "            raise ValueError('cannot read\\nthis file')\n"
        "        self.hash_hex = '0x' + stem\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    hexes = [f"{i:016x}" for i in (1, 2**63, 0xDEADBEEF, 5, 2**64 - 1)]
    codes = bl.videohash_codes([f"/x/{h}.mp4" for h in hexes], workers=2)
    assert codes.shape == (5, 8)
    assert [int.from_bytes(c.tobytes(), "big") for c in codes] == [int(h, 16) for h in hexes]
    with pytest.raises(InputError, match="bad.mp4: videohash failed .*cannot read this file"):
        bl.videohash_codes(["/x/0a.mp4", "/x/bad.mp4"], workers=1)
