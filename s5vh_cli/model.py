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
        mean_code = codes.mean(dim=1)
        return {
            "frame_codes": codes,
            "mean_code": mean_code,
            "recon": self.decode(codes, visible_idx, masked_idx),
            "logits": self.center_logits(mean_code),
        }

    def frame_codes(self, x: Tensor, hash_norm: bool = True) -> Tensor:
        """+-1 codes of every frame [B, T, L] with all frames visible (``hash_norm=False``: the released
        label-prediction path, which skips the LayerNorm before the sign)."""
        self._check_input(x)
        return self._codes(x, None, hash_norm)

    def hash(self, x: Tensor) -> Tensor:
        """Video codes [B, L] as booleans (True = +1): sign of the mean frame code, ties (mean 0) go to +1."""
        return self.frame_codes(x).sum(dim=1) >= 0

    def set_backend(self, name: str) -> None:
        """Switch the selective-scan backend of every Mamba module."""
        from .mamba import set_ssm_backend

        set_ssm_backend(self, name)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())



def check_weights_fit(cfg: ModelConfig, state_dict: dict) -> None:
    """Refuse weights that do not fit ``cfg`` before the model is built (a config claiming d_model=1e6 or
    depth=20000 must not allocate anything). Raises MismatchError naming the first difference.

    The widths and depths are read off a few weights first; then the model is built on the meta device (no
    memory) and every name, shape and dtype kind is compared.
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
              "encoder_to_decoder.weight": (cfg.dec_d_model, cfg.bits)}
    for key, want in expect.items():
        if shape(key) != want:
            raise MismatchError(f"weight {key} has shape {shape(key)} but the config needs {want}")
    for part, depth in (("encoder", cfg.depth), ("decoder", cfg.dec_depth)):
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{part}\.blocks\.(\d+)\.", k))}
        if blocks != set(range(depth)):
            raise MismatchError(f"the weights hold {len(blocks)} {part} block(s) but the config says {depth}")
    with torch.device("meta"):
        ref = S5VH(cfg).state_dict()
    missing = [k for k in ref if k not in state_dict]
    extra = [k for k in state_dict if k not in ref]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise MismatchError(f"the weights do not fit the config ({len(missing)} missing, {len(extra)} unexpected: "
                            f"{what})")
    for k, t in ref.items():
        if tuple(state_dict[k].shape) != tuple(t.shape):
            raise MismatchError(f"weight {k} has shape {tuple(state_dict[k].shape)} but the config needs "
                                f"{tuple(t.shape)}")
