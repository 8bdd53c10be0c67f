"""Fused selective scan for the CPU (numba), forward and backward, plus a fused causal depthwise conv + SiLU.

Everything is channels-last (batch, L, d), the layout the linear layers of a Mamba block produce, so the block
needs no transposes. A task owns 16 channels of one sample; its state (d_state x 16) stays in L1 and the inner
loops run over channels, vertically, with no horizontal reduction. No (batch, L, d, d_state) tensor is ever
materialised: the backward recomputes the states of one (sample, 16 channels) block at a time.

The 16 channels are one ``f32x16`` value, an LLVM ``<16 x float>`` vector (one AVX-512 register; LLVM splits it
into two AVX2 or four SSE registers on CPUs without AVX-512), operated on through small ``@intrinsic`` functions
and overloaded arithmetic operators. Writing the vectors out is what makes the kernels fast: LLVM's loop
vectoriser left the backward's adjoint loop and every per-step lane loop scalar (it cannot prove the scratch
arrays disjoint). exp() dominates (26M per layer-direction at 25 frames, batch 128), so it is a branch-free
range-reduced polynomial (max relative error 8e-8 over [-87, 88]); softplus, sigmoid and SiLU are built on it, so
the whole scan, gate included, runs inside the kernel.

Compiled code is cached on disk (numba ``cache=True``); numba falls back to its user-wide cache directory
(or ``NUMBA_CACHE_DIR``) when the package folder is read-only, so the compile cost (tens of seconds) is paid once.
"""

from __future__ import annotations

import operator
import os

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

# The workqueue layer's threads sleep between parallel regions; OpenMP's spin for a while and then starve the
# PyTorch operations that run between our kernels (measured: small ops 50-100x slower on 2 cores).
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# No nnan/ninf: inputs may legitimately overflow to inf in the reference too.
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

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


class _F32x16Type(types.Type):
    """Sixteen float32 lanes held as one LLVM vector value (one AVX-512 register; two AVX2 or four SSE registers
    elsewhere, which LLVM splits for itself)."""

    def __init__(self):
        super().__init__(name="f32x16")


_f32x16 = _F32x16Type()
_VEC_IR = ir.VectorType(ir.FloatType(), 16)
# Only "contract" (lets the backend fuse a multiply and an add into an FMA where the CPU has one); the lanes are
# independent, so no reassociation is needed or allowed.
_VEC_FLAGS = ("contract",)


@register_model(_F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC_IR)


def _f32_c_array(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"


def _lane_ptr(context, builder, aty, arr, idx):
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), _VEC_IR.as_pointer())


@intrinsic
def _vload(typingctx, arr, idx):
    """The 16 floats at flat element offset idx of a C-contiguous float32 array (no bounds check)."""
    if not _f32_c_array(arr) or not isinstance(idx, types.Integer):
        return None
    sig = _f32x16(arr, types.intp)

    def codegen(context, builder, signature, args):
        return builder.load(_lane_ptr(context, builder, signature.args[0], args[0], args[1]), align=4)

    return sig, codegen


@intrinsic
def _vstore(typingctx, arr, idx, vec):
    """Store 16 floats at flat element offset idx of a C-contiguous float32 array (no bounds check)."""
    if not _f32_c_array(arr) or not isinstance(idx, types.Integer) or vec != _f32x16:
        return None
    sig = types.none(arr, types.intp, _f32x16)

    def codegen(context, builder, signature, args):
        builder.store(args[2], _lane_ptr(context, builder, signature.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _vsplat(typingctx, x):
    """A float32 broadcast to 16 lanes."""
    sig = _f32x16(types.float32)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        v = builder.insert_element(ir.Constant(_VEC_IR, ir.Undefined), args[0], ir.Constant(i32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, 16), [0] * 16))

    return sig, codegen


def _vec_binop(opname):
    @intrinsic
    def op(typingctx, a, b):
        if a != _f32x16 or b != _f32x16:
            return None
        sig = _f32x16(_f32x16, _f32x16)

        def codegen(context, builder, signature, args):
            return getattr(builder, opname)(args[0], args[1], flags=_VEC_FLAGS)

        return sig, codegen

    return op


_vadd = _vec_binop("fadd")
_vsub = _vec_binop("fsub")
_vmul = _vec_binop("fmul")
_vdiv = _vec_binop("fdiv")


def _vec_unary(llvm_name):
    """A lane-wise LLVM intrinsic (llvm.fabs), one instruction per register."""

    @intrinsic
    def op(typingctx, a):
        if a != _f32x16:
            return None
        sig = _f32x16(_f32x16)

        def codegen(context, builder, signature, args):
            fnty = ir.FunctionType(_VEC_IR, [_VEC_IR])
            return builder.call(cgutils.get_or_insert_function(builder.module, fnty, llvm_name), args)

        return sig, codegen

    return op


_vabs = _vec_unary("llvm.fabs.v16f32")
_FLOOR_NATIVE: dict[int, bool] = {}


def _floor_is_native(context) -> bool:
    """Whether the CPU numba compiles for (NUMBA_CPU_NAME may name an older one than the host) rounds a vector in
    one instruction (SSE4.1 and later); asked of LLVM itself, once per target machine."""
    try:
        tm = context.codegen()._tm
    except AttributeError:  # a numba without this attribute: assume a CPU from the last 15 years
        return True
    if id(tm) not in _FLOOR_NATIVE:
        from llvmlite import binding

        mod = ir.Module()
        fnty = ir.FunctionType(_VEC_IR, [_VEC_IR])
        fn = ir.Function(mod, fnty, "floor16")
        b = ir.IRBuilder(fn.append_basic_block())
        b.ret(b.call(ir.Function(mod, fnty, "llvm.floor.v16f32"), fn.args))
        llmod = binding.parse_assembly(str(mod))
        llmod.triple = tm.triple
        _FLOOR_NATIVE[id(tm)] = "floorf" not in tm.emit_assembly(llmod)
    return _FLOOR_NATIVE[id(tm)]


@intrinsic
def _vfloor(typingctx, a):
    """floor per lane, for |a| < 2**31 (the exp's range-reduction). Without SSE4.1, llvm.floor would be one libm
    call per lane (the kernel 2.5x slower), so there it is built from a truncating conversion instead: trunc(a),
    minus 1 where that exceeds a. Both are exact."""
    if a != _f32x16:
        return None
    sig = _f32x16(_f32x16)

    def codegen(context, builder, signature, args):
        if _floor_is_native(context):
            fnty = ir.FunctionType(_VEC_IR, [_VEC_IR])
            return builder.call(
                cgutils.get_or_insert_function(builder.module, fnty, "llvm.floor.v16f32"), args
            )
        ivec = ir.VectorType(ir.IntType(32), 16)
        t = builder.sitofp(builder.fptosi(args[0], ivec), _VEC_IR)
        below = builder.fsub(t, ir.Constant(_VEC_IR, [1.0] * 16))
        return builder.select(builder.fcmp_ordered(">", t, args[0]), below, t)

    return sig, codegen


def _vec_pick(cmp):
    """select(b cmp a, b, a) per lane: numba's scalar max(a, b) for cmp '>' and min(a, b) for '<' (a NaN in a
    propagates, as there)."""

    @intrinsic
    def op(typingctx, a, b):
        if a != _f32x16 or b != _f32x16:
            return None
        sig = _f32x16(_f32x16, _f32x16)

        def codegen(context, builder, signature, args):
            return builder.select(builder.fcmp_ordered(cmp, args[1], args[0]), args[1], args[0])

        return sig, codegen

    return op


_vmax = _vec_pick(">")
_vmin = _vec_pick("<")


@intrinsic
def _vwhere_gt(typingctx, a, b, x, y):
    """Per lane: x if a > b else y."""
    if not all(v == _f32x16 for v in (a, b, x, y)):
        return None
    sig = _f32x16(_f32x16, _f32x16, _f32x16, _f32x16)

    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[2], args[3])

    return sig, codegen


@intrinsic
def _vneg(typingctx, a):
    if a != _f32x16:
        return None
    sig = _f32x16(_f32x16)

    def codegen(context, builder, signature, args):
        return builder.fneg(args[0])

    return sig, codegen


@intrinsic
def _vpow2i(typingctx, k):
    """2**k per lane for integral k in [-126, 127]: the exponent field built directly."""
    if k != _f32x16:
        return None
    sig = _f32x16(_f32x16)

    def codegen(context, builder, signature, args):
        ivec = ir.VectorType(ir.IntType(32), 16)
        ki = builder.fptosi(args[0], ivec)
        ki = builder.add(ki, ir.Constant(ivec, [127] * 16))
        ki = builder.shl(ki, ir.Constant(ivec, [23] * 16))
        return builder.bitcast(ki, _VEC_IR)

    return sig, codegen


@intrinsic
def _vsum(typingctx, a):
    """Sum of the 16 lanes, pairwise (halves added, then quarters...), so it vectorises as shuffles."""
    if a != _f32x16:
        return None
    sig = types.float32(_f32x16)

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        v = args[0]
        width = 16
        while width > 1:
            width //= 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width), list(range(width))))
            hi = builder.shuffle_vector(
                v, v, ir.Constant(ir.VectorType(i32, width), list(range(width, 2 * width)))
            )
            v = builder.fadd(lo, hi, flags=_VEC_FLAGS)
        return builder.extract_element(v, ir.Constant(i32, 0))

    return sig, codegen


def _vec_operator(op, vec_fn):
    """Overload a binary operator for f32x16 with f32x16 or a float (broadcast as float32)."""

    @overload(op)
    def ol(a, b):
        if a == _f32x16 and b == _f32x16:
            return lambda a, b: vec_fn(a, b)
        if a == _f32x16 and isinstance(b, types.Float):
            return lambda a, b: vec_fn(a, _vsplat(np.float32(b)))
        if isinstance(a, types.Float) and b == _f32x16:
            return lambda a, b: vec_fn(_vsplat(np.float32(a)), b)
        return None

    return ol


_vec_operator(operator.add, _vadd)
_vec_operator(operator.sub, _vsub)
_vec_operator(operator.mul, _vmul)
_vec_operator(operator.truediv, _vdiv)


@overload(operator.neg)
def _ol_neg(a):
    if a == _f32x16:
        return lambda a: _vneg(a)
    return None


@njit(inline="always", fastmath=_FASTMATH, cache=True)
def _fexp(x):
    """exp(x) for float32 x, branch-free; saturates outside [-87.3, 88.4]. The scalar twin of :func:`_vexp`, for
    the conv's channels past the last multiple of 16."""
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
def _sigmoid(x):
    return _ONE / (_ONE + _fexp(-x))


@njit(inline="always", fastmath=_FASTMATH, cache=True)
def _vexp(x):
    """:func:`_fexp` on 16 lanes, operation for operation."""
    x = _vmin(_vmax(x, _vsplat(_X_MIN)), _vsplat(_X_MAX))
    k = _vfloor(x * _LOG2E + _HALF)
    r = x - k * _LN2_HI - k * _LN2_LO
    p = ((((r * _P0 + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    p = p * r * r + r + _ONE
    return p * _vpow2i(k)


@njit(inline="always", fastmath=_FASTMATH, cache=True)
def _vsoftplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)) on 16 lanes, with log1p by its atanh series (s <= 1/3,
    8 terms)."""
    e = _vexp(-_vabs(x))
    s = e / (_TWO + e)
    s2 = s * s
    p = s2 * np.float32(1.0 / 15.0) + np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    p = p * s2 + _ONE
    sp = _vmax(x, _vsplat(_ZERO)) + _TWO * s * p
    return _vwhere_gt(x, _vsplat(_TWENTY), x, sp)


@njit(inline="always", fastmath=_FASTMATH, cache=True)
def _vsigmoid(x):
    return _ONE / (_ONE + _vexp(-x))


@njit(inline="always", cache=True)
def _load_lanes(a, b, t, d0, nw, buf):
    """a[b, t, d0:d0 + 16] of a C-contiguous (batch, L, d) array; a partial block (nw < 16) goes through buf
    and reads zeros in its padded lanes."""
    if nw == _LANES:
        return _vload(a, (b * a.shape[1] + t) * a.shape[2] + d0)
    for j in range(nw):
        buf[j] = a[b, t, d0 + j]
    for j in range(nw, _LANES):
        buf[j] = _ZERO
    return _vload(buf, 0)


@njit(inline="always", cache=True)
def _store_lanes(a, b, t, d0, nw, buf, v):
    """a[b, t, d0:d0 + nw] = the first nw lanes of v."""
    if nw == _LANES:
        _vstore(a, (b * a.shape[1] + t) * a.shape[2] + d0, v)
    else:
        _vstore(buf, 0, v)
        for j in range(nw):
            a[b, t, d0 + j] = buf[j]


@njit(
    types.void(_C3, _C3, _C1, types.boolean, _C2, _C3, _C3, _C1, _C3, types.boolean, _C3, types.intp),
    parallel=True,
    fastmath=_FASTMATH,
    cache=True,
    nogil=True,
)
def _forward(u, delta, bias, softplus, At, Bt, Ct, D, z, has_z, out, nchunks):  # pragma: no cover - compiled
    """Channels-last: u, delta, z, out (batch, L, d); At (n, d); Bt, Ct (batch, L, n); bias, D (d,).

    out = (<h_t, C_t> + D u) * silu(z), h_t = exp(dt A) h_{t-1} + dt u B_t, dt = softplus(delta + bias) or not.
    Each task owns 16 channels of one sample, held as one 16-lane vector (zero-padded for a partial block);
    its state is a (n, 16) array in L1."""
    batch, seqlen, dim = u.shape
    dstate = At.shape[0]
    nblk = (dim + _LANES - 1) // _LANES
    ntask = batch * nblk
    per = (ntask + nchunks - 1) // nchunks
    for chunk in prange(nchunks):
        # Scratch allocated once per chunk, and a block's A / bias / D lanes gathered once per run of its
        # samples (tasks are block-major): per task, both cost about as much as the scan of 25 steps.
        h = np.empty((dstate, _LANES), dtype=np.float32)
        ab = np.zeros((dstate, _LANES), dtype=np.float32)
        biasb = np.zeros(_LANES, dtype=np.float32)
        d_b = np.zeros(_LANES, dtype=np.float32)
        buf = np.zeros(_LANES, dtype=np.float32)
        cur = -1
        for task in range(chunk * per, min(ntask, (chunk + 1) * per)):
            blk = task // batch
            b = task % batch
            d0 = blk * _LANES
            nw = min(_LANES, dim - d0)
            if blk != cur:
                cur = blk
                # Padded lanes of a partial block must read zeros, not a previous full block's values.
                ab[:] = _ZERO
                biasb[:] = _ZERO
                d_b[:] = _ZERO
                for j in range(nw):
                    biasb[j] = bias[d0 + j]
                    d_b[j] = D[d0 + j]
                    for k in range(dstate):
                        ab[k, j] = At[k, d0 + j]
            h[:] = _ZERO
            bias_v = _vload(biasb, 0)
            d_v = _vload(d_b, 0)
            for t in range(seqlen):
                dt = _load_lanes(delta, b, t, d0, nw, buf) + bias_v
                if softplus:
                    dt = _vsoftplus(dt)
                uv = _load_lanes(u, b, t, d0, nw, buf)
                dtu = dt * uv
                acc = d_v * uv
                for k in range(dstate):
                    o = k * _LANES
                    hv = _vexp(dt * _vload(ab, o)) * _vload(h, o) + dtu * Bt[b, t, k]
                    _vstore(h, o, hv)
                    acc = acc + hv * Ct[b, t, k]
                if has_z:
                    zv = _load_lanes(z, b, t, d0, nw, buf)
                    acc = acc * zv * _vsigmoid(zv)
                _store_lanes(out, b, t, d0, nw, buf, acc)


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
    (L + 1, n, 16) scratch, never stored for the whole batch. Flat offset of row (t, k) of a (., n, 16) scratch:
    (t * n + k) * 16."""
    batch, seqlen, dim = u.shape
    dstate = At.shape[0]
    nblk = (dim + _LANES - 1) // _LANES
    ngroups = dB_part.shape[0]
    per = (nblk + ngroups - 1) // ngroups
    row = dstate * _LANES
    for grp in prange(ngroups):
        blk0 = min(nblk, grp * per)
        blk1 = min(nblk, blk0 + per)
        hs = np.zeros((seqlen + 1, dstate, _LANES), dtype=np.float32)  # hs[t + 1] = h_t, hs[0] = 0
        das = np.empty((seqlen, dstate, _LANES), dtype=np.float32)
        ys = np.empty((seqlen, _LANES), dtype=np.float32)  # pre-gate output
        dts = np.empty((seqlen, _LANES), dtype=np.float32)  # dt after softplus
        db_l = np.empty((seqlen, dstate, _LANES), dtype=np.float32)
        dc_l = np.empty((seqlen, dstate, _LANES), dtype=np.float32)
        gh = np.empty((dstate, _LANES), dtype=np.float32)
        ab = np.zeros((dstate, _LANES), dtype=np.float32)
        da_loc = np.zeros((max(1, blk1 - blk0), dstate, _LANES), dtype=np.float32)
        dd_loc = np.zeros((max(1, blk1 - blk0), _LANES), dtype=np.float32)
        dbias_loc = np.zeros((max(1, blk1 - blk0), _LANES), dtype=np.float32)
        biasb = np.zeros(_LANES, dtype=np.float32)
        d_b = np.zeros(_LANES, dtype=np.float32)
        buf = np.zeros(_LANES, dtype=np.float32)
        for b in range(batch):
            db_l[:] = _ZERO
            dc_l[:] = _ZERO
            for blk in range(blk0, blk1):
                d0 = blk * _LANES
                nw = min(_LANES, dim - d0)
                li = blk - blk0
                # Padded lanes of a partial block must read zeros, not a previous full block's values.
                ab[:] = _ZERO
                biasb[:] = _ZERO
                d_b[:] = _ZERO
                for j in range(nw):
                    biasb[j] = bias[d0 + j]
                    d_b[j] = D[d0 + j]
                    for k in range(dstate):
                        ab[k, j] = At[k, d0 + j]
                bias_v = _vload(biasb, 0)
                d_v = _vload(d_b, 0)
                # Recompute the states and the pre-gate output of this (sample, block).
                for t in range(seqlen):
                    dt = _load_lanes(delta, b, t, d0, nw, buf) + bias_v
                    if softplus:
                        dt = _vsoftplus(dt)
                    _vstore(dts, t * _LANES, dt)
                    uv = _load_lanes(u, b, t, d0, nw, buf)
                    dtu = dt * uv
                    y = d_v * uv
                    for k in range(dstate):
                        o = t * row + k * _LANES
                        da = _vexp(dt * _vload(ab, k * _LANES))
                        _vstore(das, o, da)
                        hv = da * _vload(hs, o) + dtu * Bt[b, t, k]
                        _vstore(hs, o + row, hv)
                        y = y + hv * Ct[b, t, k]
                    _vstore(ys, t * _LANES, y)
                # Adjoint recurrence, backwards in time, in explicit 16-lane vectors: LLVM leaves this loop
                # scalar (it cannot prove the scratch arrays disjoint).
                gh[:] = _ZERO
                dd_v = _vload(dd_loc, li * _LANES)
                dbias_v = _vload(dbias_loc, li * _LANES)
                for t in range(seqlen - 1, -1, -1):
                    uv = _load_lanes(u, b, t, d0, nw, buf)
                    gy = _load_lanes(dout, b, t, d0, nw, buf)
                    dt = _vload(dts, t * _LANES)
                    dtu = dt * uv
                    if has_z:
                        zv = _load_lanes(z, b, t, d0, nw, buf)
                        sz = _vsigmoid(zv)
                        gz = gy * _vload(ys, t * _LANES) * sz * (_ONE + zv * (_ONE - sz))
                        _store_lanes(dz, b, t, d0, nw, buf, gz)
                        gy = gy * zv * sz
                    dd_v = dd_v + gy * uv
                    sb = _vsplat(_ZERO)
                    gdt = _vsplat(_ZERO)
                    for k in range(dstate):
                        o_k = k * _LANES
                        o = t * row + o_k
                        da = _vload(das, o)
                        ghk = _vload(gh, o_k) + gy * Ct[b, t, k]
                        _vstore(dc_l, o, _vload(dc_l, o) + gy * _vload(hs, o + row))
                        gda = ghk * _vload(hs, o) * da
                        gdt = gdt + gda * _vload(ab, o_k)
                        o_l = li * row + o_k
                        _vstore(da_loc, o_l, _vload(da_loc, o_l) + gda * dt)
                        sb = sb + ghk * Bt[b, t, k]
                        _vstore(db_l, o, _vload(db_l, o) + ghk * dtu)
                        _vstore(gh, o_k, ghk * da)
                    gd = gdt + sb * uv
                    if softplus:
                        gd = gd * _vsigmoid(_load_lanes(delta, b, t, d0, nw, buf) + bias_v)
                    _store_lanes(ddelta, b, t, d0, nw, buf, gd)
                    dbias_v = dbias_v + gd
                    _store_lanes(du, b, t, d0, nw, buf, gy * d_v + sb * dt)
                _vstore(dd_loc, li * _LANES, dd_v)
                _vstore(dbias_loc, li * _LANES, dbias_v)
            for t in range(seqlen):
                for k in range(dstate):
                    o = t * row + k * _LANES
                    dB_part[grp, b, t, k] = _vsum(_vload(db_l, o))
                    dC_part[grp, b, t, k] = _vsum(_vload(dc_l, o))
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
            numba.get_num_threads(),  # one chunk of tasks per running thread
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
    """Causal depthwise conv + SiLU, channels-last: x = xz[:, :, offset:offset + d]; wt (K, d); pre/out (b, L, d).
    16-lane vectors over channels, the channels past the last multiple of 16 one by one."""
    batch, seqlen, chans = xz.shape
    ksize, dim = wt.shape
    nvec = dim // _LANES * _LANES
    for b in prange(batch):
        for t in range(seqlen):
            o_out = (b * seqlen + t) * dim
            for j0 in range(0, nvec, _LANES):
                acc = _vload(bias, j0)
                for i in range(ksize):
                    s = t - ksize + 1 + i
                    if s >= 0:
                        acc = acc + _vload(wt, i * dim + j0) * _vload(
                            xz, (b * seqlen + s) * chans + offset + j0
                        )
                _vstore(pre, o_out + j0, acc)
                _vstore(out, o_out + j0, acc * _vsigmoid(acc))
            for j in range(nvec, dim):
                p = bias[j]
                for i in range(ksize):
                    s = t - ksize + 1 + i
                    if s >= 0:
                        p += wt[i, j] * xz[b, s, offset + j]
                pre[b, t, j] = p
                out[b, t, j] = p * _sigmoid(p)


@njit(
    types.void(_C3, types.intp, _C2, _C3, _C3, _C3, _C3, _C2),
    parallel=True,
    fastmath=_FASTMATH,
    cache=True,
    nogil=True,
)
def _conv_backward(xz, offset, wt, pre, gout, dx, dw_part, db_part):  # pragma: no cover - compiled
    """Gradients of :func:`_conv_forward`; dw_part (b, K, d) and db_part (b, d) are per-sample partial sums.
    Vectorised over channels like the forward."""
    batch, seqlen, chans = xz.shape
    ksize, dim = wt.shape
    nvec = dim // _LANES * _LANES
    for b in prange(batch):
        g = np.empty((seqlen, dim), dtype=np.float32)  # gradient before the SiLU
        for t in range(seqlen):
            o_in = (b * seqlen + t) * dim
            for j0 in range(0, nvec, _LANES):
                p = _vload(pre, o_in + j0)
                sg = _vsigmoid(p)
                _vstore(g, t * dim + j0, _vload(gout, o_in + j0) * sg * (_ONE + p * (_ONE - sg)))
            for j in range(nvec, dim):
                p = pre[b, t, j]
                sg = _sigmoid(p)
                g[t, j] = gout[b, t, j] * sg * (_ONE + p * (_ONE - sg))
        dw_part[b] = _ZERO
        db_part[b] = _ZERO
        o_db = b * dim
        for t in range(seqlen):
            o_x = (b * seqlen + t) * chans + offset
            o_dx = (b * seqlen + t) * dim
            for j0 in range(0, nvec, _LANES):
                gt = _vload(g, t * dim + j0)
                _vstore(db_part, o_db + j0, _vload(db_part, o_db + j0) + gt)
                xv = _vload(xz, o_x + j0)
                acc = _vsplat(_ZERO)
                for i in range(ksize):
                    s = t + ksize - 1 - i  # output step that input t feeds through tap i
                    if s < seqlen:
                        gs = _vload(g, s * dim + j0)
                        acc = acc + _vload(wt, i * dim + j0) * gs
                        o_dw = (b * ksize + i) * dim + j0
                        _vstore(dw_part, o_dw, _vload(dw_part, o_dw) + gs * xv)
                _vstore(dx, o_dx + j0, acc)
            for j in range(nvec, dim):
                db_part[b, j] += g[t, j]
                acc_s = _ZERO
                for i in range(ksize):
                    s = t + ksize - 1 - i
                    if s < seqlen:
                        acc_s += wt[i, j] * g[s, j]
                        dw_part[b, i, j] += g[s, j] * xz[b, t, offset + j]
                dx[b, t, j] = acc_s


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
