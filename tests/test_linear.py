"""Training-free methods behind `s5vh train --method itq|lsh`: fitting, the model file, encode/query parity."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s5vh_cli.checkpoint import load_model
from s5vh_cli.config import ModelConfig, TrainConfig
from s5vh_cli.encode import encode_array, encode_with_descriptors
from s5vh_cli.errors import InputError, MismatchError
from s5vh_cli.linear import LinearHash, fit_itq, fit_lsh
from s5vh_cli.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_features  # noqa: E402


def test_itq_fit_is_a_rotated_pca_with_falling_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    mean, proj, hist = fit_itq(x, 8, n_iter=20, seed=0)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(proj.T @ proj, np.eye(8), atol=1e-8)  # orthonormal columns
    assert all(b <= a + 1e-6 for a, b in zip(hist, hist[1:], strict=False))
    with pytest.raises(InputError, match="at least 16"):
        fit_itq(x[:10], 16)


@pytest.mark.parametrize("method", ["itq", "lsh"])
def test_model_file_encodes_like_the_projection(tmp_path, method):
    f = make_features(n=40, frames=6, dim=20)
    summary = train(f, None, ModelConfig(method=method, bits=16), TrainConfig(seed=3), tmp_path / "m.pt")
    assert summary["method"] == method and summary["fit_on"] == "means"
    model, meta = load_model(tmp_path / "m.pt")
    assert isinstance(model, LinearHash) and meta["model_config"]["method"] == method
    means = f.feats.astype(np.float64).mean(1)
    if method == "itq":
        mean, proj, _ = fit_itq(means, 16, 50, 3)
    else:
        mean, proj = fit_lsh(means, 16, 3)
    expect = np.packbits((means - mean) @ proj >= 0, axis=1)
    codes = encode_array(model, f.feats)
    # float32 inside the model: a bit may only differ where the projection is within rounding of zero
    diff = np.unpackbits(codes ^ expect, axis=1).astype(bool)
    margin = np.abs((means - mean) @ proj)
    assert (margin[diff] < 1e-4).all() and diff.mean() < 0.01
    codes2, soft = encode_with_descriptors(model, f.feats, "soft")
    np.testing.assert_array_equal(codes2, codes)
    np.testing.assert_allclose(soft.astype(np.float32), ((means - mean) @ proj).astype(np.float32), rtol=2e-2,
                               atol=2e-2)


def test_few_videos_fit_itq_on_frames(tmp_path):
    f = make_features(n=10, frames=8, dim=40)
    s = train(f, None, ModelConfig(method="itq", bits=32), TrainConfig(), tmp_path / "m.pt")
    assert s["fit_on"] == "frames"  # 10 videos < 32 bits, but 80 frames suffice
    with pytest.raises(InputError, match="at least 32"):
        train(f, None, ModelConfig(method="itq", bits=32), TrainConfig(linear_fit="means"), tmp_path / "n.pt")


def test_linear_model_checks_its_input():
    m = LinearHash(ModelConfig(method="lsh", bits=8, feature_dim=5, frames=3))
    with pytest.raises(MismatchError):
        m.hash(torch.zeros(2, 3, 6))
    with pytest.raises(MismatchError, match="training-free"):
        from s5vh_cli.model import S5VH

        S5VH(ModelConfig(method="itq"))


def test_cli_train_method_then_encode(tmp_path):
    import subprocess

    from s5vh_cli import artifacts

    f = make_features(n=30, frames=4, dim=16)
    artifacts.write_features(tmp_path / "f.h5", f.feats, f.ids, f.paths, backbone="test", backbone_sha256="",
                             sampling="uniform", prov=artifacts.provenance("test"))
    run = [sys.executable, "-m", "s5vh_cli"]
    p = subprocess.run([*run, "train", tmp_path / "f.h5", "--method", "itq", "--bits", "16", "-o", tmp_path / "m.pt"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "fitted ITQ" in p.stdout
    p = subprocess.run([*run, "encode", tmp_path / "m.pt", tmp_path / "f.h5", "-o", tmp_path / "c.h5",
                        "--descriptor", "frames", "--descriptor-frames", "2", "-q"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    c = artifacts.read_codes(tmp_path / "c.h5")
    assert c.bits == 16 and c.descriptors.shape == (30, 2, 16) and c.descriptor == "frames"
    assert c.attrs["method"] == "itq"
    p = subprocess.run([*run, "train", tmp_path / "f.h5", "--method", "pca", "-o", tmp_path / "x.pt"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "method must be one of" in p.stderr


def test_temporal_pool_codes_depend_on_frame_order():
    """--temporal-pool K: bit block s comes from the s-th stretch of time only, so playing a video backwards
    changes its code (the mean over all frames, K = 1, cannot tell)."""
    import torch

    from s5vh_cli.model import pool_codes

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((5, 8, 12)).astype(np.float32))
    for k, differs in ((1, False), (2, True)):
        cfg = ModelConfig(method="lsh", bits=16, feature_dim=12, frames=8, temporal_pool=k)
        m = LinearHash(cfg).set_fit(np.zeros(12), rng.standard_normal((12, 16 // k)))
        with torch.no_grad():
            fwd, back = m.hash(x), m.hash(x.flip(1))
        assert bool((fwd != back).any()) is differs
    # k = 2 on [B, V, L]: block 0 (bits 0-1) is the mean of the first half's frames, block 1 of the second half's
    codes = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0],
                           [-1.0, -1.0, -1.0, -1.0]]])
    assert pool_codes(codes, None, 4, 2).tolist() == [[1.0, 1.0, -1.0, -1.0]]
    assert pool_codes(codes, None, 4, 1).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(InputError, match="temporal_pool"):
        ModelConfig(bits=16, frames=8, temporal_pool=3).validate()


def _nuisance_library(n=60, frames=4, dim=24, views=4, seed=0):
    """Videos told apart by small differences on every dimension; their renderings add a large shift on the first
    six dimensions (what a copy changes). Non-negative, like pooled CNN features."""
    rng = np.random.default_rng(seed)
    ident = 1.0 + 0.4 * np.abs(rng.standard_normal((n, 1, dim)))
    feats = ident + 0.03 * np.abs(rng.standard_normal((n, frames, dim)))

    def render(k):
        shift = np.zeros((n, k, 1, dim))
        shift[..., :6] = 3.0 * np.abs(rng.standard_normal((n, k, 1, 6)))
        return feats[:, None] + shift + 0.03 * np.abs(rng.standard_normal((n, k, frames, dim)))

    return feats.astype(np.float32), render(views).astype(np.float32), render(1)[:, 0].astype(np.float32)


def test_whitening_learnt_from_renderings_finds_copies_that_raw_features_miss():
    from s5vh_cli.descriptors import normalise
    from s5vh_cli.linear import apply_whitening, fit_whitening

    feats, views, copies = _nuisance_library()

    def top1(a, b):  # share of copies whose nearest original (cosine of mean frames) is their source
        return float(((normalise(a.mean(1)) @ normalise(b.mean(1)).T).argmax(1) == np.arange(len(a))).mean())

    raw = top1(np.sqrt(copies), np.sqrt(feats))
    mean, proj = fit_whitening(feats, views, 12)
    assert mean.shape == (24,) and proj.shape == (24, 12)
    white = top1(apply_whitening(copies, mean, proj), apply_whitening(feats, mean, proj))
    assert raw < 0.5 and white > 0.9, (raw, white)
    # the renderings' own shift is what it learns to ignore: renderings of other videos teach nothing useful
    _, wrong_views, _ = _nuisance_library(seed=1)
    wrong_views[..., :6] = feats[:, None, :, :6]  # renderings that change only what tells videos apart
    w2 = fit_whitening(feats, wrong_views, 12)
    assert top1(apply_whitening(copies, *w2), apply_whitening(feats, *w2)) < white
    # a seeded sample of the videos when there are more than max_videos: deterministic, and still learns it
    part = fit_whitening(feats, views, 12, max_videos=30, seed=1)
    np.testing.assert_array_equal(part[1], fit_whitening(feats, views, 12, max_videos=30, seed=1)[1])
    assert not np.allclose(part[1], proj) and top1(apply_whitening(copies, *part), apply_whitening(feats, *part)) > 0.8
    with pytest.raises(InputError, match="--views"):
        fit_whitening(feats, None, 12)
    with pytest.raises(InputError, match="between 1 and"):
        fit_whitening(feats, views, 25)


def test_whitened_model_file_hashes_and_describes_the_whitened_frames(tmp_path):
    from s5vh_cli.linear import apply_whitening, fit_whitening

    feats, views, _ = _nuisance_library()
    f = make_features(n=60, frames=4, dim=24)
    f.feats, f.views = feats, views
    train(f, None, ModelConfig(method="itq", bits=8, whiten_dim=12), TrainConfig(seed=3), tmp_path / "m.pt")
    model, meta = load_model(tmp_path / "m.pt")
    assert meta["model_config"]["whiten_dim"] == 12
    w = fit_whitening(feats, views, 12)
    z = apply_whitening(feats, *w)
    mean, proj, _ = fit_itq(z.astype(np.float64).mean(1), 8, 50, 3)
    codes, desc = encode_with_descriptors(model, feats, "frames", 2)
    expect = np.packbits((z.mean(1) - mean) @ proj >= 0, axis=1)
    assert np.unpackbits(codes ^ expect, axis=1).mean() < 0.01
    assert desc.shape == (60, 2, 12)  # the whitened frames at 2 positions, not the 8-bit frame codes
    np.testing.assert_allclose(desc.astype(np.float32), z[:, [1, 3]], atol=2e-3)
    # the weights must be exactly those the config names
    state = torch.load(tmp_path / "m.pt", weights_only=False)
    from s5vh_cli.linear import check_linear_weights_fit

    bad = {k: v for k, v in state["state_dict"].items() if k != "w_projection"}
    with pytest.raises(MismatchError, match="w_projection"):
        check_linear_weights_fit(ModelConfig(method="itq", bits=8, whiten_dim=12, feature_dim=24, frames=4), bad)
    with pytest.raises(InputError, match="training-free"):
        ModelConfig(method="s5vh", whiten_dim=16).validate()
    with pytest.raises(InputError, match="at least 64"):
        ModelConfig(method="itq", bits=64, whiten_dim=32).validate()


def test_cli_whiten_needs_renderings_and_a_linear_method(tmp_path):
    import subprocess

    from s5vh_cli import artifacts

    f = make_features(n=30, frames=4, dim=16)
    artifacts.write_features(tmp_path / "f.h5", f.feats, f.ids, f.paths, backbone="test", backbone_sha256="",
                             sampling="uniform", prov=artifacts.provenance("test"))
    run = [sys.executable, "-m", "s5vh_cli", "train", tmp_path / "f.h5", "-o", tmp_path / "m.pt", "--whiten", "8"]
    for extra, says in ((["--method", "itq", "--bits", "8"], "s5vh extract --views"),
                        ([], "--method itq"), (["--method", "itq", "--whiten", "0"], "at least 1")):
        p = subprocess.run([*run, *extra], capture_output=True, text=True)
        assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) <= 2 and not (tmp_path / "m.pt").exists()
