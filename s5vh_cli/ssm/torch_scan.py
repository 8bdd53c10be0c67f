"""Selective scan in pure PyTorch with a hand-written backward (any device).

Time is processed in chunks: the forward keeps only the state at each chunk boundary; the backward recomputes a
chunk's states from its boundary and runs the adjoint recurrence backwards, so memory stays
O(batch * d * (L / chunk + chunk) * n) and no per-step autograd graph is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of one (batch, d, chunk, n) work tensor; bounds the memory of a chunk to a few tens of MB.
_CHUNK_ELEMENTS = 1 << 22


def _chunk_len(batch: int, dim: int, dstate: int, seqlen: int) -> int:
    return max(1, min(seqlen, _CHUNK_ELEMENTS // max(1, batch * dim * dstate)))


def _effective_delta(delta, delta_bias, delta_softplus):
    d = delta if delta_bias is None else delta + delta_bias[:, None]
    return F.softplus(d) if delta_softplus else d


class _SelectiveScanTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        batch, dim, seqlen = u.shape
        dstate = A.shape[1]
        dt = _effective_delta(delta, delta_bias, delta_softplus)
        dtu = dt * u
        chunk = _chunk_len(batch, dim, dstate, seqlen)
        h = u.new_zeros(batch, dim, dstate)
        boundaries = []
        y = torch.empty_like(u, memory_format=torch.contiguous_format)
        for t0 in range(0, seqlen, chunk):
            t1 = min(seqlen, t0 + chunk)
            boundaries.append(h)
            d_a = torch.exp(dt[:, :, t0:t1, None] * A[:, None, :])  # (b, d, c, n)
            bx = dtu[:, :, t0:t1, None] * B[:, None, :, t0:t1].transpose(2, 3)
            hs = torch.empty_like(d_a)
            for i in range(t1 - t0):
                h = torch.addcmul(bx[:, :, i], d_a[:, :, i], h)
                hs[:, :, i] = h
            y[:, :, t0:t1] = torch.einsum("bdcn,bnc->bdc", hs, C[:, :, t0:t1])
        if D is not None:
            y = y + u * D[:, None]
        out = y if z is None else y * F.silu(z)
        ctx.delta_softplus = delta_softplus
        ctx.chunk = chunk
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, torch.stack(boundaries))
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, boundaries = ctx.saved_tensors
        has_d, has_z, has_bias = ctx.has
        batch, dim, seqlen = u.shape
        chunk = ctx.chunk
        dt = _effective_delta(delta, delta_bias, ctx.delta_softplus)
        dtu = dt * u
        if has_z:
            # y (before the gate) is needed for dz; recompute it chunk by chunk below.
            sz = torch.sigmoid(z)
            gate = z * sz
        du = torch.zeros_like(u)
        ddt = torch.zeros_like(u)
        dA = torch.zeros_like(A)
        dB = torch.zeros_like(B)
        dC = torch.zeros_like(C)
        dz = torch.zeros_like(z) if has_z else None
        dD = torch.zeros_like(D) if has_d else None
        carry = u.new_zeros(batch, dim, A.shape[1])  # dA_{t+1} * gh_{t+1} flowing into step t
        starts = list(range(0, seqlen, chunk))
        for k in reversed(range(len(starts))):
            t0 = starts[k]
            t1 = min(seqlen, t0 + chunk)
            c = t1 - t0
            d_a = torch.exp(dt[:, :, t0:t1, None] * A[:, None, :])
            b_t = B[:, :, t0:t1].transpose(1, 2)  # (b, c, n)
            c_t = C[:, :, t0:t1].transpose(1, 2)
            bx = dtu[:, :, t0:t1, None] * b_t[:, None]
            hs = torch.empty_like(d_a)
            h = boundaries[k]
            for i in range(c):
                h = torch.addcmul(bx[:, :, i], d_a[:, :, i], h)
                hs[:, :, i] = h
            g = dout[:, :, t0:t1]
            if has_z:
                y = torch.einsum("bdcn,bcn->bdc", hs, c_t)
                if has_d:
                    y = y + u[:, :, t0:t1] * D[:, None]
                zc, szc = z[:, :, t0:t1], sz[:, :, t0:t1]
                dz[:, :, t0:t1] = g * y * szc * (1 + zc * (1 - szc))
                g = g * gate[:, :, t0:t1]
            if has_d:
                dD += (g * u[:, :, t0:t1]).sum(dim=(0, 2))
                du[:, :, t0:t1] += g * D[:, None]
            dC[:, :, t0:t1] = torch.einsum("bdc,bdcn->bnc", g, hs)
            gh = torch.empty_like(d_a)
            for i in reversed(range(c)):
                carry = torch.addcmul(carry, g[:, :, i, None], c_t[:, None, i])
                gh[:, :, i] = carry
                carry = carry * d_a[:, :, i]
            h_prev = torch.cat([boundaries[k][:, :, None], hs[:, :, :-1]], dim=2)
            g_da = gh * h_prev * d_a  # gradient w.r.t. (dt * A), per element
            dA += torch.einsum("bdcn,bdc->dn", g_da, dt[:, :, t0:t1])
            gh_b = torch.einsum("bdcn,bcn->bdc", gh, b_t)
            ddt[:, :, t0:t1] = torch.einsum("bdcn,dn->bdc", g_da, A) + gh_b * u[:, :, t0:t1]
            du[:, :, t0:t1] += gh_b * dt[:, :, t0:t1]
            dB[:, :, t0:t1] = torch.einsum("bdcn,bdc->bnc", gh, dtu[:, :, t0:t1])
        if ctx.delta_softplus:
            pre = delta if delta_bias is None else delta + delta_bias[:, None]
            ddt = ddt * torch.sigmoid(pre)
        ddelta_bias = ddt.sum(dim=(0, 2)) if has_bias else None
        return du, ddt, dA, dB, dC, dD, dz, ddelta_bias, None


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Same contract as :func:`s5vh_cli.ssm.selective_scan` (fp32)."""
    return _SelectiveScanTorch.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
