"""Selective scan behind one call, with interchangeable backends.

Shapes follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``: u, delta, z (batch, d, L);
A (d, n); B, C (batch, n, L); D, delta_bias (d,); output (batch, d, L), fp32.

Backends: ``reference`` (sequential autograd loop), ``torch`` (pure PyTorch, hand-written backward, any
device), ``cpu`` (fused numba kernel), ``cuda`` (mamba-ssm's kernel). ``auto`` picks cuda for CUDA tensors
when mamba-ssm imports, else cpu when the numba kernel loads, else torch, and always says why.
"""

from __future__ import annotations

import functools

import torch

from ..errors import BackendError
from .reference import selective_scan_ref

BACKENDS = ("reference", "torch", "cpu", "cuda")

__all__ = [
    "BACKENDS",
    "available_backends",
    "check_backend_name",
    "resolve_backend",
    "resolved_backend",
    "selective_scan",
    "selective_scan_ref",
]


@functools.lru_cache(maxsize=1)
def _cpu_kernel_status() -> tuple[bool, str]:
    """Whether the fused numba kernel loads and runs (compiled once, then cached on disk)."""
    try:
        from . import cpu_kernel

        cpu_kernel.smoke_test()
    except Exception as exc:  # any failure (missing numba, LLVM error) must only disable this backend
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return True, "fused numba kernel"


@functools.lru_cache(maxsize=1)
def _cuda_status() -> tuple[bool, str]:
    try:
        from . import cuda as cuda_backend

        cuda_backend.load()
    except Exception as exc:  # ImportError, or RuntimeError from a mamba-ssm built without its CUDA scan
        msg = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"mamba_ssm does not import ({type(exc).__name__}: {msg})"
    if not torch.cuda.is_available():
        return False, "mamba_ssm imports but torch sees no CUDA GPU"
    return True, "mamba_ssm selective_scan_fn"


def available_backends() -> dict[str, str]:
    """Each backend with a one-line status, e.g. {'cpu': 'available (fused numba kernel)', ...}."""
    cpu_ok, cpu_why = _cpu_kernel_status()
    cuda_ok, cuda_why = _cuda_status()
    return {
        "reference": "available (sequential loop, autograd; slow)",
        "torch": "available (pure PyTorch, hand-written backward; any device)",
        "cpu": f"available ({cpu_why})" if cpu_ok else f"unavailable ({cpu_why})",
        "cuda": f"available ({cuda_why})"
        if cuda_ok
        else f"unavailable ({cuda_why}; `pip install s5vh[cuda]` on a CUDA machine)",
    }


def check_backend_name(name: str) -> str:
    """Normalise a backend name; an unknown one raises BackendError."""
    key = (name or "auto").strip().lower()
    if key != "auto" and key not in BACKENDS:
        raise BackendError(f"unknown selective-scan backend {name!r}; choose auto, {', '.join(BACKENDS)}")
    return key


def resolve_backend(name: str, device: torch.device | str = "cpu") -> tuple[str, str]:
    """Map a requested backend to the one that will run, with the reason, e.g. ('cpu', 'cpu (fused numba kernel)').

    Raises BackendError for an unknown backend or one that cannot run on ``device``. Never falls back silently:
    only ``auto`` chooses, and the reason says what it chose and why.
    """
    key = check_backend_name(name)
    dev = torch.device(device)
    if key == "auto":
        if dev.type == "cuda":
            ok, why = _cuda_status()
            if ok:
                return "cuda", f"cuda ({why})"
            return "torch", f"torch (cuda scan unavailable: {why})"
        if dev.type == "cpu":
            ok, why = _cpu_kernel_status()
            if ok:
                return "cpu", f"cpu ({why})"
            return "torch", f"torch (numba kernel unavailable: {why})"
        return "torch", f"torch (no fused kernel for device {dev.type})"
    if key == "cuda":
        if dev.type != "cuda":
            raise BackendError(
                f"selective-scan backend 'cuda' needs CUDA tensors but the device is {dev}; "
                "use --ssm-backend auto, cpu or torch"
            )
        ok, why = _cuda_status()
        if not ok:
            raise BackendError(
                f"selective-scan backend 'cuda' is unavailable: {why}; "
                "install it on a CUDA machine with `pip install s5vh[cuda]`"
            )
        return "cuda", f"cuda ({why})"
    if key == "cpu":
        if dev.type != "cpu":
            raise BackendError(
                f"selective-scan backend 'cpu' runs on CPU tensors but the device is {dev}; "
                "use --ssm-backend auto, cuda or torch"
            )
        ok, why = _cpu_kernel_status()
        if not ok:
            raise BackendError(
                f"selective-scan backend 'cpu' is unavailable ({why}); "
                "reinstall numba (`pip install 'numba>=0.59'`) or use --ssm-backend torch"
            )
        return "cpu", f"cpu ({why})"
    if key == "torch":
        return "torch", "torch (pure PyTorch, requested)"
    return "reference", "reference (sequential loop, requested)"


@functools.lru_cache(maxsize=64)
def resolved_backend(name: str, device: torch.device) -> str:
    """The backend name that ``selective_scan(..., backend=name)`` runs for tensors on ``device`` (cached)."""
    return resolve_backend(name, device)[0]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan with the semantics of ``selective_scan_ref``; see the module docstring for shapes."""
    name = resolved_backend((backend or "auto").strip().lower(), u.device)
    if name == "cpu":
        from .cpu_kernel import selective_scan_cpu

        return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "torch":
        from .torch_scan import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "cuda":
        from .cuda import selective_scan_cuda

        return selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
