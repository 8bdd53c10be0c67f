"""Mamba and BiMambaBlock: mamba_ssm-compatible parameters and initialisation, backends agree, tying."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from s5vh_cli.errors import BackendError
from s5vh_cli.mamba import BiMambaBlock, DropPath, Mamba, set_ssm_backend
from s5vh_cli.ssm import available_backends

MAMBA_SSM_SHAPES = {  # mamba_ssm.Mamba(d_model=256) state dict, in its order
    "A_log": (512, 16),
    "D": (512,),
    "in_proj.weight": (1024, 256),
    "conv1d.weight": (512, 1, 4),
    "conv1d.bias": (512,),
    "x_proj.weight": (48, 512),
    "dt_proj.weight": (512, 16),
    "dt_proj.bias": (512,),
    "out_proj.weight": (256, 512),
}


def _backends() -> list[str]:
    names = ["reference", "torch"]
    if available_backends()["cpu"].startswith("available"):
        names.append("cpu")
    return names


def test_state_dict_matches_mamba_ssm():
    m = Mamba(256)
    sd = m.state_dict()
    assert list(sd) == list(MAMBA_SSM_SHAPES)
    assert {k: tuple(v.shape) for k, v in sd.items()} == MAMBA_SSM_SHAPES


@pytest.mark.parametrize(("d_model", "count"), [(256, 437_760), (192, 251_520)])
def test_parameter_count(d_model, count):
    assert sum(p.numel() for p in Mamba(d_model).parameters()) == count


def test_initialisation():
    torch.manual_seed(0)
    m = Mamba(64, dt_min=0.001, dt_max=0.1)
    assert m.dt_rank == 4 and m.d_inner == 128
    dt = torch.nn.functional.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = m.dt_rank**-0.5
    assert m.dt_proj.weight.abs().max() <= bound
    assert torch.allclose(m.A_log, torch.log(torch.arange(1, 17.0)).expand(128, 16))
    assert torch.equal(m.D.detach(), torch.ones(128))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay
    assert m.dt_proj.bias._no_reinit
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.bias is not None
    assert math.isclose(m.conv1d.padding[0], 3)


def test_unknown_backend_raises():
    with pytest.raises(BackendError):
        Mamba(16, backend="gpu-please")
    with pytest.raises(BackendError):
        Mamba(16).set_backend("nope")


def test_output_equal_across_backends():
    torch.manual_seed(0)
    m = Mamba(24, d_state=5)
    with torch.no_grad():
        m.dt_proj.bias.normal_()  # larger steps than the init, so the state actually carries information
    x = torch.randn(3, 11, 24, requires_grad=True)
    results = {}
    for name in _backends():
        m.set_backend(name)
        m.zero_grad()
        x.grad = None
        y = m(x)
        y.pow(2).sum().backward()
        results[name] = (y.detach(), x.grad.clone(), m.A_log.grad.clone(), m.in_proj.weight.grad.clone())
    ref = results.pop("reference")
    for name, got in results.items():
        for a, b in zip(got, ref, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name


def test_causal():
    """Output at time t does not depend on later inputs."""
    torch.manual_seed(0)
    m = Mamba(16, backend="torch")
    x = torch.randn(1, 10, 16)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    with torch.no_grad():
        assert torch.allclose(m(x)[:, :6], m(x2)[:, :6], atol=1e-6)


def test_bimamba_tied_shares_weights():
    block = BiMambaBlock(32, tie_directions=True, backend="torch")
    assert block.mamba2 is block.mamba1
    sd = block.state_dict()
    assert any(k.startswith("mamba2.") for k in sd)
    assert sd["mamba2.in_proj.weight"].data_ptr() == sd["mamba1.in_proj.weight"].data_ptr()
    n_params = sum(p.numel() for p in block.parameters())
    assert n_params == sum(p.numel() for p in Mamba(32).parameters()) + 4 * 32
    # The tied block equals the formula evaluated with mamba1 for both directions.
    torch.manual_seed(1)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        expected = x + block.mamba1(block.norm1(x)) + block.mamba1(block.norm2(x.flip(1))).flip(1)
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_bimamba_untied_formula():
    torch.manual_seed(0)
    block = BiMambaBlock(32, backend="torch").eval()
    assert block.mamba2 is not block.mamba1
    assert not torch.equal(block.mamba1.dt_proj.bias, block.mamba2.dt_proj.bias)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        expected = x + block.mamba1(block.norm1(x)) + block.mamba2(block.norm2(x.flip(1))).flip(1)
        assert torch.allclose(block(x), expected, atol=1e-5)
    assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-6


def test_tied_state_dict_round_trip():
    a = BiMambaBlock(16, tie_directions=True)
    b = BiMambaBlock(16, tie_directions=True)
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_set_ssm_backend_reaches_every_mamba():
    model = torch.nn.Sequential(BiMambaBlock(16), BiMambaBlock(16, tie_directions=True))
    set_ssm_backend(model, "reference")
    assert all(m.backend == "reference" for m in model.modules() if isinstance(m, Mamba))


def test_drop_path():
    dp = DropPath(0.5)
    x = torch.ones(2000, 3, 4)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    torch.manual_seed(0)
    y = dp(x)
    per_sample = y.flatten(1)
    # Whole samples are either dropped or scaled by 1/(1-p).
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert 0.4 < (per_sample[:, 0] == 0).float().mean() < 0.6
    assert isinstance(BiMambaBlock(8, drop_path=0.0).drop_path, torch.nn.Identity)


def _mamba_ssm_gpu() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


@pytest.mark.cuda
@pytest.mark.skipif(not _mamba_ssm_gpu(), reason="needs a CUDA GPU and mamba_ssm")
def test_state_dict_round_trip_with_mamba_ssm():
    from mamba_ssm import Mamba as MambaSSM

    torch.manual_seed(0)
    theirs = MambaSSM(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    ours = Mamba(64)
    ours.load_state_dict({k: v.cpu() for k, v in theirs.state_dict().items()})
    x = torch.randn(2, 25, 64)
    with torch.no_grad():
        y_theirs = theirs(x.cuda()).cpu()
        y_ours = ours(x)
        ours_gpu = Mamba(64, backend="cuda").cuda()
        ours_gpu.load_state_dict(theirs.state_dict())
        y_ours_gpu = ours_gpu(x.cuda()).cpu()
    torch.testing.assert_close(y_ours, y_theirs, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(y_ours_gpu, y_theirs, rtol=6e-4, atol=2e-3)
    back = MambaSSM(d_model=64).cuda()
    back.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x.cuda()).cpu(), y_theirs)
