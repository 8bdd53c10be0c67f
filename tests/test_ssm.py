"""Every selective-scan backend present on this machine against the sequential reference: outputs and
gradients with respect to every input, fp32."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s5vh_cli.errors import BackendError
from s5vh_cli.ssm import available_backends, resolve_backend, selective_scan, selective_scan_ref

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# Max |error| relative to the largest reference magnitude (outputs and each gradient).
FWD_TOL = 2e-5
GRAD_TOL = 5e-5


def _cpu_backends() -> list[str]:
    names = ["torch"]
    if available_backends()["cpu"].startswith("available"):
        names.append("cpu")
    return names


def _inputs(batch, dim, dstate, seqlen, *, has_d, has_z, has_bias, softplus, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, seqlen, generator=g)
    # As in a Mamba layer: A < 0 and, without softplus, a positive step.
    delta = (
        torch.randn(batch, dim, seqlen, generator=g)
        if softplus
        else torch.rand(batch, dim, seqlen, generator=g)
    )
    A = -(torch.rand(dim, dstate, generator=g) * 2 + 0.05)
    B = torch.randn(batch, dstate, seqlen, generator=g)
    C = torch.randn(batch, dstate, seqlen, generator=g)
    D = torch.randn(dim, generator=g) if has_d else None
    z = torch.randn(batch, dim, seqlen, generator=g) if has_z else None
    bias = 0.5 * torch.randn(dim, generator=g) if has_bias else None
    xs = [u, delta, A, B, C, D, z, bias]
    return [x.requires_grad_() if x is not None else None for x in xs]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def _check(backend, shape, has_d, has_z, has_bias, softplus):
    xs = _inputs(*shape, has_d=has_d, has_z=has_z, has_bias=has_bias, softplus=softplus)
    used = [x for x in xs if x is not None]
    ref = selective_scan_ref(*xs, delta_softplus=softplus)
    out = selective_scan(*xs, delta_softplus=softplus, backend=backend)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _rel_err(out, ref) < FWD_TOL, f"forward {backend}: {_rel_err(out, ref):.2e}"
    gout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    g_ref = torch.autograd.grad(ref, used, gout)
    g_out = torch.autograd.grad(out, used, gout)
    names = [n for n, x in zip(INPUT_NAMES, xs, strict=True) if x is not None]
    for name, a, b in zip(names, g_out, g_ref, strict=True):
        assert a.shape == b.shape
        assert _rel_err(a, b) < GRAD_TOL, f"d{name} {backend}: {_rel_err(a, b):.2e}"


SHAPES = [(1, 1, 1, 1), (2, 5, 3, 1), (2, 7, 5, 25), (3, 9, 16, 25), (2, 4, 17, 100), (1, 70, 16, 33)]
OPTIONS = [
    (True, True, True, True),
    (False, False, False, False),
    (True, False, True, False),
    (False, True, False, True),
]


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "".join("DzbS"[i] if v else "-" for i, v in enumerate(o))
)
def test_backend_matches_reference(backend, shape, options):
    _check(backend, shape, *options)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_backward_partial_block_after_full_block(threads):
    """One backward task may own several 16-channel blocks; a partial last block (70 = 4 x 16 + 6) must not see
    the previous full block's values in its padded lanes, whatever the thread count."""
    if "cpu" not in _cpu_backends():
        pytest.skip("fused cpu kernel unavailable")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for options in OPTIONS:
            _check("cpu", (2, 70, 16, 7), *options)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dim", [7, 20, 48])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_conv_silu_matches_torch(dim, has_bias, threads):
    """The fused causal depthwise conv + SiLU against F.conv1d + F.silu, forward and every gradient. The kernel
    runs 16 channels at a time and the rest one by one: 7 is all tail, 20 a block and a tail, 48 three blocks."""
    if "cpu" not in _cpu_backends():
        pytest.skip("fused cpu kernel unavailable")
    from s5vh_cli.ssm.cpu_kernel import causal_conv1d_silu

    g = torch.Generator().manual_seed(3)
    batch, seqlen, ksize = 3, 9, 4
    x = torch.randn(batch, seqlen, dim, generator=g, requires_grad=True)
    w = torch.randn(dim, 1, ksize, generator=g, requires_grad=True)
    bias = torch.randn(dim, generator=g, requires_grad=True) if has_bias else None
    used = [t for t in (x, w, bias) if t is not None]
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), w, bias, padding=ksize - 1, groups=dim)
    ref = torch.nn.functional.silu(ref[..., :seqlen]).transpose(1, 2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = causal_conv1d_silu(x, w, bias, dim)
        gout = torch.randn(ref.shape, generator=g)
        g_out = torch.autograd.grad(out, used, gout)
    finally:
        torch.set_num_threads(before)
    assert _rel_err(out, ref) < FWD_TOL
    for a, b in zip(g_out, torch.autograd.grad(ref, used, gout), strict=True):
        assert _rel_err(a, b) < GRAD_TOL


@pytest.mark.slow
def test_cpu_kernels_compiled_for_baseline_x86_64(tmp_path):
    """Compiled for baseline x86-64 (no SSE4.1, so the exp's floor is built from a truncating conversion instead
    of llvm.floor): the same parity checks, in a fresh process with its own numba cache. Slow: it compiles
    every kernel."""
    if "cpu" not in _cpu_backends() or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("fused cpu kernel unavailable or not an x86-64 machine")
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_ssm as T\n"
        "from s5vh_cli.ssm import cpu_kernel as ck\n"
        "for o in T.OPTIONS: T._check('cpu', (2, 20, 16, 7), *o)\n"
        "T.test_cpu_conv_silu_matches_torch(20, True, 1)\n"
        "assert ck._FLOOR_NATIVE and not any(ck._FLOOR_NATIVE.values()), ck._FLOOR_NATIVE\n"
    )
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("backend", _cpu_backends())
def test_strided_inputs(backend):
    """Channels-last views (what Mamba passes) give the same result as contiguous tensors."""
    xs = _inputs(2, 6, 4, 9, has_d=True, has_z=True, has_bias=True, softplus=True)
    views = [
        x.detach().transpose(1, 2).contiguous().transpose(1, 2) if x is not None and x.dim() == 3 else x
        for x in xs
    ]
    ref = selective_scan_ref(*xs, delta_softplus=True)
    out = selective_scan(*views, delta_softplus=True, backend=backend)
    assert _rel_err(out, ref) < FWD_TOL


def test_long_sequence_torch_chunks():
    """More steps than one chunk of the torch backend, so the chunk boundaries are exercised."""
    import s5vh_cli.ssm.torch_scan as ts

    old = ts._CHUNK_ELEMENTS
    ts._CHUNK_ELEMENTS = 2 * 3 * 4 * 7  # chunks of 7 steps
    try:
        _check("torch", (2, 3, 4, 40), True, True, True, True)
    finally:
        ts._CHUNK_ELEMENTS = old


def test_resolve_auto_says_why():
    name, reason = resolve_backend("auto", "cpu")
    assert name in ("cpu", "torch")
    assert reason.startswith(name + " (")


def test_available_backends_lists_all():
    status = available_backends()
    assert set(status) == {"reference", "torch", "cpu", "cuda"}
    assert all(isinstance(v, str) and v for v in status.values())


def test_unknown_backend_raises():
    with pytest.raises(BackendError, match="unknown selective-scan backend"):
        resolve_backend("fast", "cpu")


def test_cuda_backend_on_cpu_tensors_raises():
    with pytest.raises(BackendError, match="cuda"):
        resolve_backend("cuda", "cpu")


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba_ssm is installed")
def test_cuda_backend_without_mamba_ssm_raises():
    with pytest.raises(BackendError, match=r"pip install s5vh\[cuda\]"):
        resolve_backend("cuda", "cuda")
    assert available_backends()["cuda"].startswith("unavailable")


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba_ssm is installed")
def test_error_message_is_one_line():
    with pytest.raises(BackendError) as info:
        resolve_backend("cuda", "cuda:0")
    assert "\n" not in str(info.value)


def _mamba_ssm_gpu() -> bool:
    if not torch.cuda.is_available() or importlib.util.find_spec("mamba_ssm") is None:
        return False
    return available_backends()["cuda"].startswith("available")


@pytest.mark.cuda
@pytest.mark.skipif(not _mamba_ssm_gpu(), reason="needs a CUDA GPU and mamba_ssm")
@pytest.mark.parametrize("seqlen", [1, 25, 128])
def test_cuda_matches_mamba_ssm_and_cpu(seqlen):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    xs = _inputs(2, 64, 16, seqlen, has_d=True, has_z=True, has_bias=True, softplus=True)
    gpu = [x.detach().cuda().requires_grad_() if x is not None else None for x in xs]
    ours = selective_scan(*gpu, delta_softplus=True, backend="cuda")
    theirs = selective_scan_fn(*gpu[:5], gpu[5], z=gpu[6], delta_bias=gpu[7], delta_softplus=True)
    ref = selective_scan_ref(*xs, delta_softplus=True)
    # Upstream's own fp32 tolerance for the CUDA kernel against the reference.
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours.cpu(), ref.detach(), rtol=6e-4, atol=2e-3)
    gout = torch.randn_like(ref)
    g_gpu = torch.autograd.grad(ours, gpu, gout.cuda())
    g_ref = torch.autograd.grad(ref, xs, gout)
    for a, b in zip(g_gpu, g_ref, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize(
    "command,given,expected",
    [("encode", None, "PASSIVE"), ("train", None, "PASSIVE"), ("encode", "ACTIVE", "ACTIVE"),
     # extract's default case loads and measures the backbone runtimes (13 s): in the slow run
     pytest.param("extract", None, "PASSIVE", marks=pytest.mark.slow), ("extract", "ACTIVE", "ACTIVE")],
)
def test_openmp_wait_policy_passive_for_scan_commands(command, given, expected, tmp_path):
    """train and encode set OMP_WAIT_POLICY=PASSIVE before torch loads (spinning OpenMP workers starve the scan
    kernels' threads); so does extract (torch's spinning pool collapses on shared cores, docs/extract.md); a
    value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    # inputs that exist but are not artifacts: the command passes its argument checks (which come before any
    # heavy import), gets as far as loading torch, then fails reading them
    for name in ("model.pt", "feats.h5"):
        (tmp_path / name).write_text("not an artifact\n")
    args = [str(tmp_path / "model.pt")] if command == "encode" else []
    args.append(str(tmp_path / "feats.h5"))
    if command in ("encode", "extract"):
        args += ["-o", str(tmp_path / "out.h5")]
    code = (
        "import os, sys\n"
        "from s5vh_cli.cli import main\n"
        f"sys.argv = ['s5vh', {command!r}] + {args!r}\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('POLICY', os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert f"POLICY {expected}" in out.stdout.splitlines()[-1]


def test_prefer_passive_openmp_needs_torch_unloaded():
    code = (
        "import os\n"
        "import torch\n"
        "from s5vh_cli.runtime import prefer_passive_openmp\n"
        "print(prefer_passive_openmp(), os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "None"]
