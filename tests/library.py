"""A small real video library shared by the library-workflow tests: 12 generated clips, a model, an index."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from s5vh_cli import api, artifacts
from s5vh_cli.cli import main
from s5vh_cli.demo import make_corpus


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return rc, out, err


def run(*args) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            assert e.code in (0, None), f"s5vh {args} -> {e.code}: {err.getvalue()}"


def entries(index: Path) -> dict[str, np.ndarray]:
    """Every per-entry dataset of an index's metadata, by name."""
    out = {}
    with h5py.File(index.with_name(index.name + ".meta.h5"), "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def same_entries(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="session")
def lib(tmp_path_factory):
    """A library of 12 short clips, a model, and its index (built from the folder with relative paths)."""
    root = tmp_path_factory.mktemp("lib")
    make_corpus(root, per_class=2, queries_per_class=0, size=64, n_frames=16)
    cwd = os.getcwd()
    os.chdir(root)  # extract from a relative folder: stored paths must still be absolute
    try:
        run("extract", "videos", "-o", "feats.h5", "--frames", 4, "--threads", 1, "--workers", 0, "--quiet")
    finally:
        os.chdir(cwd)
    run("train", root / "feats.h5", "-o", root / "model.pt", "--preset", "demo", "--bits", 16, "--epochs", 1,
        "--threads", 1, "--quiet")
    run("encode", root / "model.pt", root / "feats.h5", "-o", root / "codes.h5", "--quiet")
    run("index", root / "codes.h5", "-o", root / "index.bin")
    return root


@pytest.fixture
def work(lib, tmp_path):
    """A private copy of the library (videos, model, index) that a test may change."""
    return copy_library(lib, tmp_path)


def copy_library(lib: Path, tmp_path: Path) -> Path:
    """Copy the library's videos, model and codes into ``tmp_path`` and index them there."""
    shutil.copytree(lib / "videos", tmp_path / "videos")
    for name in ("model.pt", "feats.h5", "codes.h5"):
        shutil.copy(lib / name, tmp_path / name)
    # rebuild the index from codes whose paths point into this copy
    c = artifacts.read_codes(lib / "codes.h5")
    c.paths = [p.replace(str(lib), str(tmp_path)) for p in c.paths]
    artifacts.write_codes(tmp_path / "codes.h5", c, artifacts.provenance("encode"),
                          extra_attrs={k: v for k, v in c.attrs.items() if k in ("backbone", "sampling", "frames",
                                                                                  "model_path", "backbone_sha256")}
                          | {"model_path": str(tmp_path / "model.pt")})
    api.build(tmp_path / "codes.h5", tmp_path / "index.bin")
    return tmp_path


