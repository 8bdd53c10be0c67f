"""The S5VH model: a bidirectional-Mamba frame encoder, a straight-through hash layer, a masked-frame decoder
and the centre-alignment head. The maths follows the paper; every departure of the released code is one
``ModelConfig`` switch (see docs/paper-vs-released.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .config import ModelConfig
from .errors import MismatchError


def sinusoidal_table(n: int, d: int) -> Tensor:
    """Fixed positional table [n, d]: P[t, j] = sin(t / 10000^(2*floor(j/2)/d)) for even j, cos for odd j."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(d)
    angle = pos / np.power(10000.0, 2 * (j // 2) / d)[None, :]
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.from_numpy(table).float()


def stretch_of(positions: Tensor, frames: int, k: int) -> Tensor:
    """Which of ``k`` consecutive, equal stretches of a ``frames``-long video each frame position falls in."""
    return torch.div(positions * k, frames, rounding_mode="floor").clamp_(0, k - 1)


def pool_codes(codes: Tensor, positions: Tensor | None, frames: int, k: int) -> Tensor:
    """Video code [B, L] from frame codes [B, V, L] at frame ``positions`` [B, V] (all frames in order when None).

    k = 1: the mean over frames (the paper). k > 1: bit block s (L/k bits) is the mean of that block over the
    frames of the s-th stretch of time only; a stretch with no frame in view gives 0 there.
    """
    if k == 1:
        return codes.mean(dim=1)
    b, v, L = codes.shape
    if positions is None:
        positions = torch.arange(v, device=codes.device).expand(b, v)
    member = torch.nn.functional.one_hot(stretch_of(positions, frames, k), k).to(codes.dtype)  # [B, V, k]
    sums = torch.einsum("bvk,bvl->bkl", member, codes)
    means = sums / member.sum(dim=1).clamp(min=1.0).unsqueeze(-1)
    block = (torch.arange(L, device=codes.device) // (L // k)).unsqueeze(0) == torch.arange(k, device=codes.device).unsqueeze(1)
    return (means * block.to(codes.dtype)).sum(dim=1)


class _SignSTE(torch.autograd.Function):
    """Forward: +1 where h > 0, else -1. Backward: gradient passes unchanged where -1 < h <= 1, zero elsewhere."""

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(h)
        return torch.where(h > 0, torch.ones_like(h), -torch.ones_like(h))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (h,) = ctx.saved_tensors
        return grad * ((h > -1) & (h <= 1)).to(grad.dtype)


def sign_ste(h: Tensor) -> Tensor:
    """Straight-through binarisation to {-1, +1} (works on any device)."""
    return _SignSTE.apply(h)


def _xavier_init(module: nn.Module, skip_mamba: bool) -> None:
    """Xavier-uniform weights and zero biases on Linears, unit/zero LayerNorms; optionally leave Mamba alone."""
    from .mamba import Mamba

    def visit(m: nn.Module) -> None:
        if skip_mamba and isinstance(m, Mamba):
            return  # Mamba keeps its own initialisation (dt_proj bias spread, etc.)
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        for child in m.children():
            visit(child)

    visit(module)


def _init_weights(module: nn.Module, cfg: ModelConfig) -> None:
    if cfg.encoder == "mamba":
        _xavier_init(module, skip_mamba=cfg.mamba_init == "mamba")
    else:
        _xavier_init(module, skip_mamba=False)


def _mamba_blocks(dim: int, depth: int, cfg: ModelConfig, drop_path: float, backend: str) -> nn.ModuleList:
    from .mamba import BiMambaBlock

    rates = [float(r) for r in torch.linspace(0, drop_path, depth, device="cpu")]  # plain floats, also under meta
    return nn.ModuleList(
        BiMambaBlock(dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, drop_path=r,
                     tie_directions=cfg.tie_directions, backend=backend)
        for r in rates
    )


def _transformer_blocks(dim: int, depth: int, n_heads: int, ffn_dim: int) -> nn.ModuleList:
    return nn.ModuleList(
        nn.TransformerEncoderLayer(dim, n_heads, ffn_dim, dropout=0.0, activation="gelu", batch_first=True,
                                   norm_first=True, layer_norm_eps=1e-6)
        for _ in range(depth)
    )


class S5VHEncoder(nn.Module):
    """patch_embed -> + fixed sinusoidal positions -> visible frames (temporal order) -> blocks -> LN -> head."""

    def __init__(self, cfg: ModelConfig, backend: str = "auto") -> None:
        super().__init__()
        d = cfg.d_model
        self.patch_embed = nn.Linear(cfg.feature_dim, d)
        self.register_buffer("pos_embed", sinusoidal_table(cfg.frames, d), persistent=False)
        self.blocks = self._make_blocks(cfg, backend)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, d)

    def _make_blocks(self, cfg: ModelConfig, backend: str) -> nn.ModuleList:
        return _mamba_blocks(cfg.d_model, cfg.depth, cfg, cfg.drop_path, backend)

    def forward(self, x: Tensor, visible_idx: Tensor | None = None) -> Tensor:
        x = self.patch_embed(x) + self.pos_embed
        if visible_idx is not None:
            x = x.gather(1, visible_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


class TransformerEncoder(S5VHEncoder):
    """ConMH-style drop-in: the same embedding and head around pre-norm Transformer layers of the same width/depth."""

    def _make_blocks(self, cfg: ModelConfig, backend: str) -> nn.ModuleList:
        return _transformer_blocks(cfg.d_model, cfg.depth, cfg.n_heads, cfg.ffn_dim)


class S5VHDecoder(nn.Module):
    """Blocks over the decoder sequence, then LN and a head that predicts raw features of the masked frames."""

    def __init__(self, cfg: ModelConfig, backend: str = "auto") -> None:
        super().__init__()
        d = cfg.dec_d_model
        if cfg.encoder == "mamba":
            self.blocks = _mamba_blocks(d, cfg.dec_depth, cfg, cfg.drop_path, backend)
        else:
            self.blocks = _transformer_blocks(d, cfg.dec_depth, cfg.n_heads, cfg.ffn_dim)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


class S5VH(nn.Module):
    """Self-supervised video hashing model.

    ``hash_centers`` [K, bits] (+-1) are required for ``centers_mode="fixed"`` training; a model built without them
    gets a zero buffer that ``load_state_dict`` fills.
    """

    def __init__(self, cfg: ModelConfig, hash_centers: Tensor | np.ndarray | None = None,
                 ssm_backend: str = "auto") -> None:
        super().__init__()
        cfg.validate()
        if cfg.method != "s5vh":
            raise MismatchError(f"method {cfg.method!r} is a training-free projection (LinearHash), not an S5VH model")
        self.cfg = cfg
        L, K = cfg.bits, cfg.n_clusters
        enc_cls = S5VHEncoder if cfg.encoder == "mamba" else TransformerEncoder
        self.encoder = enc_cls(cfg, ssm_backend)
        self.decoder = S5VHDecoder(cfg, ssm_backend)
        # released _init_weights runs in the encoder and decoder constructors only
        _init_weights(self.encoder, cfg)
        _init_weights(self.decoder, cfg)
        self.binary = nn.Linear(cfg.d_model, L)
        self.binary_norm = nn.LayerNorm(L)
        self.encoder_to_decoder = nn.Linear(L, cfg.dec_d_model, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_d_model))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.register_buffer("dec_pos_embed", sinusoidal_table(cfg.frames, cfg.dec_d_model), persistent=False)
        if cfg.centers_mode == "fixed":
            centers = torch.zeros(K, L)
            if hash_centers is not None:
                hc = torch.as_tensor(np.asarray(hash_centers), dtype=torch.float32)
                if tuple(hc.shape) != (K, L):
                    raise MismatchError(f"hash centres have shape {tuple(hc.shape)}, the model needs [{K}, {L}]")
                centers = hc
            self.register_buffer("hash_centers", centers)
        else:
            self.classifier = nn.Linear(L, K, bias=False)

    # ------------------------------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 3:
            raise MismatchError(f"model input must be [videos, frames, dim], got shape {tuple(x.shape)}")
        if x.shape[1] != self.cfg.frames:
            raise MismatchError(f"features have {x.shape[1]} frames per video, but the model was built for "
                                f"{self.cfg.frames}")
        if x.shape[2] != self.cfg.feature_dim:
            raise MismatchError(f"features are {x.shape[2]}-d, but the model was built for "
                                f"{self.cfg.feature_dim}-d features")

    def _codes(self, x: Tensor, visible_idx: Tensor | None, hash_norm: bool = True) -> Tensor:
        h = self.binary(self.encoder(x, visible_idx))
        if hash_norm:
            h = self.binary_norm(h)
        return sign_ste(h)

    def center_logits(self, mean_code: Tensor) -> Tensor:
        """Unscaled logits W_c b [B, K] against the hash centres (fixed) or the learned prototypes."""
        if self.cfg.centers_mode == "fixed":
            return mean_code @ self.hash_centers.t()
        return self.classifier(mean_code)

    def decode(self, codes: Tensor, visible_idx: Tensor, masked_idx: Tensor) -> Tensor:
        """Reconstruct the masked frames' features [B, M, F] from the visible frames' codes [B, V, L]."""
        b, m = masked_idx.shape
        vis = self.encoder_to_decoder(codes) + self.dec_pos_embed[visible_idx]
        msk = self.mask_token.expand(b, m, -1) + self.dec_pos_embed[masked_idx]
        seq = torch.cat([vis, msk], dim=1)
        if self.cfg.decoder_order == "visible_then_masked":
            return self.decoder(seq)[:, -m:] if m else self.decoder(seq)
        # interleave back into temporal order, decode, then take the masked tokens in masked_idx order
        order = torch.cat([visible_idx, masked_idx], dim=1).argsort(dim=1)
        idx = order.unsqueeze(-1).expand(-1, -1, seq.shape[-1])
        y = self.decoder(seq.gather(1, idx))
        back = torch.empty_like(y).scatter_(1, order.unsqueeze(-1).expand(-1, -1, y.shape[-1]), y)
        return back[:, visible_idx.shape[1]:]

    def forward(self, x: Tensor, visible_idx: Tensor, masked_idx: Tensor) -> dict[str, Tensor]:
        self._check_input(x)
        codes = self._codes(x, visible_idx)
        mean_code = self.pool(codes, visible_idx)
        return {
            "frame_codes": codes,
            "mean_code": mean_code,
            "recon": self.decode(codes, visible_idx, masked_idx),
            "logits": self.center_logits(mean_code),
        }

    def pool(self, codes: Tensor, positions: Tensor | None = None) -> Tensor:
        """Frame codes [B, V, L] (at frame ``positions``, all in order when None) -> video code [B, L]
        (``pool_codes`` with ``cfg.temporal_pool``)."""
        return pool_codes(codes, positions, self.cfg.frames, self.cfg.temporal_pool)

    def frame_codes_visible(self, x: Tensor, visible_idx: Tensor) -> Tensor:
        """+-1 codes [B, V, L] of the visible frames only (training's masked view), with gradients."""
        self._check_input(x)
        return self._codes(x, visible_idx)

    def frame_codes(self, x: Tensor, hash_norm: bool = True) -> Tensor:
        """+-1 codes of every frame [B, T, L] with all frames visible (``hash_norm=False``: the released
        label-prediction path, which skips the LayerNorm before the sign)."""
        self._check_input(x)
        return self._codes(x, None, hash_norm)

    def soft_frame_codes(self, x: Tensor) -> Tensor:
        """Continuous frame codes before the sign [B, T, L] (after the hash LayerNorm): what re-ranking compares."""
        self._check_input(x)
        return self.binary_norm(self.binary(self.encoder(x)))

    def soft_video(self, h: Tensor) -> Tensor:
        """The video's continuous code [B, L] from its pre-sign frame codes [B, T, L]: tanh pooled over frames
        (``pool``), a soft version of the pooled +-1 frame codes whose sign is the binary code."""
        return self.pool(torch.tanh(h))

    def bits_from_soft(self, h: Tensor) -> Tensor:
        """Video bits [B, L] (True = +1) from pre-sign frame codes: the sign of the pooled +-1 frame codes, ties
        +1."""
        return self.pool(torch.where(h > 0, 1.0, -1.0)) >= 0

    def soft_code(self, x: Tensor) -> Tensor:
        return self.soft_video(self.soft_frame_codes(x))

    def hash(self, x: Tensor) -> Tensor:
        """Video codes [B, L] as booleans (True = +1): sign of the pooled frame codes (the mean over all frames
        unless ``temporal_pool`` > 1), ties (mean 0) go to +1."""
        return self.pool(self.frame_codes(x)) >= 0

    def set_backend(self, name: str) -> None:
        """Switch the selective-scan backend of every Mamba module."""
        from .mamba import set_ssm_backend

        set_ssm_backend(self, name)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())



def check_weights_fit(cfg: ModelConfig, state_dict: dict) -> None:
    """Refuse weights that do not fit ``cfg`` before the model is built (a config claiming d_model=1e6 or
    depth=20000 must not allocate anything). Raises MismatchError naming the first difference.

    Every size the config can ask for (widths, depths, the inner width and state size of a block, the centres)
    is read off a weight in the file first, so what is built next is in proportion to the file: a model one
    block deep, for real, whose block 0 stands for every block, and every name and shape is compared. (The
    meta device would allocate nothing, but its kernels import torch's compiler: 1.2-1.6 s of CPU on every cold
    model load.)
    """
    import re

    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise MismatchError(f"weight {str(k)[:60]!r} is a {type(v).__name__}, not a tensor")
        if not (v.is_floating_point() or v.dtype == torch.bool):
            raise MismatchError(f"weight {k!r} has dtype {v.dtype}, expected floating point")

    def shape(key: str) -> tuple[int, ...] | None:
        t = state_dict.get(key)
        return tuple(t.shape) if t is not None else None

    expect = {"encoder.patch_embed.weight": (cfg.d_model, cfg.feature_dim), "binary.weight": (cfg.bits, cfg.d_model),
              "decoder.head.weight": (cfg.feature_dim, cfg.dec_d_model),
              "encoder_to_decoder.weight": (cfg.dec_d_model, cfg.bits),
              ("hash_centers" if cfg.centers_mode == "fixed" else "classifier.weight"): (cfg.n_clusters, cfg.bits)}
    for part, d in (("encoder", cfg.d_model), ("decoder", cfg.dec_d_model)):
        first = f"{part}.blocks.0."
        if cfg.encoder == "mamba":
            inner = cfg.expand * d
            expect |= {first + "mamba1.in_proj.weight": (2 * inner, d), first + "mamba1.A_log": (inner, cfg.d_state),
                       first + "mamba1.conv1d.weight": (inner, 1, cfg.d_conv)}
        else:
            expect[first + "linear1.weight"] = (cfg.ffn_dim, d)
    for key, want in expect.items():
        if shape(key) != want:
            raise MismatchError(f"weight {key} has shape {shape(key)} but the config needs {want}")
    for part, depth in (("encoder", cfg.depth), ("decoder", cfg.dec_depth)):
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{part}\.blocks\.(\d+)\.", k))}
        if blocks != set(range(depth)):
            raise MismatchError(f"the weights hold {len(blocks)} {part} block(s) but the config says {depth}")
    import dataclasses

    ref: dict[str, tuple[int, ...]] = {}
    with torch.random.fork_rng(devices=[]):  # its initialisation must not move the caller's random stream
        one = S5VH(dataclasses.replace(cfg, depth=1, dec_depth=1), ssm_backend="reference")
    for k, t in one.state_dict().items():
        m = re.match(r"(encoder|decoder)\.blocks\.0\.(.*)", k)
        if m is None:
            ref[k] = tuple(t.shape)
        else:
            for i in range(cfg.depth if m.group(1) == "encoder" else cfg.dec_depth):
                ref[f"{m.group(1)}.blocks.{i}.{m.group(2)}"] = tuple(t.shape)
    missing = [k for k in ref if k not in state_dict]
    extra = [k for k in state_dict if k not in ref]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise MismatchError(f"the weights do not fit the config ({len(missing)} missing, {len(extra)} unexpected: "
                            f"{what})")
    for k, want in ref.items():
        if tuple(state_dict[k].shape) != want:
            raise MismatchError(f"weight {k} has shape {tuple(state_dict[k].shape)} but the config needs {want}")
