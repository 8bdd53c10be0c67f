"""Devices, threads and backends are chosen here and nowhere else."""

from __future__ import annotations

import torch

from .errors import BackendError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks the first CUDA GPU when torch sees one, else the CPU. Asking for a missing GPU is an error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendError(f"device {name!r} requested but this torch build sees no CUDA GPU "
                               f"(torch {torch.__version__}); use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackendError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        return dev
    raise BackendError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def describe_device(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"
