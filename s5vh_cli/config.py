"""Every hyper-parameter lives here. Presets are named instances; artifacts store the dicts they were built from."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import InputError

# The switches on which the released code departs from the paper (see docs/paper-vs-released.md).
RELEASED_MODEL = {
    "tie_directions": True,  # released Block sets mamba2 := mamba1 on every forward
    "decoder_order": "visible_then_masked",  # released decoder scans [visible; masked]
    "mamba_init": "xavier",  # released _init_weights overwrites Mamba's dt init (Xavier, zero dt bias)
    "centers_mode": "learned",  # released classifier.data = ... never loads the centres
}
RELEASED_TRAIN = {
    "label_pred": "released",  # no LN before sign, train mode, no temperature
}


METHODS = ("s5vh", "itq", "lsh")


@dataclass
class ModelConfig:
    method: str = "s5vh"  # "s5vh" (trained model) or a training-free projection: "itq", "lsh" (s5vh_cli/linear.py)
    feature_dim: int = 1280
    frames: int = 25  # T: the model is built for exactly this many frames per video
    bits: int = 64
    encoder: str = "mamba"  # "mamba" (S5VH) or "transformer" (ConMH-style, for comparison)
    d_model: int = 256
    depth: int = 6
    dec_d_model: int = 192
    dec_depth: int = 1
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    n_heads: int = 8  # transformer encoder only
    ffn_dim: int = 1024  # transformer encoder only
    drop_path: float = 0.5  # max stochastic-depth rate, linearly spread over the blocks
    tie_directions: bool = False
    decoder_order: str = "temporal"  # or "visible_then_masked" (released)
    mamba_init: str = "mamba"  # or "xavier" (released)
    n_clusters: int = 100
    centers_mode: str = "fixed"  # or "learned" (released)
    code_tie: str = "plus_one"  # video bit when frame votes tie exactly: +1 (binary codes need a side)
    # Pool frame codes over this many consecutive stretches of time instead of the whole video: bit block s of the
    # code (bits/K bits) comes from the frames of stretch s only, so the code changes when the order does. 1 = the
    # paper's mean over all frames.
    temporal_pool: int = 1
    # Training-free methods only: project every frame feature by a whitening learnt from the library's own
    # transformed renderings (``extract --views``; s5vh_cli.linear.fit_whitening) to this many dimensions before
    # hashing, and use the whitened frames as the re-ranking descriptor. 0 = off (the raw features).
    whiten_dim: int = 0

    def validate(self) -> ModelConfig:
        """Types and ranges of every field, so that an ill-typed or absurd config (from a damaged or crafted model
        file) is one clear line before anything is built."""
        for name in ("method", "encoder", "decoder_order", "mamba_init", "centers_mode", "code_tie"):
            _is(name, getattr(self, name), str)
        _choice("method", self.method, METHODS)
        _choice("encoder", self.encoder, ("mamba", "transformer"))
        _choice("decoder_order", self.decoder_order, ("temporal", "visible_then_masked"))
        _choice("mamba_init", self.mamba_init, ("mamba", "xavier"))
        _choice("centers_mode", self.centers_mode, ("fixed", "learned"))
        _choice("code_tie", self.code_tie, ("plus_one",))
        _is("tie_directions", self.tie_directions, bool)
        for name, (lo, hi) in _MODEL_INT_RANGES.items():
            _int_in(name, getattr(self, name), lo, hi)
        if self.bits % 8:
            raise InputError(f"bits must be a positive multiple of 8, got {self.bits}")
        if self.bits % self.temporal_pool or self.temporal_pool > self.frames:
            raise InputError(f"temporal_pool {self.temporal_pool} must divide bits {self.bits} and be at most the "
                             f"{self.frames} frames")
        if self.whiten_dim:
            if self.method == "s5vh":
                raise InputError("whiten_dim (--whiten) is for the training-free methods (--method itq|lsh)")
            if self.whiten_dim > self.feature_dim or self.bits // self.temporal_pool > self.whiten_dim:
                raise InputError(f"whiten_dim {self.whiten_dim} must be at most the feature dimension "
                                 f"{self.feature_dim} and at least {self.bits // self.temporal_pool} (bits per stretch)")
        _is("drop_path", self.drop_path, (int, float))
        if not 0.0 <= float(self.drop_path) < 1.0:
            raise InputError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if self.encoder == "transformer":
            for name in ("d_model", "dec_d_model"):
                if getattr(self, name) % self.n_heads:
                    raise InputError(f"n_heads {self.n_heads} does not divide {name} {getattr(self, name)}")
        return self


# Bounds of the integer fields of ModelConfig: far beyond any real model, tight enough that a damaged or crafted
# config cannot ask for gigabytes (the weights' shapes are checked against the config before anything is built).
_MODEL_INT_RANGES = {
    "temporal_pool": (1, 64), "whiten_dim": (0, 1 << 16),
    "feature_dim": (1, 1 << 16), "frames": (2, 10_000), "bits": (8, 4096), "d_model": (1, 1 << 14),
    "depth": (1, 512), "dec_d_model": (1, 1 << 14), "dec_depth": (1, 512), "d_state": (1, 1024),
    "d_conv": (1, 64), "expand": (1, 64), "n_heads": (1, 1024), "ffn_dim": (1, 1 << 16), "n_clusters": (1, 1 << 20),
}


def _is(name: str, value: Any, types: type | tuple[type, ...]) -> None:
    ok = isinstance(value, types) and (types is bool or not isinstance(value, bool))  # True is not a number here
    if not ok:
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise InputError(f"{name} must be {want}, got {type(value).__name__} {_short_repr(value)}")


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {type(value).__name__} {_short_repr(value)}")
    if not lo <= value <= hi:
        raise InputError(f"{name} must be between {lo} and {hi}, got {value}")


def _short_repr(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:40] + "..."


@dataclass
class TrainConfig:
    # 0 = chosen from the library size (resolve_schedule): batch min(128, max(16, n/8)), then enough epochs for
    # about `auto_steps` optimizer steps, at least 3 and at most 60. The named presets give the released values.
    epochs: int = 0
    batch_size: int = 0
    auto_steps: int = 200
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    mask_ratio: float = 0.5
    alpha: float = 1.0  # weight of the debiased contrastive loss
    temperature: float = 0.5
    tau_plus: float = 0.1
    a_cluster: float = 0.1  # weight of the centre-alignment loss
    temperature_cluster: float = 0.5
    warm_up_epochs: int = 50
    smoothing_alpha: float = 0.01
    label_pred: str = "paper"  # or "released"
    seed: int = 1
    val_fraction: float = 0.0  # optional held-out split of the TRAINING file for model selection
    eval_every: int = 0  # epochs between validation evaluations when val_fraction > 0 (0: every epoch)
    # views and negatives beyond the paper (each off in the method as published)
    transformed_views: bool = False  # the two views of a video come from two different renderings (the plain
    # one and the `extract --views` ones, chosen at random), each then masked as the paper does
    reverse_negatives: bool = False  # each video's time-reversed sequence is an extra (hard) negative of the
    # contrastive term, so that the code must change when the order of frames does
    # training-free methods (ModelConfig.method itq / lsh)
    linear_fit: str = "auto"  # fit on mean features ("means"), on every frame ("frames"), or "auto": means when
    # there are at least `bits` videos (ITQ's PCA needs as many rows as bits), else frames
    itq_iters: int = 50

    def validate(self) -> TrainConfig:
        _choice("label_pred", self.label_pred, ("paper", "released"))
        _choice("linear_fit", self.linear_fit, ("auto", "means", "frames"))
        if not 0.0 < self.mask_ratio < 1.0:
            raise InputError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.epochs < 0 or self.batch_size < 0 or self.batch_size == 1:
            raise InputError("epochs must be >= 1 and batch_size >= 2 (or 0: chosen from the library size)")
        if not 0.0 <= self.val_fraction < 0.5:
            raise InputError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        return self


@dataclass
class CentersConfig:
    n_clusters: int = 100
    pca_dim: int = 512
    bits: list[int] = field(default_factory=lambda: [64])
    seed: int = 1
    kmeans_niter: int = 20
    kmeans_nredo: int = 5
    rho: float = 5e-5
    gamma: float = 1.618033988749895
    sweeps: int = 20
    patience: int = 5
    admm_alpha: float = 1.0
    admm_iters: int = 150  # ADMM iterations per centre update (the released loop ran ~550)
    rho_growth: float = 1.07
    rho_max: float = 1e9
    admm_block: int = 64  # centres proposed together from one snapshot, then accepted one by one
    polish_flips: int = 8  # greedy single-bit flips applied to each ADMM proposal (0: off)
    kmeans_max_points_per_centroid: int = 0  # 0: never subsample (faiss would sample K*this points)
    kmeans_init: str = "kmeans++"  # or "random" (released: random data points)



@dataclass
class ExtractConfig:
    """Frame sampling and backbone of `s5vh extract` (stored in the features artifact)."""

    backbone: str = "mobilenet_v2"
    frames: int = 25  # T frames kept per video (30: the ActivityNet convention)
    sampling: str = "uniform"  # "uniform" (T frames spread over the video) or "fps=RATE" (first T at RATE/s)
    batch_size: int = 32  # frames per forward pass
    dtype: str = "float32"  # stored feature dtype: float32 or float16
    views: int = 0  # extra transformed renderings per video (s5vh_cli/views.py), stored as 'views' [N, V, T, D]
    view_seed: int = 0  # seeds the views' random edits (with each video's id)
    runtime: str = "auto"  # backbone runtime: auto, torch, onnxruntime, openvino (s5vh_cli/runtimes)
    precision: str = "auto"  # compute precision: auto (float32 on CPU, float16 on CUDA), float32, bfloat16, float16
    decoder: str = "auto"  # video decoder: auto (PyAV when installed, else OpenCV), pyav, opencv


@dataclass
class ServeConfig:
    """`s5vh serve`: where it listens, who may call it, what it may read, how much it accepts."""

    host: str = "127.0.0.1"  # anything but a loopback address needs a token
    port: int = 8080
    token: str = ""  # API token (Authorization: Bearer ...); required off loopback
    roots: tuple[str, ...] = ()  # folders whose files requests may name (query by path, add, sync); none: no paths
    max_upload_mb: float = 256.0  # largest request body (an uploaded clip), MB
    clip_workers: int = 1  # clip queries decoded and embedded at once (the rest wait); the cores are shared
    topk: int = 20  # results per query when the request gives neither topk nor radius
    thumbnail_cache: int = 512  # JPEG keyframes kept in memory

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be between 0 and 65535, got {self.port}")
        if not self.max_upload_mb > 0:
            raise InputError(f"--max-upload-mb must be positive, got {self.max_upload_mb:g}")
        if self.clip_workers < 1:
            raise InputError(f"--clip-workers must be at least 1, got {self.clip_workers}")
        if self.topk < 1:
            raise InputError(f"--topk must be at least 1, got {self.topk}")


# Released configs (configs/S5VH/{fcv,act,ucf,hmdb}.py). Values are the released files'; see docs for log diffs.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {"model": {}, "train": {}, "centers": {}},  # epochs and batch chosen from the library size
    "fcv": {
        "model": {"feature_dim": 4096, "frames": 25, "n_clusters": 450},
        "train": {"epochs": 500, "batch_size": 512, "mask_ratio": 0.75, "alpha": 2.5, "tau_plus": 0.1,
                  "a_cluster": 0.01},
        "centers": {"n_clusters": 450, "pca_dim": 512},
    },
    "act": {
        "model": {"feature_dim": 2048, "frames": 30, "n_clusters": 100},
        "train": {"epochs": 350, "batch_size": 128, "mask_ratio": 0.5, "alpha": 0.2, "tau_plus": 0.05,
                  "a_cluster": 0.001},
        "centers": {"n_clusters": 100, "pca_dim": 512},
    },
    "ucf": {
        "model": {"feature_dim": 4096, "frames": 25, "n_clusters": 101},
        "train": {"epochs": 350, "batch_size": 128, "mask_ratio": 0.5, "alpha": 1.0, "tau_plus": 0.1,
                  "a_cluster": 0.1},
        "centers": {"n_clusters": 101, "pca_dim": 512},
    },
    "hmdb": {
        "model": {"feature_dim": 4096, "frames": 25, "n_clusters": 100},
        "train": {"epochs": 350, "batch_size": 128, "mask_ratio": 0.5, "alpha": 1.0, "tau_plus": 0.05,
                  "a_cluster": 0.1},
        # the released hmdb.py says 1024; the logged runs that produced the numbers used 512
        "centers": {"n_clusters": 100, "pca_dim": 512},
    },
    "demo": {
        "model": {"n_clusters": 8, "depth": 2, "drop_path": 0.1},
        "train": {"epochs": 8, "batch_size": 32, "warm_up_epochs": 3},
        "centers": {"n_clusters": 8, "pca_dim": 64},
    },
}


AUTO_MIN_EPOCHS, AUTO_MAX_EPOCHS = 3, 60


def resolve_schedule(cfg: TrainConfig, n_train: int) -> TrainConfig:
    """Concrete batch size and epochs for ``n_train`` videos where ``cfg`` leaves them at 0 (auto).

    Batch: min(128, max(16, n / 8)), never more than the library. Epochs: about ``auto_steps`` optimizer steps,
    between 3 and 60. A few dozen videos get tens of epochs of a few steps each, a few thousand a handful of
    epochs; never 100 epochs of a single step.
    """
    batch = cfg.batch_size or min(128, max(16, n_train // 8), max(2, n_train))
    steps = max(1, -(-n_train // batch))
    epochs = cfg.epochs or min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, -(-cfg.auto_steps // steps)))
    return dataclasses.replace(cfg, batch_size=batch, epochs=epochs)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def from_dict(cls, data: dict[str, Any]):
    """Build a config dataclass from a dict, refusing unknown keys (a typo must not be ignored)."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise InputError(f"{cls.__name__} must be a mapping of names to values, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown {cls.__name__} key(s): {', '.join(_short_repr(k) for k in unknown[:5])}")
    return cls(**data)


def replace(cfg, **overrides):
    """dataclasses.replace that skips None values (unset CLI options)."""
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def preset(name: str, behaviour: str = "paper") -> tuple[ModelConfig, TrainConfig, CentersConfig]:
    """Configs for a named preset; behaviour="released" switches on every departure of the released code."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    if behaviour not in ("paper", "released"):
        raise InputError(f"behaviour must be 'paper' or 'released', got {behaviour!r}")
    p = PRESETS[name]
    model = from_dict(ModelConfig, dict(p["model"]))
    train = from_dict(TrainConfig, dict(p["train"]))
    centers = from_dict(CentersConfig, dict(p["centers"]))
    if behaviour == "released":
        model = dataclasses.replace(model, **RELEASED_MODEL)
        train = dataclasses.replace(train, **RELEASED_TRAIN)
    return model, train, centers


def to_dict(cfg) -> dict[str, Any]:
    return asdict(cfg)
