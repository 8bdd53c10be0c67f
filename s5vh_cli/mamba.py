"""The Mamba block (same parameter names, shapes and initialisation as ``mamba_ssm.Mamba`` 2.x) and the
bidirectional block of S5VH.

A state dict moves between ``mamba_ssm.Mamba`` and :class:`Mamba` unchanged, so a model trained on a GPU with
mamba-ssm runs here on any backend of :mod:`s5vh_cli.ssm`, and the other way round.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .ssm import check_backend_name, resolved_backend, selective_scan

__all__ = ["BiMambaBlock", "DropPath", "Mamba", "set_ssm_backend", "shared_row_draws"]


class Mamba(nn.Module):
    """Selective-state-space block: in_proj -> causal depthwise conv -> SiLU -> selective scan (gated by z) -> out_proj.

    forward((batch, L, d_model)) -> (batch, L, d_model). ``backend`` picks the selective-scan backend
    ("auto", "cpu", "torch", "cuda", "reference"); it is resolved on the first call for the input's device and can
    be changed any time with :meth:`set_backend`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = check_backend_name(backend)

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(
            in_channels=self.d_inner,
            out_channels=self.d_inner,
            bias=conv_bias,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            **factory_kwargs,
        )
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # Special dt projection init, so that the variance is preserved at initialisation.
        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # dt bias such that softplus(bias) lies in [dt_min, dt_max], log-uniformly. Skipped on the meta device
        # (a shape check builds the model there): no values to set, and the meta kernel of clamp imports torch's
        # compiler, 1.2-1.6 s of CPU on every cold model load.
        if not self.dt_proj.bias.is_meta:
            dt = torch.exp(
                torch.rand(self.d_inner, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min))
                + math.log(dt_min)
            ).clamp(min=dt_init_floor)
            inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
            with torch.no_grad():
                self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D real initialisation: A = -(1..N) in every row, kept as log in fp32.
        A = (
            torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
            .repeat(self.d_inner, 1)
            .contiguous()
        )
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def set_backend(self, name: str) -> None:
        """Change the selective-scan backend (e.g. after loading a checkpoint trained elsewhere)."""
        self.backend = check_backend_name(name)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        seqlen = hidden_states.shape[1]
        e, r, n = self.d_inner, self.dt_rank, self.d_state
        # Channels-last throughout: the linear layers need no transposes, and the scan reads strided views.
        w_in, b_in = self.in_proj.weight, self.in_proj.bias
        if resolved_backend(self.backend, hidden_states.device) == "cpu":
            from .ssm.cpu_kernel import causal_conv1d_silu

            # Two products instead of one (same work) give contiguous x and z, so the fused kernels copy nothing.
            x = F.linear(hidden_states, w_in[:e], None if b_in is None else b_in[:e])  # (b, L, E)
            z = F.linear(hidden_states, w_in[e:], None if b_in is None else b_in[e:])
            x = causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias, e)
        else:
            xz = F.linear(hidden_states, w_in, b_in)  # (b, L, 2E)
            z = xz[..., e:]
            x = F.conv1d(
                xz[..., :e].transpose(1, 2),
                self.conv1d.weight,
                self.conv1d.bias,
                padding=self.d_conv - 1,
                groups=e,
            )
            x = F.silu(x[..., :seqlen]).transpose(1, 2)  # (b, L, E) view
        x_dbl = F.linear(x, self.x_proj.weight)  # (b, L, R + 2N)
        dt, b_ssm, c_ssm = x_dbl.split([r, n, n], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # (b, L, E); the bias is added inside the scan
        A = -torch.exp(self.A_log.float())
        y = selective_scan(
            x.transpose(1, 2),
            delta.transpose(1, 2),
            A,
            b_ssm.transpose(1, 2),
            c_ssm.transpose(1, 2),
            self.D.float(),
            z=z.transpose(1, 2),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.backend,
        )  # (b, E, L)
        return F.linear(y.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)


class DropPath(nn.Module):
    """Stochastic depth per sample: in training, zero a sample's residual branch with probability p, else scale
    it by 1/(1-p). Identity in eval mode or when p == 0."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        shared = _SHARED_ROWS.get()
        if shared is None:
            mask = x.new_empty(shape).bernoulli_(keep)
        else:
            rows, index = shared
            if len(index) != x.shape[0]:
                raise ValueError(f"DropPath: {x.shape[0]} rows in, {len(index)} expected by shared_row_draws")
            mask = x.new_empty((rows,) + shape[1:]).bernoulli_(keep)[index.to(x.device)]
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


_SHARED_ROWS: contextvars.ContextVar[tuple[int, torch.Tensor] | None] = contextvars.ContextVar(
    "s5vh_shared_rows", default=None)


@contextlib.contextmanager
def shared_row_draws(rows: int, index: torch.Tensor) -> Iterator[None]:
    """Inside, every DropPath draws its mask for ``rows`` rows (the whole batch) and keeps the rows ``index``
    (the ones this process holds). Processes that each hold a share of one batch, with equal random states,
    then drop exactly the samples one process holding the whole batch would drop."""
    token = _SHARED_ROWS.set((int(rows), index))
    try:
        yield
    finally:
        _SHARED_ROWS.reset(token)


class BiMambaBlock(nn.Module):
    """S5VH's bidirectional block: y = x + DropPath(mamba1(norm1(x)) + flip(mamba2(norm2(flip(x))))), flip over time.

    ``tie_directions=True`` reproduces the released code, where both directions share mamba1's weights:
    ``mamba2`` is then the very same module, so the state dict still carries ``mamba2.*`` keys (aliases).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        drop_path: float = 0.0,
        tie_directions: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.tie_directions = bool(tie_directions)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mamba1 = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        if self.tie_directions:
            self.mamba2 = self.mamba1
        else:
            self.mamba2 = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def set_backend(self, name: str) -> None:
        self.mamba1.set_backend(name)
        self.mamba2.set_backend(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm acts per time step, so norm2(flip(x)) == flip(norm2(x)).
        backward_in = self.norm2(x).flip(1)
        if self.tie_directions:
            # One call over both directions stacked along the batch: bigger matmuls, one scan.
            batch = x.shape[0]
            both = self.mamba1(torch.cat([self.norm1(x), backward_in], dim=0))
            mixed = both[:batch] + both[batch:].flip(1)
        else:
            mixed = self.mamba1(self.norm1(x)) + self.mamba2(backward_in).flip(1)
        return x + self.drop_path(mixed)


def set_ssm_backend(module: nn.Module, name: str) -> None:
    """Set the selective-scan backend of every Mamba inside ``module``."""
    name = check_backend_name(name)
    for sub in module.modules():
        if isinstance(sub, Mamba):
            sub.set_backend(name)
