"""Self-local-global training: masked-frame reconstruction (self), debiased contrast between two masked views
(local), and alignment of video codes with hash centres under smoothed pseudo-labels (global).

Checkpoints of the full training state go to ``<out>.run/last.pt`` after every epoch so that ``resume=True``
continues bit-for-bit; per-epoch metrics go to ``<out>.run/metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artifacts
from .artifacts import Centers, Features
from .checkpoint import features_summary, keep_replaced_model, safe_torch_load, save_model, torch_save
from .config import CentersConfig, ModelConfig, TrainConfig, to_dict
from .device import describe_device, resolve_device
from .engines.local import SingleProcess
from .errors import ArtifactError, InputError, MismatchError
from .losses import center_alignment_loss, dcl_loss, reconstruction_loss
from .model import S5VH
from .progress import NULL, Progress

RUN_STATE_VERSION = 1
LOCAL = SingleProcess()


# ----------------------------------------------------------------------------------------------------------
# masking
# ----------------------------------------------------------------------------------------------------------
def view_sizes(frames: int, mask_ratio: float) -> tuple[int, int]:
    """(visible V, masked M) with M = floor(r*T) and V = T - M, as the released generator."""
    m = int(math.floor(mask_ratio * frames))
    v = frames - m
    if v < 1 or m < 1:
        raise InputError(f"mask_ratio {mask_ratio} leaves {v} visible and {m} masked of {frames} frames; "
                         "both must be at least 1")
    return v, m


def two_view_masks(batch: int, frames: int, mask_ratio: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Per video one random permutation pi of the frames: view 1 sees pi[0:V], view 2 sees pi[T-V:T].

    Returns (visible1 [B,V], masked1 [B,M], visible2 [B,V], masked2 [B,M]) as long indices, each sorted into
    temporal order.
    """
    v, _ = view_sizes(frames, mask_ratio)
    perm = torch.rand(batch, frames, generator=generator).argsort(dim=1)
    vis1, msk1 = perm[:, :v], perm[:, v:]
    vis2, msk2 = perm[:, frames - v:], perm[:, :frames - v]
    return tuple(t.sort(dim=1).values for t in (vis1, msk1, vis2, msk2))


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def run_dir(out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    return out.with_name(out.name + ".run")


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if val_fraction <= 0:
        return np.arange(n), np.arange(0)
    n_val = int(round(n * val_fraction))
    if n_val < 2 or n - n_val < 2:
        raise InputError(f"val_fraction {val_fraction} of {n} videos leaves too few for training or validation")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _batch(feats: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    # index in numpy so that only the batch is converted to float32 (the file may be float16)
    return torch.from_numpy(np.ascontiguousarray(feats[idx], dtype=np.float32)).to(device)


def _two_renderings(feats: np.ndarray, views: np.ndarray, idx: np.ndarray, gen: torch.Generator,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different renderings of each video (0: the plain one, k: ``views[:, k-1]``), drawn uniformly."""
    nv = views.shape[1] + 1
    a = torch.randint(nv, (len(idx),), generator=gen).numpy()
    b = (a + torch.randint(1, nv, (len(idx),), generator=gen).numpy()) % nv

    def pick(r: np.ndarray) -> torch.Tensor:
        out = np.empty((len(idx), *feats.shape[1:]), np.float32)
        for i, (row, k) in enumerate(zip(idx, r, strict=True)):
            out[i] = feats[row] if k == 0 else views[row, k - 1]
        return torch.from_numpy(out).to(device)

    return pick(a), pick(b)


def _gather_frames(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _in_process_centers(features: Features, model_cfg: ModelConfig, centers_cfg: CentersConfig | None,
                        progress: Progress) -> Centers:
    from . import centers as centers_mod

    ccfg = centers_cfg or CentersConfig(n_clusters=model_cfg.n_clusters)
    n = features.n
    k = centers_mod.default_clusters(n, ccfg.n_clusters)
    pca = max(1, min(ccfg.pca_dim, features.dim, n - 1))
    ccfg = dataclasses.replace(ccfg, n_clusters=k, pca_dim=pca, bits=[model_cfg.bits])
    progress.log(f"no centres file given: computing {k} clusters and {model_cfg.bits}-bit hash centres "
                 f"in-process (PCA {pca})")
    return centers_mod.compute_centers(features.feats, ccfg, progress=progress, features_sha256=features.sha256)


def _check_centers(centers: Centers, features: Features, model_cfg: ModelConfig) -> None:
    if centers.pseudo_labels.shape[0] != features.n:
        raise MismatchError(f"{centers.path}: centres hold pseudo-labels for {centers.pseudo_labels.shape[0]} videos "
                            f"but {features.path} has {features.n}")
    if centers.features_sha256 and features.sha256 and centers.features_sha256 != features.sha256:
        raise MismatchError(f"{centers.path}: centres were computed from another features file "
                            f"(sha256 {centers.features_sha256[:12]}..., {features.path} is {features.sha256[:12]}...)")
    if model_cfg.centers_mode == "fixed" and model_cfg.bits not in centers.hash_centers:
        have = ", ".join(str(b) for b in sorted(centers.hash_centers)) or "none"
        raise MismatchError(f"{centers.path}: has hash centres for bits [{have}], not {model_cfg.bits}; "
                            f"run `s5vh centers --bits {model_cfg.bits}`")


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module, enabled: bool):
    was = model.training
    if enabled:
        model.eval()
    try:
        yield
    finally:
        model.train(was)


def _label_pred(model: S5VH, x: torch.Tensor, mode: str, tau_c: float) -> torch.Tensor:
    """Soft cluster assignment of each video from all its frames (no gradient).

    paper: eval mode, LN before the sign, logits scaled by 1/(L*tau_c). released: train mode (DropPath active),
    no LN, unscaled logits.
    """
    with torch.no_grad(), _eval_mode(model, mode == "paper"):
        codes = model.frame_codes(x, hash_norm=mode == "paper")
        logits = model.center_logits(model.pool(codes))
        if mode == "paper":
            logits = logits / (model.cfg.bits * tau_c)
        return torch.softmax(logits, dim=-1)


def _step_losses(model: S5VH, x: torch.Tensor, masks: tuple[torch.Tensor, ...], targets: torch.Tensor,
                 tcfg: TrainConfig, x2: torch.Tensor | None = None, engine: Any = LOCAL) -> dict[str, torch.Tensor]:
    """Losses of one batch. ``x2``: the rendering the second view is cut from (default: ``x``, the paper)."""
    vis1, msk1, vis2, msk2 = (m.to(x.device) for m in masks)
    x2 = x if x2 is None else x2
    b = x.shape[0]
    # both views in one batched pass: every op is per sample, so this equals two separate passes
    out = engine.forward(model, torch.cat([x, x2], 0), torch.cat([vis1, vis2], 0), torch.cat([msk1, msk2], 0))
    rec = reconstruction_loss([out["recon"][:b], out["recon"][b:]],
                              [_gather_frames(x, msk1), _gather_frames(x2, msk2)])
    hard = None
    if tcfg.reverse_negatives:  # one process only (train refuses it with other engines)
        # the first view's frames in reverse order: same frames, opposite arrow of time
        hard = model.pool(model.frame_codes_visible(x.flip(1), vis1), vis1)
    # the other videos of the whole batch are the negatives: with several ranks, their codes are gathered
    dcl = dcl_loss(engine.gather(out["mean_code"][:b]), engine.gather(out["mean_code"][b:]), tcfg.temperature,
                   tcfg.tau_plus, hard)
    scale = 1.0 / (model.cfg.bits * tcfg.temperature_cluster)
    ca = center_alignment_loss([out["logits"][:b] * scale, out["logits"][b:] * scale], targets)
    total = rec + tcfg.alpha * dcl + tcfg.a_cluster * ca
    return {"loss": total, "rec": rec, "dcl": dcl, "ca": ca}


def _validate(model: S5VH, feats: np.ndarray, idx: np.ndarray, labels: torch.Tensor, tcfg: TrainConfig,
              device: torch.device) -> float:
    """Mean total loss on the held-out videos, eval mode, with masks from a fixed seed (comparable across epochs)."""
    gen = torch.Generator().manual_seed(tcfg.seed + 7919)
    totals, weights = 0.0, 0
    with torch.no_grad(), _eval_mode(model, True):
        for s in range(0, len(idx), tcfg.batch_size):
            bi = idx[s:s + tcfg.batch_size]
            if len(bi) < 2:
                continue
            x = _batch(feats, bi, device)
            masks = two_view_masks(len(bi), x.shape[1], tcfg.mask_ratio, gen)
            loss = _step_losses(model, x, masks, labels[s:s + len(bi)].to(device), tcfg)["loss"]
            totals += float(loss) * len(bi)
            weights += len(bi)
    return totals / max(weights, 1)


def _make_run_dir(rdir: Path, resume: bool) -> None:
    if resume and not (rdir / "last.pt").exists():
        raise InputError(f"{rdir / 'last.pt'}: nothing to resume (no checkpoint from an earlier run)")
    try:
        rdir.mkdir(exist_ok=True)
    except OSError as e:
        raise InputError(f"{rdir.parent}: cannot write here ({e.strerror or e})") from None


def _read_state(last_path: Path, fingerprint: dict[str, Any], run_id: str | None = None) -> dict[str, Any] | None:
    """The training state in ``last_path``, checked against this run's settings. With ``run_id`` (a restarted
    torchrun job), only a state that job wrote, else None: the failed attempt may have died before its first."""
    if not last_path.exists():
        if run_id is not None:
            return None
        raise InputError(f"{last_path}: nothing to resume (no checkpoint from an earlier run)")
    state = safe_torch_load(last_path, what="training checkpoint")
    if not isinstance(state, dict) or state.get("s5vh_artifact") != "train_state":
        raise InputError(f"{last_path}: not a training checkpoint")
    if run_id is not None and state.get("run_id") != run_id:
        return None
    return state  # every part, the fingerprint first, is checked by _restore


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    with artifacts.atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _damaged(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: damaged training checkpoint ({what}); run without --resume to start over")


def _restore(path: Path, state: Any, fingerprint: dict[str, Any], model: torch.nn.Module,
             optimizer: torch.optim.Optimizer, scheduler: Any, gen: torch.Generator, dev: torch.device,
             n_train: int, k: int, epochs: int) -> tuple[int, float, int, torch.Tensor]:
    """Check every part of a ``last.pt`` before using it, then load it; returns (epoch, best loss, best epoch,
    soft labels). A checkpoint of another run is a MismatchError; a damaged one an ArtifactError, both one line."""
    if not isinstance(state, dict) or state.get("s5vh_artifact") != "train_state":
        raise InputError(f"{path}: not a training checkpoint")
    fp = state.get("fingerprint")
    if not isinstance(fp, dict):
        raise _damaged(path, "no fingerprint of its run")
    for key, val in fingerprint.items():
        if not _same(fp.get(key), val):
            raise MismatchError(f"{path}: cannot resume: {key.replace('_', ' ')} differs from the "
                                "checkpointed run (run without --resume to start over)")
    for key in ("model", "optimizer", "scheduler", "soft_labels", "rng", "epoch", "best_loss", "best_epoch"):
        if key not in state:
            raise _damaged(path, f"no '{key}'")
    epoch, best_loss, best_epoch = state["epoch"], state["best_loss"], state["best_epoch"]
    if not _is_int(epoch) or not 0 <= epoch <= epochs:
        raise _damaged(path, f"epoch {str(epoch)[:40]} is not a whole number of epochs between 0 and {epochs}")
    if not _is_int(best_epoch) or not -1 <= best_epoch <= epoch:
        raise _damaged(path, f"best_epoch {str(best_epoch)[:40]} is not an epoch up to {epoch}")
    if isinstance(best_loss, bool) or not isinstance(best_loss, (int, float)) or math.isnan(best_loss):
        raise _damaged(path, f"best_loss {str(best_loss)[:40]} is not a number")
    soft = state["soft_labels"]
    if not isinstance(soft, torch.Tensor) or soft.dtype != torch.float64 or tuple(soft.shape) != (n_train, k):
        what = f"{soft.dtype} {tuple(soft.shape)}" if isinstance(soft, torch.Tensor) else type(soft).__name__
        raise _damaged(path, f"soft labels are {what}, expected float64 ({n_train}, {k})")
    if not torch.isfinite(soft).all() or (soft < 0).any():
        raise _damaged(path, "soft labels hold negative, NaN or infinite values")
    rng = state["rng"]
    want = torch.get_rng_state()
    if not isinstance(rng, dict) or any(
            not isinstance(rng.get(key), torch.Tensor) or rng[key].dtype != want.dtype or rng[key].shape != want.shape
            for key in ("torch", "generator")):
        raise _damaged(path, "random-number state missing or of the wrong size")
    _check_scheduler_state(path, state["scheduler"], scheduler.state_dict())
    try:
        model.load_state_dict(state["model"])
    except Exception as e:  # wrong names, shapes, or not a state dict at all
        raise _damaged(path, f"model weights: {_first_line(e)}") from None
    try:
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:
        raise _damaged(path, f"optimizer state: {_first_line(e)}") from None
    _check_optimizer_state(path, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    try:
        _set_rng_state(rng, gen, dev)
    except Exception as e:
        raise _damaged(path, f"random-number state: {_first_line(e)}") from None
    return epoch, float(best_loss), best_epoch, soft.clone()


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # tensors and other odd objects in a crafted fingerprint
        return False


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:120] if text else type(e).__name__)


def _check_scheduler_state(path: Path, saved: Any, fresh: dict[str, Any]) -> None:
    """The scheduler's state is a plain dict copied into the scheduler: the same keys, of the same kinds."""
    if not isinstance(saved, dict) or set(saved) != set(fresh):
        raise _damaged(path, "scheduler state has other fields")
    for key, ref in fresh.items():
        val = saved[key]
        if isinstance(ref, bool) or ref is None:
            ok = type(val) is type(ref)
        elif isinstance(ref, (int, float)):
            ok = isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val)
            ok = ok and (not isinstance(ref, int) or isinstance(val, int))
        elif isinstance(ref, list):
            ok = isinstance(val, list) and len(val) == len(ref) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in val)
        else:
            ok = type(val) is type(ref)
        if not ok:
            raise _damaged(path, f"scheduler field {key!r} is {str(val)[:40]}")


def _check_optimizer_state(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """After loading: hyper-parameters are finite numbers and every moment buffer has its parameter's shape."""
    for group in optimizer.param_groups:
        for key in ("lr", "eps", "weight_decay"):
            v = group.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise _damaged(path, f"optimizer {key} is {str(v)[:40]}")
        betas = group.get("betas")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
            raise _damaged(path, f"optimizer betas are {str(betas)[:40]}")
        for key in ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused"):
            if key in group and group[key] is not None and not isinstance(group[key], bool):
                raise _damaged(path, f"optimizer {key} is {str(group[key])[:40]}")
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if not isinstance(st, dict):
                raise _damaged(path, "optimizer state of a parameter is not a mapping")
            for key, v in st.items():
                if key == "step":
                    ok = isinstance(v, torch.Tensor) and v.numel() == 1 and bool(torch.isfinite(v).all()) and v >= 0
                else:
                    ok = isinstance(v, torch.Tensor) and v.shape == p.shape and v.is_floating_point()
                if not ok:
                    raise _damaged(path, f"optimizer {key!r} does not fit its parameter")


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    """The metrics rows of the epochs up to ``upto``; a line that is not a JSON object is a damaged run."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: cannot read ({getattr(e, 'strerror', None) or _first_line(e)}); run "
                            "without --resume to start over") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not _is_int(row.get("epoch")):
            raise ArtifactError(f"{path}: line {i} is not a metrics record; run without --resume to start over")
        if row["epoch"] <= upto:
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# training-free methods
# ----------------------------------------------------------------------------------------------------------
def _check_model_output(out_path: str | os.PathLike, inputs: dict[str, Any], replace: bool) -> Path:
    """The model file a fit will write: its folder exists, it is not a folder or an input, and an existing model
    is replaced only when asked (an index records its model's sha256 and clip queries need it byte for byte)."""
    out = Path(out_path)
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: output folder does not exist")
    if out.is_dir():
        raise InputError(f"{out}: is a folder, expected a model file name")
    artifacts.check_not_input(out, inputs)
    if out.is_file() and not replace:
        raise InputError(f"{out}: a model is there already (indexes built with it need it to query clips); "
                         "choose another -o, or pass --force to replace it (the old model is kept beside it)")
    return out


def fit_linear(features: Features, model_cfg: ModelConfig, train_cfg: TrainConfig, out_path: str | os.PathLike,
               progress: Progress | None = None, force: bool = False) -> dict[str, Any]:
    """Fit LSH or ITQ (``model_cfg.method``) on ``features`` and write a model file that encode/index/query take
    like an S5VH model. Seconds, not minutes: no centres, no epochs."""
    from .linear import LinearHash, fit_itq, fit_lsh

    progress = progress or NULL
    out_path = _check_model_output(out_path, {"features": features.path}, replace=force)
    train_cfg = dataclasses.replace(train_cfg).validate()
    model_cfg = dataclasses.replace(model_cfg, feature_dim=features.dim, frames=features.frames).validate()
    t0 = time.perf_counter()
    k = model_cfg.temporal_pool
    dims = model_cfg.bits // k  # one projection serves each of the k stretches of time
    on = train_cfg.linear_fit
    if on == "auto":
        on = "means" if features.n * k >= dims or model_cfg.method == "lsh" else "frames"
    whitening = None
    x = features.feats
    if model_cfg.whiten_dim:
        from .linear import apply_whitening, fit_whitening

        if features.views is None:
            raise InputError(f"{features.path}: --whiten learns from transformed renderings, and these features "
                             "have none; extract them with `s5vh extract --views N` (4 or more)")
        progress.log(f"learning a whitening to {model_cfg.whiten_dim} dimensions from {features.views.shape[1]} "
                     f"renderings of {features.n} videos")
        whitening = fit_whitening(features.feats, features.views, model_cfg.whiten_dim, seed=train_cfg.seed)
        x = apply_whitening(x, *whitening)
    x = x.astype(np.float64)
    if on == "means":  # the mean feature of every video (of every stretch of it, with temporal pooling)
        x = np.concatenate([x[:, s * x.shape[1] // k:(s + 1) * x.shape[1] // k].mean(axis=1) for s in range(k)])
    else:
        x = x.reshape(-1, x.shape[-1])
    progress.log(f"fitting {model_cfg.method.upper()} ({model_cfg.bits} bits"
                 f"{f', {k} stretches of {dims}' if k > 1 else ''}) on the {on} of {features.n} videos "
                 f"({x.shape[0]} rows)")
    extra: dict[str, Any] = {"fit_on": on, "n_train": features.n, "rows": int(x.shape[0]),
                             "whiten_dim": model_cfg.whiten_dim}
    if model_cfg.method == "lsh":
        mean, proj = fit_lsh(x, dims, train_cfg.seed)
    else:
        mean, proj, history = fit_itq(x, dims, train_cfg.itq_iters, train_cfg.seed)
        extra["quantisation_loss"] = history[-1] if history else None
    model = LinearHash(model_cfg).set_fit(mean, proj, whitening)
    elapsed = time.perf_counter() - t0
    extra["seconds"] = round(elapsed, 3)
    with keep_replaced_model(out_path) as kept:
        save_model(out_path, model, model_cfg, train_cfg, features_summary(features), extra)
    if kept:
        progress.log(f"the model it replaced is kept as {kept}")
    progress.log(f"model written to {out_path}")
    return {"model": str(out_path), "method": model_cfg.method, "fit_on": on, "seconds": round(elapsed, 3),
            "n_train": features.n, "epochs": 0, "epochs_run": 0, "last": {}, "metrics": None}


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------
def train(features: Features, centers: Centers | None, model_cfg: ModelConfig, train_cfg: TrainConfig,
          out_path: str | os.PathLike, *, resume: bool = False, device: str | torch.device = "auto",
          ssm_backend: str = "auto", progress: Progress | None = None,
          centers_cfg: CentersConfig | None = None,
          on_epoch: Callable[[int, torch.nn.Module, dict], None] | None = None,
          force: bool = False, engine: Any = None) -> dict[str, Any]:
    """Train S5VH on ``features`` and write the model to ``out_path``; returns a summary dict.

    ``engine`` is this process alone (the default) or one rank of a torchrun job (s5vh_cli.engines.ddp): the
    ranks share each batch, take the same steps as one process with the whole batch, and rank 0 alone writes.

    ``on_epoch(epoch, model, row)``, if given, is called after each epoch's checkpoint is written (epoch
    1-based, ``row`` a copy of that epoch's metrics) under ``torch.no_grad``; the global RNG state and the
    model's train/eval mode are restored afterwards, so a callback that evaluates the model leaves the run
    bit-for-bit unchanged.
    """
    from .ssm import resolve_backend

    if model_cfg.method != "s5vh":
        return fit_linear(features, model_cfg, train_cfg, out_path, progress, force=force)
    progress = progress or NULL
    out_path = _check_model_output(out_path, {"features": features.path,
                                              "centers": centers.path if centers is not None else None},
                                   replace=resume or force)
    train_cfg = dataclasses.replace(train_cfg).validate()
    model_cfg = dataclasses.replace(model_cfg, feature_dim=features.dim, frames=features.frames)
    view_sizes(model_cfg.frames, train_cfg.mask_ratio)
    auto = [k for k in ("epochs", "batch_size") if not getattr(train_cfg, k)]
    engine = engine or LOCAL
    if engine.name != "local" and (train_cfg.transformed_views or train_cfg.reverse_negatives):
        raise InputError(f"--transformed-views and --reverse-negatives train in one process; use --engine local, "
                         f"not {engine.name}")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dev = engine.start(dev)
    backend, backend_why = ("none", "transformer encoder: no selective scan")
    if model_cfg.encoder == "mamba":
        backend, backend_why = resolve_backend(ssm_backend, dev)
    progress.log(f"device: {describe_device(dev)}; selective scan: {backend_why}")

    if centers is None:
        centers = _in_process_centers(features, model_cfg, centers_cfg, progress)
    _check_centers(centers, features, model_cfg)
    if centers.n_clusters != model_cfg.n_clusters:
        model_cfg = dataclasses.replace(model_cfg, n_clusters=centers.n_clusters)
    model_cfg.validate()
    hash_centers = centers.hash_centers.get(model_cfg.bits) if model_cfg.centers_mode == "fixed" else None

    train_idx, val_idx = _split(features.n, train_cfg.val_fraction, train_cfg.seed)
    n_train = len(train_idx)
    if n_train < 2:
        raise InputError(f"{features.path}: at least 2 videos are needed to train, found {n_train}")
    if auto:
        from .config import resolve_schedule

        train_cfg = resolve_schedule(train_cfg, n_train)
        progress.log(f"schedule for {n_train} videos: batch {train_cfg.batch_size}, {train_cfg.epochs} epochs "
                     f"(about {train_cfg.auto_steps} steps; set --epochs / --batch-size to choose)")
    k = model_cfg.n_clusters
    init_labels = torch.from_numpy(np.eye(k, dtype=np.float64)[centers.pseudo_labels])
    feats = features.feats
    views = None
    if train_cfg.transformed_views:
        views = features.views
        if views is None or views.shape[1] == 0:
            raise InputError(f"{features.path}: transformed views need features extracted with views "
                             "(s5vh extract --views N)")

    torch.manual_seed(train_cfg.seed)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    model = S5VH(model_cfg, hash_centers=hash_centers, ssm_backend=backend if backend != "none" else "auto").to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, betas=(0.9, 0.999),
                                  weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train_cfg.epochs, eta_min=train_cfg.min_lr)
    soft_labels = init_labels[torch.from_numpy(train_idx)].clone()
    val_labels = init_labels[torch.from_numpy(val_idx)].clone() if len(val_idx) else None

    rdir = run_dir(out_path)
    engine.on_writer(lambda: _make_run_dir(rdir, resume))
    # a second process training into the same output would overwrite this run's checkpoints
    with artifacts.output_lock(rdir / "run", wait=False) if engine.is_writer else contextlib.nullcontext():
        last_path, best_path, metrics_path = rdir / "last.pt", rdir / "best.pt", rdir / "metrics.jsonl"
        fingerprint = {"model_config": to_dict(model_cfg), "train_config": to_dict(train_cfg),
                       "features_sha256": features.sha256, "centers_sha256": centers.sha256, "n_train": n_train}
        start_epoch, best_loss, best_epoch, rows = 0, math.inf, -1, []
        state = None
        if resume:
            state = engine.on_writer(lambda: _read_state(last_path, fingerprint))
        elif engine.restarted:  # torchrun restarted this job after a failure: continue from its checkpoint
            state = engine.on_writer(lambda: _read_state(last_path, fingerprint, run_id=engine.run_id))
        if state is not None:
            start_epoch, best_loss, best_epoch, soft_labels = _restore(
                last_path, state, fingerprint, model, optimizer, scheduler, gen, dev, n_train, k, train_cfg.epochs)
            if engine.is_writer and metrics_path.exists():
                rows = _read_metrics(metrics_path, start_epoch)
            progress.log(f"resuming after epoch {start_epoch} of {train_cfg.epochs} from {last_path}")
        engine.prepare(model)

        steps = math.ceil(n_train / train_cfg.batch_size)
        progress.log(f"training {model.n_parameters():,} parameters on {n_train} videos"
                     f"{f' (+{len(val_idx)} for validation)' if len(val_idx) else ''}: {steps} steps x "
                     f"{train_cfg.epochs - start_epoch} epochs")
        progress.start("train", total=steps * (train_cfg.epochs - start_epoch))
        t_start = time.perf_counter()
        last_row: dict[str, Any] = rows[-1] if rows else {}
        try:
            for epoch in range(start_epoch, train_cfg.epochs):
                t0 = time.perf_counter()
                model.train()
                lr = optimizer.param_groups[0]["lr"]
                sums, seen = {"loss": 0.0, "rec": 0.0, "dcl": 0.0, "ca": 0.0}, 0
                order = torch.randperm(n_train, generator=gen).numpy()
                smoothing = epoch >= train_cfg.warm_up_epochs
                for s in range(0, n_train, train_cfg.batch_size):
                    pos = order[s:s + train_cfg.batch_size]
                    if len(pos) < 2:
                        progress.advance(1, epoch=epoch + 1)
                        continue  # one video has no negatives for the contrastive term
                    mine = engine.rows(len(pos))  # this rank's share of the batch (all of it in one process)
                    x = _batch(feats, train_idx[pos[mine]], dev)
                    masks = tuple(m[mine] for m in two_view_masks(len(pos), x.shape[1], train_cfg.mask_ratio, gen))
                    pos_t = torch.from_numpy(pos)
                    if smoothing:
                        with engine.shared_draws(len(pos), views=1):
                            p = _label_pred(model, x, train_cfg.label_pred, train_cfg.temperature_cluster)
                        p = engine.gather(p).double().cpu()
                        soft_labels[pos_t] = (1 - train_cfg.smoothing_alpha) * soft_labels[pos_t] + \
                            train_cfg.smoothing_alpha * p
                    targets = soft_labels[pos_t[mine]].to(dev)
                    x2 = None
                    if views is not None:  # drawn for the whole batch, so every rank draws alike
                        xa, xb = _two_renderings(feats, views, train_idx[pos], gen, dev)
                        x, x2 = xa[mine], xb[mine]
                    with engine.shared_draws(len(pos), views=2):
                        losses = _step_losses(model, x, masks, targets, train_cfg, x2, engine)
                    optimizer.zero_grad(set_to_none=True)
                    engine.backward_loss(losses, len(x), len(pos), train_cfg).backward()
                    optimizer.step()
                    vals = engine.logged(losses, len(x), len(pos), train_cfg)
                    for kk, vv in vals.items():
                        sums[kk] += vv * len(pos)
                    seen += len(pos)
                    progress.advance(1, epoch=epoch + 1, **{kk: round(vv, 4) for kk, vv in vals.items()})
                scheduler.step()
                row = {"epoch": epoch + 1, "lr": lr, **{kk: vv / max(seen, 1) for kk, vv in sums.items()},
                       "time_s": round(time.perf_counter() - t0, 3)}
                if len(val_idx) and (train_cfg.eval_every <= 0 or (epoch + 1) % train_cfg.eval_every == 0
                                     or epoch + 1 == train_cfg.epochs):
                    row["val_loss"] = _validate(model, feats, val_idx, val_labels, train_cfg, dev)
                    if row["val_loss"] < best_loss:
                        best_loss, best_epoch = row["val_loss"], epoch + 1
                        if engine.is_writer:
                            with artifacts.atomic_output(best_path) as tmp:
                                torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
                rows.append(row)
                last_row = row
                state = {"s5vh_artifact": "train_state", "version": RUN_STATE_VERSION, "epoch": epoch + 1,
                         "fingerprint": fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "soft_labels": soft_labels,
                         "rng": _rng_state(gen, dev), "best_loss": best_loss, "best_epoch": best_epoch,
                         "run_id": engine.run_id}
                if engine.is_writer:
                    with artifacts.atomic_output(last_path) as tmp:
                        torch_save(state, tmp)
                    _write_metrics(metrics_path, rows)
                if on_epoch is not None:
                    # an evaluation hook must not move the run: no autograd, RNG and train mode put back
                    with torch.no_grad(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
                            _eval_mode(model, False):
                        on_epoch(epoch + 1, model, dict(row))
        finally:
            progress.finish()
        elapsed = time.perf_counter() - t_start

        selected = train_cfg.epochs
        if len(val_idx) and best_epoch > 0:
            selected = best_epoch
            if engine.is_writer:
                model.load_state_dict(safe_torch_load(best_path, what="training checkpoint"))
            progress.log(f"keeping the epoch-{best_epoch} weights (best validation loss {best_loss:.4f})")
        extra = {"epochs": train_cfg.epochs, "selected_epoch": selected, "ssm_backend": backend,
                 "device": str(dev), "n_train": n_train, "n_val": len(val_idx), "centers_sha256": centers.sha256,
                 "final_metrics": {k: v for k, v in last_row.items() if isinstance(v, (int, float))},
                 "processes": engine.world}
        if engine.is_writer:
            with keep_replaced_model(out_path) as kept:
                save_model(out_path, model, model_cfg, train_cfg, features_summary(features), extra)
            if kept:
                progress.log(f"the model it replaced is kept as {kept}")
            progress.log(f"model written to {out_path}")
        engine.barrier()  # every rank returns once the model is written
        return {"model": str(out_path), "run_dir": str(rdir), "metrics": str(metrics_path), "epochs": train_cfg.epochs,
                "epochs_run": train_cfg.epochs - start_epoch, "selected_epoch": selected, "seconds": round(elapsed, 2),
                "n_train": n_train, "n_val": int(len(val_idx)), "device": str(dev), "ssm_backend": backend,
                "ssm_backend_reason": backend_why, "n_parameters": model.n_parameters(), "last": last_row,
                "best_val_loss": None if math.isinf(best_loss) else best_loss}
