"""Fused selective scan for the CPU (numba), forward and backward, plus a fused causal depthwise conv + SiLU.

Everything is channels-last (batch, L, d), the layout the linear layers of a Mamba block produce, so the block
needs no transposes. A task owns 16 channels (one AVX-512 register of fp32) of one sample; its state
(d_state x 16) stays in L1 and the inner loops run over channels, vertically, with no horizontal reduction.
No (batch, L, d, d_state) tensor is ever materialised: the backward recomputes the states of one
(sample, 16 channels) block at a time. exp() dominates (26M per layer-direction at 25 frames, batch 128), so it is
a branch-free range-reduced polynomial that LLVM vectorises (max relative error 8e-8 over [-87, 88]); softplus,
sigmoid and SiLU are built on it, so the whole scan, gate included, runs inside the kernel.

Compiled code is cached on disk (numba ``cache=True``); numba falls back to its user-wide cache directory
(or ``NUMBA_CACHE_DIR``) when the package folder is read-only, so the compile cost (tens of seconds) is paid once.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# The workqueue layer's threads sleep between parallel regions; OpenMP's spin for a while and then starve the
# PyTorch operations that run between our kernels (measured: small ops 50-100x slower on 2 cores).
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# No nnan/ninf: inputs may legitimately overflow to inf in the reference too.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_BLOCK = 64  # channels per forward task

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_X_MAX = np.float32(88.3762626647949)
_X_MIN = np.float32(-87.33654475)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
# Minimax coefficients of (exp(r) - 1 - r) / r^2 on [-ln2/2, ln2/2] (cephes expf).
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32 as float32 (a plain bitcast that the loop vectoriser understands)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", fastmath=_FASTMATH, cache=True)
def _fexp(x):
    """exp(x) for float32 x, branch-free so that a loop over it vectorises; saturates outside [-87.3, 88.4]."""
    x = min(max(x, _X_MIN), _X_MAX)
    k = np.floor(x * _LOG2E + _HALF)
    r = x - k * _LN2_HI - k * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + _ONE
    scale = _bits_to_float32((np.int32(k) + np.int32(127)) << np.int32(23))
    return p * scale


_C3 = types.Array(types.float32, 3, "C")
_C2 = types.Array(types.float32, 2, "C")
_C1 = types.Array(types.float32, 1, "C")
_C4 = types.Array(types.float32, 4, "C")
_LANES = 16  # channels processed together: one AVX-512 register of fp32
_TWENTY = np.float32(20.0)
_TWO = np.float32(2.0)


@njit(inline="always", fastmath=_FASTMATH, cache=True)
def _softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), with log1p by its atanh series (s <= 1/3, 8 terms)."""
    e = _fexp(-abs(x))
    s = e / (_TWO + e)
    s2 = s * s
    p = np.float32(1.0 / 15.0)
    p = p * s2 + np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    p = p * s2 + _ONE
    sp = max(x, _ZERO) + _TWO * s * p
    return x if x > _TWENTY else sp  # torch's threshold, so results match F.softplus


@njit(inline="always", fastmath=_FASTMATH, cache=True)
def _sigmoid(x):
    return _ONE / (_ONE + _fexp(-x))


@njit(
    types.void(_C3, _C3, _C1, types.boolean, _C2, _C3, _C3, _C1, _C3, types.boolean, _C3),
    parallel=True,
    fastmath=_FASTMATH,
    cache=True,
    nogil=True,
)
def _forward(u, delta, bias, softplus, At, Bt, Ct, D, z, has_z, out):  # pragma: no cover - compiled
    """Channels-last: u, delta, z, out (batch, L, d); At (n, d); Bt, Ct (batch, L, n); bias, D (d,).

    out = (<h_t, C_t> + D u) * silu(z), h_t = exp(dt A) h_{t-1} + dt u B_t, dt = softplus(delta + bias) or not.
    Each task owns 16 channels of one sample, copied into zero-padded lane buffers so that every hot loop has the
    constant trip count 16 (one vector; a runtime count would leave LLVM's vector body unused)."""
    batch, seqlen, dim = u.shape
    dstate = At.shape[0]
    nblk = (dim + _LANES - 1) // _LANES
    for task in prange(batch * nblk):
        b = task // nblk
        d0 = (task % nblk) * _LANES
        nw = min(_LANES, dim - d0)
        h = np.zeros((dstate, _LANES), dtype=np.float32)
        ab = np.zeros((dstate, _LANES), dtype=np.float32)
        biasb = np.zeros(_LANES, dtype=np.float32)
        db_ = np.zeros(_LANES, dtype=np.float32)
        xb = np.zeros(_LANES, dtype=np.float32)
        ub = np.zeros(_LANES, dtype=np.float32)
        zb = np.zeros(_LANES, dtype=np.float32)
        dtv = np.empty(_LANES, dtype=np.float32)
        dtu = np.empty(_LANES, dtype=np.float32)
        acc = np.empty(_LANES, dtype=np.float32)
        for j in range(nw):
            biasb[j] = bias[d0 + j]
            db_[j] = D[d0 + j]
            for k in range(dstate):
                ab[k, j] = At[k, d0 + j]
        for t in range(seqlen):
            for j in range(nw):
                xb[j] = delta[b, t, d0 + j]
                ub[j] = u[b, t, d0 + j]
            if has_z:
                for j in range(nw):
                    zb[j] = z[b, t, d0 + j]
            for j in range(_LANES):
                x = xb[j] + biasb[j]
                if softplus:
                    x = _softplus(x)
                dtv[j] = x
                dtu[j] = x * ub[j]
                acc[j] = db_[j] * ub[j]
            for k in range(dstate):
                bk = Bt[b, t, k]
                ck = Ct[b, t, k]
                for j in range(_LANES):
                    hv = _fexp(dtv[j] * ab[k, j]) * h[k, j] + dtu[j] * bk
                    h[k, j] = hv
                    acc[j] += hv * ck
            if has_z:
                for j in range(_LANES):
                    acc[j] = acc[j] * zb[j] * _sigmoid(zb[j])
            for j in range(nw):
                out[b, t, d0 + j] = acc[j]


@njit(
    types.void(
        _C3,
        _C3,
        _C1,
        types.boolean,
        _C2,
        _C3,
        _C3,
        _C1,
        _C3,
        types.boolean,
        _C3,
        _C3,
        _C3,
        _C3,
        _C2,
        _C1,
        _C1,
        _C4,
        _C4,
    ),
    parallel=True,
    fastmath=_FASTMATH,
    cache=True,
    nogil=True,
)
def _backward(
    u, delta, bias, softplus, At, Bt, Ct, D, z, has_z, dout, du, ddelta, dz, dAt, dD, dbias, dB_part, dC_part
):  # pragma: no cover - compiled
    """All gradients, channels-last like :func:`_forward`. Tasks own groups of 16-channel blocks (so dA, dD and
    d(bias) have one writer); dB and dC are summed over a group's channels in per-lane buffers and written as one
    partial per group (the caller sums the groups). The states of one (sample, block) are recomputed into a
    (L + 1, n, 16) scratch, never stored for the whole batch. Hot loops run over 16 zero-padded lanes."""
    batch, seqlen, dim = u.shape
    dstate = At.shape[0]
    nblk = (dim + _LANES - 1) // _LANES
    ngroups = dB_part.shape[0]
    per = (nblk + ngroups - 1) // ngroups
    for grp in prange(ngroups):
        blk0 = min(nblk, grp * per)
        blk1 = min(nblk, blk0 + per)
        hs = np.zeros((seqlen + 1, dstate, _LANES), dtype=np.float32)  # hs[t + 1] = h_t, hs[0] = 0
        das = np.empty((seqlen, dstate, _LANES), dtype=np.float32)
        ys = np.empty((seqlen, _LANES), dtype=np.float32)
        db_l = np.empty((seqlen, dstate, _LANES), dtype=np.float32)
        dc_l = np.empty((seqlen, dstate, _LANES), dtype=np.float32)
        gh = np.empty((dstate, _LANES), dtype=np.float32)
        ab = np.zeros((dstate, _LANES), dtype=np.float32)
        da_loc = np.zeros((max(1, blk1 - blk0), dstate, _LANES), dtype=np.float32)
        dd_loc = np.zeros((max(1, blk1 - blk0), _LANES), dtype=np.float32)
        dbias_loc = np.zeros((max(1, blk1 - blk0), _LANES), dtype=np.float32)
        biasb = np.zeros(_LANES, dtype=np.float32)
        d_b = np.zeros(_LANES, dtype=np.float32)
        xb = np.zeros(_LANES, dtype=np.float32)
        ub = np.zeros(_LANES, dtype=np.float32)
        zb = np.zeros(_LANES, dtype=np.float32)
        gb = np.zeros(_LANES, dtype=np.float32)
        dtv = np.empty(_LANES, dtype=np.float32)
        dtu = np.empty(_LANES, dtype=np.float32)
        gy = np.empty(_LANES, dtype=np.float32)
        sb = np.empty(_LANES, dtype=np.float32)
        gdt = np.empty(_LANES, dtype=np.float32)
        o_du = np.empty(_LANES, dtype=np.float32)
        o_dd = np.empty(_LANES, dtype=np.float32)
        o_dz = np.empty(_LANES, dtype=np.float32)
        for b in range(batch):
            db_l[:] = _ZERO
            dc_l[:] = _ZERO
            for blk in range(blk0, blk1):
                d0 = blk * _LANES
                nw = min(_LANES, dim - d0)
                li = blk - blk0
                ab[:] = _ZERO
                biasb[:] = _ZERO
                d_b[:] = _ZERO
                # Padded lanes of a partial block must read zeros, not a previous full block's values.
                xb[:] = _ZERO
                ub[:] = _ZERO
                zb[:] = _ZERO
                gb[:] = _ZERO
                for j in range(nw):
                    biasb[j] = bias[d0 + j]
                    d_b[j] = D[d0 + j]
                    for k in range(dstate):
                        ab[k, j] = At[k, d0 + j]
                # Recompute the states and the pre-gate output of this (sample, block).
                for t in range(seqlen):
                    for j in range(nw):
                        xb[j] = delta[b, t, d0 + j]
                        ub[j] = u[b, t, d0 + j]
                    for j in range(_LANES):
                        x = xb[j] + biasb[j]
                        if softplus:
                            x = _softplus(x)
                        dtv[j] = x
                        dtu[j] = x * ub[j]
                        ys[t, j] = d_b[j] * ub[j]
                    for k in range(dstate):
                        bk = Bt[b, t, k]
                        ck = Ct[b, t, k]
                        for j in range(_LANES):
                            da = _fexp(dtv[j] * ab[k, j])
                            das[t, k, j] = da
                            hv = da * hs[t, k, j] + dtu[j] * bk
                            hs[t + 1, k, j] = hv
                            ys[t, j] += hv * ck
                # Adjoint recurrence, backwards in time.
                gh[:] = _ZERO
                for t in range(seqlen - 1, -1, -1):
                    for j in range(nw):
                        xb[j] = delta[b, t, d0 + j]
                        ub[j] = u[b, t, d0 + j]
                        gb[j] = dout[b, t, d0 + j]
                    if has_z:
                        for j in range(nw):
                            zb[j] = z[b, t, d0 + j]
                    for j in range(_LANES):
                        x = xb[j] + biasb[j]
                        if softplus:
                            x = _softplus(x)
                        dtv[j] = x
                        dtu[j] = x * ub[j]
                        g = gb[j]
                        if has_z:
                            zz = zb[j]
                            sz = _sigmoid(zz)
                            o_dz[j] = g * ys[t, j] * sz * (_ONE + zz * (_ONE - sz))
                            g = g * zz * sz
                        gy[j] = g
                        dd_loc[li, j] += g * ub[j]
                        sb[j] = _ZERO
                        gdt[j] = _ZERO
                    for k in range(dstate):
                        bk = Bt[b, t, k]
                        ck = Ct[b, t, k]
                        for j in range(_LANES):
                            ghk = gh[k, j] + gy[j] * ck
                            dc_l[t, k, j] += gy[j] * hs[t + 1, k, j]
                            gda = ghk * hs[t, k, j] * das[t, k, j]
                            gdt[j] += gda * ab[k, j]
                            da_loc[li, k, j] += gda * dtv[j]
                            sb[j] += ghk * bk
                            db_l[t, k, j] += ghk * dtu[j]
                            gh[k, j] = ghk * das[t, k, j]
                    for j in range(_LANES):
                        gd = gdt[j] + sb[j] * ub[j]
                        if softplus:
                            gd = gd * _sigmoid(xb[j] + biasb[j])
                        o_dd[j] = gd
                        dbias_loc[li, j] += gd
                        o_du[j] = gy[j] * d_b[j] + sb[j] * dtv[j]
                    for j in range(nw):
                        ddelta[b, t, d0 + j] = o_dd[j]
                        du[b, t, d0 + j] = o_du[j]
                    if has_z:
                        for j in range(nw):
                            dz[b, t, d0 + j] = o_dz[j]
            for t in range(seqlen):
                for k in range(dstate):
                    sb_ = _ZERO
                    sc_ = _ZERO
                    for j in range(_LANES):
                        sb_ += db_l[t, k, j]
                        sc_ += dc_l[t, k, j]
                    dB_part[grp, b, t, k] = sb_
                    dC_part[grp, b, t, k] = sc_
        for blk in range(blk0, blk1):
            d0 = blk * _LANES
            nw = min(_LANES, dim - d0)
            li = blk - blk0
            for j in range(nw):
                dD[d0 + j] = dd_loc[li, j]
                dbias[d0 + j] = dbias_loc[li, j]
                for k in range(dstate):
                    dAt[k, d0 + j] = da_loc[li, k, j]


def _sync_threads() -> None:
    # Follow torch's thread count so that one knob (torch.set_num_threads / --threads) governs both.
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """(batch, d, L) -> contiguous (batch, L, d); free when x is already a transposed channels-last tensor."""
    return x.detach().float().transpose(1, 2).contiguous()


def _vec(x: torch.Tensor | None, dim: int) -> torch.Tensor:
    return torch.zeros(dim) if x is None else x.detach().float().contiguous()


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        dim = u.shape[1]
        u_cl, delta_cl = _channels_last(u), _channels_last(delta)
        z_cl = _channels_last(z) if z is not None else u_cl
        at = A.detach().float().t().contiguous()
        bt, ct = _channels_last(B), _channels_last(C)
        out = torch.empty_like(u_cl)
        _sync_threads()
        _forward(
            u_cl.numpy(),
            delta_cl.numpy(),
            _vec(delta_bias, dim).numpy(),
            bool(delta_softplus),
            at.numpy(),
            bt.numpy(),
            ct.numpy(),
            _vec(D, dim).numpy(),
            z_cl.numpy(),
            z is not None,
            out.numpy(),
        )
        ctx.delta_softplus = bool(delta_softplus)
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        has_d, has_z, has_bias = ctx.has
        batch, dim, seqlen = u.shape
        dstate = A.shape[1]
        u_cl, delta_cl = _channels_last(u), _channels_last(delta)
        z_cl = _channels_last(z) if has_z else u_cl
        at = A.detach().float().t().contiguous()
        bt, ct = _channels_last(B), _channels_last(C)
        dout_cl = _channels_last(dout)
        du, ddelta = torch.empty_like(u_cl), torch.empty_like(u_cl)
        dz = torch.empty_like(u_cl) if has_z else u_cl
        dAt = torch.empty(dstate, dim)
        dD, dbias = torch.empty(dim), torch.empty(dim)
        nblk = (dim + _LANES - 1) // _LANES
        _sync_threads()
        # One group per running thread: every group pays a per-sample reduction of its dB/dC partials
        # (measured, 1 thread, b 128, L 25: 8 groups 118 ms, 1 group 103 ms).
        ngroups = max(1, min(nblk, numba.get_num_threads()))
        dB_part = torch.empty(ngroups, batch, seqlen, dstate)
        dC_part = torch.empty(ngroups, batch, seqlen, dstate)
        _backward(
            u_cl.numpy(),
            delta_cl.numpy(),
            _vec(delta_bias, dim).numpy(),
            ctx.delta_softplus,
            at.numpy(),
            bt.numpy(),
            ct.numpy(),
            _vec(D, dim).numpy(),
            z_cl.numpy(),
            has_z,
            dout_cl.numpy(),
            du.numpy(),
            ddelta.numpy(),
            dz.numpy(),
            dAt.numpy(),
            dD.numpy(),
            dbias.numpy(),
            dB_part.numpy(),
            dC_part.numpy(),
        )
        dB = dB_part.sum(0).transpose(1, 2) if ngroups > 1 else dB_part[0].transpose(1, 2)
        dC = dC_part.sum(0).transpose(1, 2) if ngroups > 1 else dC_part[0].transpose(1, 2)
        return (
            du.transpose(1, 2),
            ddelta.transpose(1, 2),
            dAt.t(),
            dB,
            dC,
            dD if has_d else None,
            dz.transpose(1, 2) if has_z else None,
            dbias if has_bias else None,
            None,
        )


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Same contract as :func:`s5vh_cli.ssm.selective_scan`; CPU tensors only."""
    if u.device.type != "cpu":
        from ..errors import BackendError

        raise BackendError(
            f"selective-scan backend 'cpu' got tensors on {u.device}; use 'torch' or 'cuda' there"
        )
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))


def smoke_test() -> None:
    """Run both kernels once on a tiny input (loads or compiles them) and check the forward against a loop."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 3, 4, generator=g, requires_grad=True)
    delta = torch.rand(1, 3, 4, generator=g)
    A = -torch.rand(3, 5, generator=g)
    B = torch.randn(1, 5, 4, generator=g)
    C = torch.randn(1, 5, 4, generator=g)
    with torch.enable_grad():
        out = selective_scan_cpu(u, delta, A, B, C)
        out.sum().backward()
    from .reference import selective_scan_ref

    ref = selective_scan_ref(u.detach(), delta, A, B, C)
    if not torch.allclose(out.detach(), ref, rtol=1e-4, atol=1e-5):
        raise RuntimeError("fused CPU scan disagrees with the reference on a smoke test")


@njit(
    types.void(_C3, types.intp, _C2, _C1, _C3, _C3), parallel=True, fastmath=_FASTMATH, cache=True, nogil=True
)
def _conv_forward(xz, offset, wt, bias, pre, out):  # pragma: no cover - compiled
    """Causal depthwise conv + SiLU, channels-last: x = xz[:, :, offset:offset + d]; wt (K, d); pre/out (b, L, d)."""
    batch, seqlen, _ = xz.shape
    ksize, dim = wt.shape
    for b in prange(batch):
        for t in range(seqlen):
            for j in range(dim):
                pre[b, t, j] = bias[j]
            for i in range(ksize):
                s = t - ksize + 1 + i
                if s >= 0:
                    for j in range(dim):
                        pre[b, t, j] += wt[i, j] * xz[b, s, offset + j]
            for j in range(dim):
                p = pre[b, t, j]
                out[b, t, j] = p * _sigmoid(p)


@njit(
    types.void(_C3, types.intp, _C2, _C3, _C3, _C3, _C3, _C2),
    parallel=True,
    fastmath=_FASTMATH,
    cache=True,
    nogil=True,
)
def _conv_backward(xz, offset, wt, pre, gout, dx, dw_part, db_part):  # pragma: no cover - compiled
    """Gradients of :func:`_conv_forward`; dw_part (b, K, d) and db_part (b, d) are per-sample partial sums."""
    batch, seqlen, _ = xz.shape
    ksize, dim = wt.shape
    for b in prange(batch):
        g = np.empty((seqlen, dim), dtype=np.float32)
        for t in range(seqlen):
            for j in range(dim):
                p = pre[b, t, j]
                sg = _sigmoid(p)
                g[t, j] = gout[b, t, j] * sg * (_ONE + p * (_ONE - sg))
        dw_part[b] = _ZERO
        db_part[b] = _ZERO
        for t in range(seqlen):
            for j in range(dim):
                dx[b, t, j] = _ZERO
                db_part[b, j] += g[t, j]
            for i in range(ksize):
                s = t + ksize - 1 - i  # output step that input t feeds through tap i
                if s < seqlen:
                    for j in range(dim):
                        dx[b, t, j] += wt[i, j] * g[s, j]
                        dw_part[b, i, j] += g[s, j] * xz[b, t, offset + j]


class _CausalConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz, weight, bias, dim):
        xz_c = xz.detach().float().contiguous()
        wt = weight.detach().float().reshape(dim, -1).t().contiguous()
        b = bias.detach().float().contiguous() if bias is not None else torch.zeros(dim)
        pre = torch.empty(xz.shape[0], xz.shape[1], dim)
        out = torch.empty_like(pre)
        _sync_threads()
        _conv_forward(xz_c.numpy(), 0, wt.numpy(), b.numpy(), pre.numpy(), out.numpy())
        ctx.dim = dim
        ctx.has_bias = bias is not None
        ctx.save_for_backward(xz_c, wt, pre)
        return out

    @staticmethod
    def backward(ctx, gout):
        xz_c, wt, pre = ctx.saved_tensors
        batch, seqlen, _ = xz_c.shape
        dim = ctx.dim
        dx = torch.empty(batch, seqlen, dim)
        dw_part = torch.empty(batch, wt.shape[0], dim)
        db_part = torch.empty(batch, dim)
        _sync_threads()
        _conv_backward(
            xz_c.numpy(),
            0,
            wt.numpy(),
            pre.numpy(),
            gout.float().contiguous().numpy(),
            dx.numpy(),
            dw_part.numpy(),
            db_part.numpy(),
        )
        # dx covers the first `dim` channels of xz; the z half gets its gradient from the scan.
        rest = xz_c.shape[2] - dim
        dxz = dx if rest == 0 else torch.cat([dx, dx.new_zeros(batch, seqlen, rest)], dim=2)
        dw = dw_part.sum(0).t().reshape(dim, 1, -1)
        return dxz, dw, db_part.sum(0) if ctx.has_bias else None, None


def causal_conv1d_silu(
    xz: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dim: int
) -> torch.Tensor:
    """silu(causal depthwise conv(xz[..., :dim])) for channels-last xz (batch, L, C >= dim) and an nn.Conv1d
    weight (dim, 1, K); returns a contiguous (batch, L, dim) tensor."""
    return _CausalConvSiLU.apply(xz, weight, bias, dim)
