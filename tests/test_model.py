import dataclasses
import math
import pickle

import h5py
import numpy as np
import pytest
import torch

from s5vh_cli.artifacts import Features
from s5vh_cli.checkpoint import load_model, save_model
from s5vh_cli.config import ModelConfig, TrainConfig
from s5vh_cli.errors import ArtifactError, MismatchError
from s5vh_cli.mamba import Mamba
from s5vh_cli.model import S5VH, sign_ste, sinusoidal_table
from s5vh_cli.train import two_view_masks, view_sizes

T, F, L, K = 8, 12, 16, 4


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(feature_dim=F, frames=T, bits=L, d_model=32, depth=2, dec_d_model=24, n_clusters=K, drop_path=0.1)
    base.update(kw)
    return ModelConfig(**base)


def centres(seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (K, L), generator=g).float() * 2 - 1


def tiny_model(seed=0, **kw) -> S5VH:
    torch.manual_seed(seed)
    return S5VH(tiny_cfg(**kw), centres(), ssm_backend="torch")


def test_sinusoidal_table_formula():
    p = sinusoidal_table(10, 6)
    assert p.shape == (10, 6)
    assert torch.allclose(p[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    t, j = 7, 3  # odd j -> cos with exponent 2*floor(3/2)/6
    assert p[t, j].item() == pytest.approx(math.cos(t / 10000 ** (2 / 6)), rel=1e-6)
    assert p[t, 4].item() == pytest.approx(math.sin(t / 10000 ** (4 / 6)), rel=1e-6)


def test_sign_ste_forward_and_backward():
    h = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    b = sign_ste(h)
    assert b.tolist() == [-1, -1, -1, -1, 1, 1, 1]
    b.backward(torch.arange(1.0, 8.0))
    # gradient passes where -1 < h <= 1
    assert h.grad.tolist() == [0, 0, 3, 4, 5, 6, 0]


@pytest.mark.parametrize("frames,ratio,v,overlap", [(25, 0.5, 13, 1), (25, 0.75, 7, 0), (30, 0.5, 15, 0),
                                                   (25, 0.3, 18, 11)])
def test_two_view_masks(frames, ratio, v, overlap):
    g = torch.Generator().manual_seed(1)
    vis1, msk1, vis2, msk2 = two_view_masks(6, frames, ratio, g)
    assert view_sizes(frames, ratio) == (v, frames - v)
    assert vis1.shape == vis2.shape == (6, v) and msk1.shape == msk2.shape == (6, frames - v)
    for a, m in ((vis1, msk1), (vis2, msk2)):
        assert (a.diff(dim=1) > 0).all() and (m.diff(dim=1) > 0).all()  # temporal order
        assert torch.equal(torch.cat([a, m], 1).sort(1).values, torch.arange(frames).expand(6, -1))
    for i in range(6):
        assert len(set(vis1[i].tolist()) & set(vis2[i].tolist())) == overlap
    again = two_view_masks(6, frames, ratio, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(again, (vis1, msk1, vis2, msk2), strict=True))


@pytest.mark.parametrize("order", ["temporal", "visible_then_masked"])
def test_decoder_order(order):
    model = tiny_model(decoder_order=order).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, T, F, generator=g)
    vis, msk, _, _ = two_view_masks(3, T, 0.5, g)
    out = model(x, vis, msk)
    codes = out["frame_codes"]
    tokens = torch.cat([model.encoder_to_decoder(codes) + model.dec_pos_embed[vis],
                        model.mask_token.expand(3, msk.shape[1], -1) + model.dec_pos_embed[msk]], 1)
    if order == "visible_then_masked":
        want = model.decoder(tokens)[:, -msk.shape[1]:]
    else:
        want = torch.empty(3, msk.shape[1], F)
        for i in range(3):  # place every token at its frame, run, read the masked frames back
            seq = torch.empty(1, T, tokens.shape[-1])
            seq[0, vis[i]] = tokens[i, :vis.shape[1]]
            seq[0, msk[i]] = tokens[i, vis.shape[1]:]
            want[i] = model.decoder(seq)[0, msk[i]]
    assert torch.allclose(out["recon"], want, atol=1e-5)
    other = "temporal" if order != "temporal" else "visible_then_masked"
    model.cfg = dataclasses.replace(model.cfg, decoder_order=other)
    assert not torch.allclose(model(x, vis, msk)["recon"], out["recon"], atol=1e-4)  # the scan is order-sensitive


def test_forward_shapes_and_hash():
    model = tiny_model().eval()
    x = torch.randn(5, T, F)
    vis, msk, _, _ = two_view_masks(5, T, 0.5)
    out = model(x, vis, msk)
    assert out["frame_codes"].shape == (5, 4, L) and set(out["frame_codes"].unique().tolist()) <= {-1.0, 1.0}
    assert out["mean_code"].shape == (5, L) and out["recon"].shape == (5, 4, F) and out["logits"].shape == (5, K)
    h = model.hash(x)
    assert h.dtype == torch.bool and h.shape == (5, L)
    assert torch.equal(h, model.frame_codes(x).mean(1) >= 0)


def test_code_tie_goes_to_plus_one():
    model = tiny_model()
    assert model.cfg.code_tie == "plus_one"
    codes = torch.tensor([[[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]]])  # bit 0 ties, bit 1 is -1, bit 2 is +1
    model.frame_codes = lambda x, hash_norm=True: codes
    assert model.hash(torch.zeros(1, T, F)).tolist() == [[True, False, True]]


def test_frames_mismatch_is_one_line_error():
    model = tiny_model()
    with pytest.raises(MismatchError) as e:
        model.hash(torch.randn(2, T + 1, F))
    assert "frames" in str(e.value) and "\n" not in str(e.value)


def test_fixed_centres_stay_fixed_learned_ones_train():
    x = torch.randn(4, T, F)
    vis, msk, _, _ = two_view_masks(4, T, 0.5, torch.Generator().manual_seed(0))
    fixed = tiny_model(centers_mode="fixed")
    assert "hash_centers" in dict(fixed.named_buffers())
    assert all("hash_centers" not in n for n, _ in fixed.named_parameters())
    learned = tiny_model(centers_mode="learned")
    before_fixed, before_learned = fixed.hash_centers.clone(), learned.classifier.weight.detach().clone()
    for model in (fixed, learned):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(2):
            opt.zero_grad()
            out = model(x, vis, msk)
            torch.nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1, 2, 3])).backward()
            opt.step()
    assert torch.equal(fixed.hash_centers, before_fixed)
    assert not torch.equal(learned.classifier.weight, before_learned)


def test_wrong_centre_shape():
    with pytest.raises(MismatchError):
        S5VH(tiny_cfg(), torch.ones(K + 1, L), ssm_backend="torch")


def test_released_switches():
    paper = tiny_model()
    released = tiny_model(tie_directions=True, mamba_init="xavier", centers_mode="learned")
    blk_p, blk_r = paper.encoder.blocks[0], released.encoder.blocks[0]
    assert blk_r.mamba2 is blk_r.mamba1 and blk_p.mamba2 is not blk_p.mamba1
    # Mamba's dt bias init (softplus^-1 of dt in [1e-3, 1e-1]) survives by default, is zeroed by "xavier"
    assert (blk_p.mamba1.dt_proj.bias < 0).all()
    assert torch.count_nonzero(blk_r.mamba1.dt_proj.bias) == 0
    assert torch.count_nonzero(released.encoder.patch_embed.bias) == 0
    assert (blk_r.norm1.weight == 1).all()


def test_transformer_encoder_drop_in():
    model = tiny_model(encoder="transformer", n_heads=4, ffn_dim=64)
    assert not any(isinstance(m, Mamba) for m in model.modules())
    x = torch.randn(3, T, F)
    vis, msk, _, _ = two_view_masks(3, T, 0.5)
    out = model(x, vis, msk)
    out["recon"].sum().backward()
    assert model.hash(x).shape == (3, L)


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------
def _features(n=4):
    return Features(path=None, feats=np.zeros((n, T, F), np.float32), ids=[], paths=[], backbone="bb",
                    sampling="uniform", sha256="f" * 64)


@pytest.mark.parametrize("released", [False, True])
def test_checkpoint_round_trip(tmp_path, released):
    kw = dict(tie_directions=True, decoder_order="visible_then_masked", mamba_init="xavier",
              centers_mode="learned") if released else {}
    model = tiny_model(**kw).eval()
    path = tmp_path / "m.pt"
    save_model(path, model, model.cfg, TrainConfig(), _features(), {"note": "x"})
    raw = torch.load(path, weights_only=True)
    assert raw["s5vh_artifact"] == "model" and raw["format_version"] == 1
    assert raw["features"]["frames"] == T and raw["features"]["feature_dim"] == F
    for key in ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                "dt_proj.bias", "A_log", "D", "out_proj.weight"):
        assert f"encoder.blocks.0.mamba1.{key}" in raw["state_dict"]
    loaded, meta = load_model(path, ssm_backend="torch")
    assert meta["extra"] == {"note": "x"} and meta["model_config"] == dataclasses.asdict(model.cfg)
    x = torch.randn(6, T, F)
    assert torch.equal(loaded.hash(x), model.hash(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"s5vh_artifact": "model", "x": _Evil(marker)}, f, protocol=2)
    torch.save({"s5vh_artifact": "model", "x": _Evil(marker)}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(ArtifactError) as e:
            load_model(p)
        assert "\n" not in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def test_bad_model_files(tmp_path):
    model = tiny_model()
    good = tmp_path / "m.pt"
    save_model(good, model, model.cfg, TrainConfig(), _features(), {})
    trunc = tmp_path / "t.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "o.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    h5 = tmp_path / "x.h5"
    with h5py.File(h5, "w") as f:
        f["feats"] = np.zeros((1, 2, 3))
    empty = tmp_path / "e.pt"
    empty.write_bytes(b"")
    for p in (tmp_path / "missing.pt", trunc, other, h5, empty):
        with pytest.raises(ArtifactError) as e:
            load_model(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("encoder", ["mamba", "transformer"])
def test_loading_a_model_does_not_import_torchs_compiler(tmp_path, encoder):
    """The weight-fit check ran on the meta device, whose kernels import torch._dynamo: 1.2-1.6 s of CPU on
    every cold model load (a cold `s5vh query` waits for it). A fresh process loads a model without it."""
    import subprocess
    import sys

    model = tiny_model(encoder=encoder).eval()
    path = tmp_path / "m.pt"
    save_model(path, model, model.cfg, TrainConfig(), _features(), {})
    code = ("import sys; from s5vh_cli.checkpoint import load_model; load_model(sys.argv[1], ssm_backend='torch'); "
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))[:3])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
