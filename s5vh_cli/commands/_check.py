"""Argument checks that run before anything heavy is imported (torch, numba, cv2, faiss, h5py).

A mistyped path or a value out of range must be answered in well under a second, not after the 2-10 s that
importing the machinery takes. These checks use only the standard library; the core checks again, fully.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError


def existing_file(path: Path | str | None, what: str = "") -> None:
    """``path`` is an existing file (None: nothing to check)."""
    if path is None:
        return
    p = str(path)
    if not os.path.lexists(p):
        raise InputError(f"{p}: no such file{', expected ' + what if what else ''}")
    if os.path.isdir(p):
        raise InputError(f"{p}: is a folder, expected {what or 'a file'}")


def existing_index(path: Path | str | None) -> None:
    if path is None:
        return
    p = str(path)
    if not os.path.lexists(p):
        raise InputError(f"{p}: no such index file")
    if os.path.isdir(p):
        raise InputError(f"{p}: is a folder, expected an index file from `s5vh index`")


def existing_dir(path: Path | str | None, what: str = "folder") -> None:
    if path is None:
        return
    p = str(path)
    if not os.path.exists(p):
        raise InputError(f"{p}: no such {what}")
    if not os.path.isdir(p):
        raise InputError(f"{p}: is a file, expected a {what}")


def output_file(path: Path | str | None) -> None:
    """``path`` can be written: its folder exists and it is not a folder itself."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a folder, expected a file name to write")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: output folder does not exist")


def inputs(raw: Iterable[str]) -> None:
    """Video / list / folder inputs exist (globs and ``-`` are expanded later, by the core)."""
    for r in raw:
        if r == "-" or (glob.has_magic(r) and not os.path.lexists(r)):
            continue
        if not os.path.lexists(r):
            raise InputError(f"{r}: no such file or folder")


def at_least(value: float | None, low: float, flag: str) -> None:
    if value is not None and value < low:
        raise InputError(f"{flag} must be at least {low:g}, got {value:g}")


def device(name: str) -> None:
    """The device name's form (whether that GPU exists is for torch to say, later)."""
    import re

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", (name or "auto").strip().lower()):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def ssm_backend(name: str) -> None:
    if (name or "auto").strip().lower() not in ("auto", "reference", "torch", "cpu", "cuda"):
        raise InputError(f"unknown selective-scan backend {name!r}; choose auto, reference, torch, cpu, cuda")


# The names the core accepts, repeated here so that checking them imports nothing heavy (tests/test_startup.py
# checks they equal the core's: runtimes.RUNTIMES/PRECISIONS, video.DECODERS, engines.ENGINES, backends.BACKENDS).
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PRECISION_ALIASES = ("f32", "fp32", "bf16", "f16", "fp16")
DECODERS = ("auto", "pyav", "opencv")
ENGINES = ("local", "ray")
BACKENDS = ("faiss", "milvus")


def runtime(name: str) -> None:
    if (name or "auto").strip().lower() not in RUNTIMES:
        raise InputError(f"runtime must be {', '.join(RUNTIMES)}; got {name!r}")


def precision(name: str) -> None:
    if (name or "auto").strip().lower() not in PRECISIONS + PRECISION_ALIASES:
        raise InputError(f"precision must be {', '.join(PRECISIONS)}; got {name!r}")


def decoder(name: str) -> None:
    if name not in DECODERS:
        raise InputError(f"decoder must be one of {', '.join(DECODERS)}; got {name!r}")


def engine(name: str) -> None:
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


def backend(name: str) -> None:
    if name not in BACKENDS:
        raise InputError(f"unknown index backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}")
