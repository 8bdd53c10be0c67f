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
