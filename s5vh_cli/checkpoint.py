"""model.pt: a torch.save of plain types and tensors only, so it loads with ``weights_only=True`` (no code runs)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import __version__, artifacts
from .artifacts import Features
from .config import ModelConfig, TrainConfig, from_dict, to_dict
from .errors import ArtifactError, InputError, S5VHError

FORMAT_VERSION = 1
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def features_summary(features: Features) -> dict[str, Any]:
    return {"backbone": features.backbone, "backbone_sha256": features.backbone_sha256,
            "sampling": features.sampling, "frames": features.frames, "feature_dim": features.dim,
            "precision": str(features.attrs.get("precision", "")), "sha256": features.sha256}


def save_model(path: str | os.PathLike, model: torch.nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig,
               features: Features | dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write a model artifact atomically under an exclusive lock."""
    feats = features if isinstance(features, dict) else features_summary(features)
    payload = {
        "s5vh_artifact": "model",
        "format_version": FORMAT_VERSION,
        "producer": f"s5vh {__version__} train",
        "model_config": to_dict(model_cfg),
        "train_config": to_dict(train_cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "features": dict(feats),
        "extra": dict(extra or {}),
    }
    with artifacts.output_lock(path), artifacts.atomic_output(path) as tmp:
        torch_save(payload, tmp)


def torch_save(obj: Any, tmp: Path) -> None:
    """torch.save reporting a failed write as OSError (it raises RuntimeError), so that atomic_output turns it
    into one line (e.g. a full disk) and removes the temporary."""
    try:
        torch.save(obj, tmp)
    except RuntimeError as e:
        try:
            full = shutil.disk_usage(tmp.parent).free < (1 << 20)
        except OSError:
            full = False
        raise OSError(errno.ENOSPC if full else errno.EIO, f"write failed ({str(e).strip()[:120]})") from None


def safe_torch_load(path: str | os.PathLike, what: str = "model") -> Any:
    """torch.load with weights_only=True and one-line errors for missing, damaged or code-carrying files."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such file, expected a {what} file from `s5vh train`")
    if path.is_dir():
        raise ArtifactError(f"{path}: is a folder, expected a {what} file from `s5vh train`")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path}: empty file (0 bytes), expected a {what} file from `s5vh train`")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if head == _HDF5_MAGIC:
        raise ArtifactError(f"{path}: an HDF5 file, expected a {what} file from `s5vh train` (a .pt file)")
    if not head.startswith(b"PK\x03\x04"):
        raise ArtifactError(f"{path}: refused: not a torch zip archive (older pickle formats can run code and "
                            f"declare sizes they do not hold); not a {what} file from `s5vh train`")
    _check_zip_records(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for objects outside the allow-list, RuntimeError for damaged zips
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "unpickl" in text.lower():
            raise ArtifactError(f"{path}: refused to load: it holds Python objects other than tensors and plain "
                                f"types (possibly code); not a {what} file from `s5vh train`") from None
        first = text.splitlines()[0][:160] if text else type(e).__name__
        raise ArtifactError(f"{path}: damaged or truncated {what} file ({first})") from None


def _check_zip_records(path: Path, what: str) -> None:
    """Every record of the archive must be stored, not compressed (torch.save never compresses), so that each
    tensor's bytes are in the file: a deflated record could expand a few kilobytes into gigabytes."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArtifactError(f"{path}: damaged or truncated {what} file ({str(e)[:120]})") from None
    size = path.stat().st_size
    total = sum(info.file_size for info in infos)
    packed = [info.filename for info in infos if info.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise ArtifactError(f"{path}: refused: {len(packed)} record(s) are compressed ({total:,} bytes declared in "
                            f"a {size:,}-byte file); torch.save writes uncompressed records only")
    if total > size:
        raise ArtifactError(f"{path}: damaged {what} file: its records claim {total:,} bytes, more than the "
                            f"{size:,}-byte file holds")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               ssm_backend: str = "auto") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model saved by ``save_model``; returns (model in eval mode, the payload without weights)."""
    from .model import S5VH, check_weights_fit

    data = safe_torch_load(path)
    if not isinstance(data, dict) or data.get("s5vh_artifact") != "model":
        kind = data.get("s5vh_artifact") if isinstance(data, dict) else None
        what = f"a {kind} file" if kind else "not an s5vh model"
        raise ArtifactError(f"{path}: {what}; expected a model file from `s5vh train`")
    ver = data.get("format_version")
    if not isinstance(ver, int) or not 1 <= ver <= FORMAT_VERSION:
        raise ArtifactError(f"{path}: model format version {ver} is not supported by s5vh {__version__}")
    for key in ("model_config", "state_dict"):
        if not isinstance(data.get(key), dict):
            raise ArtifactError(f"{path}: model file lacks '{key}'")
    try:
        cfg = from_dict(ModelConfig, data["model_config"]).validate()
    except S5VHError as e:
        raise ArtifactError(f"{path}: bad model_config ({e})") from None
    try:
        if cfg.method == "s5vh":
            check_weights_fit(cfg, data["state_dict"])  # before anything is built from the config
        else:
            from .linear import check_linear_weights_fit

            check_linear_weights_fit(cfg, data["state_dict"])
    except S5VHError as e:
        raise ArtifactError(f"{path}: weights do not fit the stored model_config ({e})") from None
    try:
        if cfg.method == "s5vh":
            model = S5VH(cfg, ssm_backend=ssm_backend)
        else:
            from .linear import LinearHash

            model = LinearHash(cfg)
        model.load_state_dict(data["state_dict"], strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: weights do not fit the stored model_config "
                            f"({str(e).splitlines()[0][:160]})") from None
    model.to(device).eval()
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return model, meta


def kept_model_path(path: str | os.PathLike, sha256: str) -> Path:
    """Where `s5vh train --force` keeps the model it replaced: beside it, named by the old file's sha256, so
    that an index built with the old model still finds it (the index records the model's sha256)."""
    p = Path(path)
    return p.with_name(f"{p.name}.{sha256[:12]}.kept")


@contextlib.contextmanager
def keep_replaced_model(path: str | os.PathLike) -> Iterator[Path | None]:
    """Around the write that replaces a model file: hard-link (else copy) the old file to ``kept_model_path``
    first, and take that copy away again if the write fails. Yields the kept path (None when there was no
    model to replace)."""
    p = Path(path)
    if not p.is_file():
        yield None
        return
    kept = kept_model_path(p, artifacts.sha256_file(p))
    made = False
    if not kept.exists():
        try:
            os.link(p, kept)
        except OSError:
            try:
                shutil.copy2(p, kept)
            except OSError as e:
                raise InputError(f"{kept}: cannot keep the model being replaced ({e.strerror or e}); nothing was "
                                 "replaced") from None
        made = True
    try:
        yield kept
    except BaseException:
        if made:
            kept.unlink(missing_ok=True)
        raise
