"""mamba-ssm's CUDA selective scan behind our interface (import guarded; used only for CUDA tensors)."""

from __future__ import annotations

import torch

_SCAN_FN = None


def load():
    """Import ``mamba_ssm``'s ``selective_scan_fn``; raises ImportError/RuntimeError when it is not usable."""
    global _SCAN_FN
    if _SCAN_FN is None:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        _SCAN_FN = selective_scan_fn
    return _SCAN_FN


def selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`s5vh_cli.ssm.selective_scan`; CUDA tensors only.

    mamba-ssm's kernel wants the time axis contiguous (it copies otherwise) and fp32 A, D and delta_bias.
    """
    fn = load()
    return fn(
        u,
        delta,
        A.float(),
        B,
        C,
        None if D is None else D.float(),
        z=z,
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=bool(delta_softplus),
    )
