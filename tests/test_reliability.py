"""Bad input, untrusted files and shared outputs: every subcommand answers with one line and exit code 2,
never a traceback, and never leaves a file written half-way or an input overwritten.

Most cases run the real command line in-process (``s5vh_cli.cli.main``) to stay fast; a few run it as a
subprocess, exactly as a user does. docs/RELIABILITY.md maps each kind of fault to the tests here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from library import cli

from s5vh_cli import artifacts
from s5vh_cli.cli import main
from s5vh_cli.demo import make_corpus

S5VH = [sys.executable, "-m", "s5vh_cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "S5VH_DEBUG": ""}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def assert_one_line_error(rc: int, err: str, *names: str) -> str:
    """Exit 2, no traceback, exactly one 'error:' line, naming each of ``names``."""
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2, f"exit code {rc}\n{err}"
    assert len(errors) == 1, err
    for n in names:
        assert n in errors[0], f"{n!r} not named in: {errors[0]}"
    return errors[0]


def is_lock(p: Path) -> bool:
    """Writers' lock files (``.NAME.lock``, empty, kept on purpose: see artifacts.output_lock)."""
    return p.name.startswith(".") and p.name.endswith(".lock") and p.stat().st_size == 0


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (hidden temporaries included, lock files not)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not is_lock(p):
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_sub(*args, ok=(2,), timeout=300) -> subprocess.CompletedProcess:
    p = subprocess.run([*S5VH, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)
    assert p.returncode in ok, f"s5vh {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def copy_with(src: Path, dst: Path, edit) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _replace(f: h5py.File, key: str, data) -> None:
    del f[key]
    f[key] = data


# ----------------------------------------------------------------------------------------------------------
# one small pipeline per module
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    make_corpus(root, per_class=2, queries_per_class=1)
    def run(*args):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            assert e.code in (0, None), f"s5vh {args} -> {e.code}"

    with contextlib.redirect_stdout(open(os.devnull, "w")):
        run("extract", root / "videos", "-o", root / "feats.h5", "--frames", 4, "--threads", 1, "--workers", 0,
            "--quiet")
        run("centers", root / "feats.h5", "-o", root / "centers.h5", "--clusters", 3, "--pca-dim", 8,
            "--bits", "8,16", "--quiet")
        for bits in (16, 8):
            run("train", root / "feats.h5", "--centers", root / "centers.h5", "-o", root / f"model{bits}.pt",
                "--preset", "demo", "--bits", bits, "--epochs", 1, "--threads", 1, "--quiet")
            run("encode", root / f"model{bits}.pt", root / "feats.h5", "-o", root / f"codes{bits}.h5", "--quiet")
        run("index", root / "codes16.h5", "-o", root / "index.bin")
    with h5py.File(root / "labels.h5", "w") as f:
        f["labels"] = np.repeat(np.arange(6), 2)
    # keep the fixture's own artifacts read-only by convention: tests copy what they modify
    return root


@pytest.fixture
def work(pipe, tmp_path):
    """A private copy of the pipeline's artifacts (not the videos) for tests that write."""
    for name in ("feats.h5", "centers.h5", "model16.pt", "model8.pt", "codes16.h5", "codes8.h5", "index.bin",
                 "index.bin.meta.h5", "labels.h5"):
        shutil.copy(pipe / name, tmp_path / name)
    return tmp_path


# ----------------------------------------------------------------------------------------------------------
# damaged and wrong files, for every reader
# ----------------------------------------------------------------------------------------------------------
def _bad_h5(pipe: Path, tmp: Path) -> dict[str, Path]:
    feats = pipe / "feats.h5"
    data = feats.read_bytes()
    out = {"zero": tmp / "zero.h5", "junk": tmp / "junk.h5", "trunc": tmp / "trunc.h5", "folder": tmp / "dir.h5"}
    out["zero"].write_bytes(b"")
    out["junk"].write_bytes(b"this is not an HDF5 file\n" * 20)
    out["trunc"].write_bytes(data[: len(data) // 3])
    out["folder"].mkdir()

    def nan(f):
        a = f["feats"][()]
        a[1, 2, 3] = np.nan
        f["feats"][...] = a

    def inf(f):
        a = f["feats"][()]
        a[0, 0, 0] = -np.inf
        f["feats"][...] = a

    edits = {
        "nan": nan, "inf": inf,
        "nofeats": lambda f: f.__delitem__("feats"),
        "shape2d": lambda f: _replace(f, "feats", f["feats"][()][:, 0, :]),
        "intdtype": lambda f: _replace(f, "feats", f["feats"][()].astype(np.int32)),
        "complex": lambda f: _replace(f, "feats", f["feats"][()].astype(np.complex64)),
        "zerovideos": lambda f: _replace(f, "feats", f["feats"][()][:0]),
        "newversion": lambda f: f.attrs.__setitem__("format_version", 99),
        "textversion": lambda f: f.attrs.__setitem__("format_version", "one"),
        "idsshape": lambda f: _replace(f, "ids", np.array(["a", "b"], dtype=object).astype(artifacts.STR)),
        "idsints": lambda f: _replace(f, "ids", np.arange(12)),
        "pathsfloat": lambda f: _replace(f, "paths", np.zeros(12)),
        "wrongkind": lambda f: f.attrs.__setitem__("s5vh_artifact", "centers"),
    }
    for name, edit in edits.items():
        out[name] = copy_with(feats, tmp / f"{name}.h5", edit)
    return out


FEATURE_FAULTS = ["zero", "junk", "trunc", "folder", "nan", "inf", "nofeats", "shape2d", "intdtype", "complex",
                  "zerovideos", "newversion", "textversion", "idsshape", "idsints", "pathsfloat", "wrongkind",
                  "missing"]
# faults a stage may legitimately ignore because it does not read that part of the file
_IGNORED = {"centers": {"idsshape", "idsints", "pathsfloat"}, "train": {"idsshape", "idsints", "pathsfloat"}}


@pytest.mark.parametrize("fault", FEATURE_FAULTS)
@pytest.mark.parametrize("stage", ["centers", "train", "encode", "query", "eval"])
def test_damaged_features_file(pipe, tmp_path, capsys, stage, fault):
    bad = _bad_h5(pipe, tmp_path)
    path = bad.get(fault, tmp_path / "missing.h5")
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "centers": ["centers", path, "-o", out / "c.h5", "--clusters", 3, "--pca-dim", 8, "--bits", 16, "-q"],
        "train": ["train", path, "--centers", pipe / "centers.h5", "-o", out / "m.pt", "--preset", "demo",
                  "--bits", 16, "--epochs", 1, "-q"],
        "encode": ["encode", pipe / "model16.pt", path, "-o", out / "c.h5", "-q"],
        "query": ["query", pipe / "index.bin", path, "--json"],
        "eval": ["eval", path, "--labels", pipe / "labels.h5", "--model", pipe / "model16.pt", "--json"],
    }[stage]
    rc, _, err = cli(capsys, *args)
    if fault in _IGNORED.get(stage, ()) and rc == 0:
        return
    assert_one_line_error(rc, err, path.name)
    leftovers = [p for p in out.rglob("*") if p.is_file() and not is_lock(p)]
    assert leftovers == [], leftovers


CODE_FAULTS = {
    "zero": lambda f: None,
    "wrongkind": lambda f: f.attrs.__setitem__("s5vh_artifact", "features"),
    "nocodes": lambda f: f.__delitem__("codes"),
    "codesfloat": lambda f: _replace(f, "codes", f["codes"][()].astype(np.float32)),
    "codes3d": lambda f: _replace(f, "codes", f["codes"][()][:, :, None]),
    "bitsattr": lambda f: f.attrs.__setitem__("bits", 24),
    "bitstext": lambda f: f.attrs.__setitem__("bits", "sixteen"),
    "idsints": lambda f: _replace(f, "ids", np.arange(12)),
    "noattrs": lambda f: [f.attrs.__delitem__(k) for k in list(f.attrs)],
}


@pytest.mark.parametrize("fault", sorted(CODE_FAULTS))
@pytest.mark.parametrize("stage", ["index", "add", "query", "eval"])
def test_damaged_codes_file(pipe, work, capsys, stage, fault):
    path = work / f"bad_{fault}.h5"
    if fault == "zero":
        path.write_bytes(b"")
    else:
        copy_with(pipe / "codes16.h5", path, CODE_FAULTS[fault])
    before = snapshot(work)
    args = {
        "index": ["index", path, "-o", work / "new.bin"],
        "add": ["index", "add", work / "index.bin", path],
        "query": ["query", work / "index.bin", path, "--json"],
        "eval": ["eval", path, "--labels", work / "labels.h5", "--json"],
    }[stage]
    rc, _, err = cli(capsys, *args)
    assert_one_line_error(rc, err, path.name)
    assert snapshot(work) == before


CENTER_FAULTS = {
    "labelsrange": lambda f: _replace(f, "pseudo_labels", f["pseudo_labels"][()] + 10),
    "labels2d": lambda f: _replace(f, "pseudo_labels", f["pseudo_labels"][()][:, None]),
    "centersvalues": lambda f: _replace(f, "hash_centers/16", np.zeros_like(f["hash_centers/16"][()])),
    "centersname": lambda f: f.move("hash_centers/16", "hash_centers/sixteen"),
    "nopca": lambda f: f.__delitem__("pca"),
    "pcamissingmean": lambda f: f.__delitem__("pca/mean"),
    "fewerlabels": lambda f: _replace(f, "pseudo_labels", f["pseudo_labels"][()][:5]),
    "centroidstext": lambda f: _replace(f, "centroids", np.array(["a", "b"], dtype=object).astype(artifacts.STR)),
    "badjson": lambda f: f.attrs.__setitem__("config", "{not json"),
}


@pytest.mark.parametrize("fault", sorted(CENTER_FAULTS))
def test_damaged_centers_file(pipe, work, capsys, fault):
    path = copy_with(pipe / "centers.h5", work / f"bad_{fault}.h5", CENTER_FAULTS[fault])
    before = snapshot(work)
    rc, _, err = cli(capsys, "train", work / "feats.h5", "--centers", path, "-o", work / "m.pt", "--preset", "demo",
                     "--bits", 16, "--epochs", 1, "-q")
    assert_one_line_error(rc, err, path.name)
    after = snapshot(work)
    assert after == before, set(after) ^ set(before)
    assert not (work / "m.pt.run").exists()


@pytest.mark.parametrize("fault", ["zero", "junk", "hdf5", "truncated", "train_state", "tensor", "wrongconfig",
                                   "folder"])
@pytest.mark.parametrize("stage", ["encode", "query", "eval"])
def test_damaged_model_file(pipe, work, capsys, stage, fault):
    import torch

    path = work / f"bad_{fault}.pt"
    if fault == "zero":
        path.write_bytes(b"")
    elif fault == "junk":
        path.write_bytes(os.urandom(4096))
    elif fault == "hdf5":
        shutil.copy(pipe / "feats.h5", path)
    elif fault == "truncated":
        path.write_bytes((pipe / "model16.pt").read_bytes()[:50_000])
    elif fault == "train_state":
        shutil.copy(pipe / "model16.pt.run" / "last.pt", path)
    elif fault == "tensor":
        torch.save(torch.zeros(3), path)
    elif fault == "wrongconfig":
        d = torch.load(pipe / "model16.pt", weights_only=True)
        d["model_config"]["d_model"] = 7
        torch.save(d, path)
    elif fault == "folder":
        path.mkdir()
    before = snapshot(work)
    args = {
        "encode": ["encode", path, work / "feats.h5", "-o", work / "c.h5", "-q"],
        "query": ["query", work / "index.bin", work / "feats.h5", "--model", path, "--json"],
        "eval": ["eval", work / "feats.h5", "--labels", work / "labels.h5", "--model", path, "--json"],
    }[stage]
    rc, _, err = cli(capsys, *args)
    assert_one_line_error(rc, err, path.name)
    assert snapshot(work) == before


@pytest.mark.parametrize("fault", ["noindex", "nometa", "swapped", "junkindex", "zeroindex", "metakind",
                                   "metacodes", "otherpair"])
# every fault through a reader (query) and a writer (add) by default; info and remove open the index the same
# way and run in the slow run (about 19 s)
@pytest.mark.parametrize("stage", ["query", pytest.param("info", marks=pytest.mark.slow), "add",
                                   pytest.param("remove", marks=pytest.mark.slow)])
def test_damaged_index(pipe, work, capsys, stage, fault):
    idx, meta = work / "index.bin", work / "index.bin.meta.h5"
    if fault == "noindex":
        idx.unlink()
    elif fault == "nometa":
        meta.unlink()
    elif fault == "swapped":
        shutil.copy(work / "codes16.h5", idx)
    elif fault == "junkindex":
        idx.write_bytes(os.urandom(200))
    elif fault == "zeroindex":
        idx.write_bytes(b"")
    elif fault == "metakind":
        with h5py.File(meta, "r+") as f:
            f.attrs["s5vh_artifact"] = "codes"
    elif fault == "metacodes":
        with h5py.File(meta, "r+") as f:
            _replace(f, "keys", f["keys"][()][:3])
    elif fault == "otherpair":  # index of one build, metadata of another
        rc, _, _ = cli(capsys, "index", work / "codes8.h5", "-o", work / "other.bin")
        assert rc == 0
        shutil.copy(work / "other.bin", idx)
    before = snapshot(work)
    args = {
        "query": ["query", idx, work / "codes16.h5", "--json"],
        "info": ["index", "info", idx, "--json"],
        "add": ["index", "add", idx, work / "codes16.h5", "--on-existing", "replace"],
        "remove": ["index", "remove", idx, "--key", 0],
    }[stage]
    rc, _, err = cli(capsys, *args)
    assert_one_line_error(rc, err, "index.bin")
    assert snapshot(work) == before


# ----------------------------------------------------------------------------------------------------------
# artifacts that do not belong together
# ----------------------------------------------------------------------------------------------------------
def test_mismatched_pairs(pipe, work, capsys):
    frames8 = copy_with(pipe / "feats.h5", work / "frames8.h5",
                        lambda f: _replace(f, "feats", np.concatenate([f["feats"][()]] * 2, axis=1)))
    dim = copy_with(pipe / "feats.h5", work / "dim.h5", lambda f: _replace(f, "feats", f["feats"][()][:, :, :512]))
    cases = [
        (["index", "add", work / "index.bin", work / "codes8.h5"], "codes8.h5"),  # 8 vs 16 bits
        (["query", work / "index.bin", work / "codes8.h5"], "codes8.h5"),
        (["query", work / "index.bin", work / "feats.h5", "--model", work / "model8.pt"], "model8.pt"),
        (["index", work / "codes16.h5", work / "codes8.h5", "-o", work / "mixed.bin"], "codes8.h5"),
        (["eval", work / "codes16.h5", "--labels", work / "labels.h5", "--database", work / "codes8.h5",
          "--db-labels", work / "labels.h5"], "codes8.h5"),
        (["encode", work / "model16.pt", frames8, "-o", work / "x.h5", "-q"], "frames8.h5"),
        (["encode", work / "model16.pt", dim, "-o", work / "x.h5", "-q"], "dim.h5"),
        (["query", work / "index.bin", frames8, "--json"], "frames8.h5"),
        (["train", frames8, "--centers", work / "centers.h5", "-o", work / "m.pt", "--preset", "demo",
          "--bits", 16, "--epochs", 1, "-q"], "centers.h5"),
        (["train", work / "feats.h5", "--centers", work / "centers.h5", "-o", work / "m.pt", "--preset", "demo",
          "--bits", 32, "--epochs", 1, "-q"], "centers.h5"),
    ]
    # codes of the same length from another model: same bits, other model sha256
    other = copy_with(pipe / "codes16.h5", work / "othermodel.h5",
                      lambda f: f.attrs.__setitem__("model_sha256", "0" * 64))
    cases.append((["index", "add", work / "index.bin", other], "othermodel.h5"))
    cases.append((["query", work / "index.bin", other, "--json"], "othermodel.h5"))
    before = snapshot(work)
    for args, name in cases:
        rc, _, err = cli(capsys, *args)
        assert_one_line_error(rc, err, name)
        assert snapshot(work) == before, args


# ----------------------------------------------------------------------------------------------------------
# the output would destroy an input
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["encode_over_features", "encode_over_model", "index_over_codes",
                                  "train_over_features", "train_over_centers", "centers_over_features",
                                  "extract_over_video"])
def test_output_never_overwrites_an_input(pipe, work, capsys, case):
    video = work / "clip.mp4"
    shutil.copy(next((pipe / "videos").rglob("*.mp4")), video)
    args, victim = {
        "encode_over_features": (["encode", work / "model16.pt", work / "feats.h5", "-o", work / "feats.h5"],
                                 "feats.h5"),
        "encode_over_model": (["encode", work / "model16.pt", work / "feats.h5", "-o", work / "model16.pt"],
                              "model16.pt"),
        "index_over_codes": (["index", work / "codes16.h5", "-o", work / "codes16.h5"], "codes16.h5"),
        "train_over_features": (["train", work / "feats.h5", "--centers", work / "centers.h5", "-o",
                                 work / "feats.h5", "--preset", "demo", "--bits", 16, "--epochs", 1], "feats.h5"),
        "train_over_centers": (["train", work / "feats.h5", "--centers", work / "centers.h5", "-o",
                                work / "centers.h5", "--preset", "demo", "--bits", 16, "--epochs", 1], "centers.h5"),
        "centers_over_features": (["centers", work / "feats.h5", "-o", work / "feats.h5"], "feats.h5"),
        "extract_over_video": (["extract", video, "-o", video, "--frames", 4, "--workers", 0], "clip.mp4"),
    }[case]
    before = snapshot(work)
    rc, _, err = cli(capsys, *args, *([] if args[0] == "index" else ["-q"]))
    assert_one_line_error(rc, err, victim)
    assert snapshot(work) == before


# ----------------------------------------------------------------------------------------------------------
# videos: corrupt, truncated, empty, not videos, odd names
# ----------------------------------------------------------------------------------------------------------
def _bad_videos(pipe: Path, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = sorted((pipe / "videos").rglob("*.mp4"))[0].read_bytes()
    made = {
        "zero.mp4": b"",
        "text.mp4": b"hello, not a video\n" * 50,
        "truncated.mp4": good[: len(good) // 4],
        "header_only.mp4": good[:64],
        "garbage.avi": os.urandom(10_000),
        "flipped.mp4": good[:200] + bytes(b ^ 0xFF for b in good[200:2000]) + good[2000:],
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    return [folder / n for n in made]


def test_extract_only_bad_videos_fails_cleanly(pipe, tmp_path, capsys):
    _bad_videos(pipe, tmp_path / "bad")
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = cli(capsys, "extract", tmp_path / "bad", "-o", out / "f.h5", "--frames", 4, "--workers", 0,
                     "--threads", 1, "-q")
    # flipped.mp4 may still decode (its container survives); then the run legitimately succeeds
    if rc == 0:
        feats = artifacts.read_features(out / "f.h5")
        assert feats.ids == ["flipped.mp4"]
        assert {Path(p).name for p, _ in artifacts.read_failures(out / "f.h5")} >= {"zero.mp4", "text.mp4",
                                                                                       "garbage.avi"}
        return
    assert_one_line_error(rc, err, "no video could be extracted")
    assert [p for p in out.iterdir() if not is_lock(p)] == []


def test_extract_mixed_folder_records_failures(pipe, tmp_path, capsys):
    src = tmp_path / "mixed"
    shutil.copytree(pipe / "videos" / "red_circle", src)
    bad = _bad_videos(pipe, src)
    rc, out, err = cli(capsys, "extract", src, "-o", tmp_path / "f.h5", "--frames", 4, "--workers", 0,
                       "--threads", 1, "--json")
    assert rc == 0, err
    assert "Traceback" not in err
    feats = artifacts.read_features(tmp_path / "f.h5")
    assert {"clip_000.mp4", "clip_001.mp4"} <= set(feats.ids)
    failed = {Path(p).name for p, _ in artifacts.read_failures(tmp_path / "f.h5")}
    assert {"zero.mp4", "text.mp4", "garbage.avi", "header_only.mp4"} <= failed
    assert failed | set(feats.ids) == {p.name for p in bad} | {"clip_000.mp4", "clip_001.mp4"}
    rc, _, err = cli(capsys, "extract", src, "-o", tmp_path / "g.h5", "--frames", 4, "--workers", 0, "--threads", 1,
                     "--strict", "-q")
    assert_one_line_error(rc, err, "--strict")
    assert (tmp_path / "g.h5").exists()  # --strict still writes the good ones, as documented


def test_extract_odd_names(pipe, tmp_path, capsys, monkeypatch):
    src = tmp_path / "odd"
    src.mkdir()
    clips = sorted((pipe / "videos").rglob("*.mp4"))
    names = ["with space.mp4", "-leading-dash.mp4", "quote'and\"dq.mp4", "ünïcode.mp4"]
    for n, c in zip(names, clips, strict=False):
        shutil.copy(c, src / n)
    raw = os.fsencode(str(src)) + b"/latin1-\xe9\xff.mp4"  # not valid UTF-8
    shutil.copy(clips[5], os.fsdecode(raw))
    monkeypatch.chdir(src)  # ./-leading-dash.mp4 is how a user names it on a command line
    rc, _, err = cli(capsys, "extract", "./-leading-dash.mp4", "with space.mp4", "-o", tmp_path / "a.h5",
                     "--frames", 4, "--workers", 0, "--threads", 1, "-q")
    assert rc == 0, err
    rc, _, err = cli(capsys, "extract", "-o", tmp_path / "b.h5", "--frames", 4, "--workers", 0, "--threads", 1,
                     "-q", "--", "-leading-dash.mp4")
    assert rc == 0, err
    monkeypatch.undo()
    rc, _, err = cli(capsys, "extract", src, "-o", tmp_path / "f.h5", "--frames", 4, "--workers", 0, "--threads", 1,
                     "-q")
    assert rc == 0, err
    feats = artifacts.read_features(tmp_path / "f.h5")
    assert feats.n == 5
    assert os.fsdecode(raw) in [os.path.join(str(src), os.path.basename(p)) for p in feats.paths]
    assert artifacts.read_failures(tmp_path / "f.h5") == []


@pytest.mark.parametrize("case", ["missing", "empty_folder", "only_text_files", "out_is_folder", "no_out_folder",
                                  "empty_list", "list_of_missing", "bad_glob"])
def test_extract_bad_arguments(tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "list.txt").write_text("")
    (tmp_path / "missing.txt").write_text("nope1.mp4\nnope2.mp4\n")
    inp, out, name = {
        "missing": (tmp_path / "nope.mp4", tmp_path / "f.h5", "nope.mp4"),
        "empty_folder": (tmp_path / "empty", tmp_path / "f.h5", "empty"),
        "only_text_files": (tmp_path / "texts", tmp_path / "f.h5", "texts"),
        "out_is_folder": (tmp_path / "texts", tmp_path / "empty", "empty"),
        "no_out_folder": (tmp_path / "texts", tmp_path / "nofolder" / "f.h5", "nofolder"),
        "empty_list": (tmp_path / "list.txt", tmp_path / "f.h5", "list.txt"),
        "list_of_missing": (tmp_path / "missing.txt", tmp_path / "f.h5", "nope1.mp4"),
        "bad_glob": (str(tmp_path / "*.nothing"), tmp_path / "f.h5", "*.nothing"),
    }[case]
    before = snapshot(tmp_path)
    rc, _, err = cli(capsys, "extract", inp, "-o", out, "--frames", 4, "--workers", 0, "-q")
    assert_one_line_error(rc, err, name)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------------------
# permissions, read-only folders, full disks
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def read_only_folder(folder: Path):
    """Make ``folder`` unwritable: chmod for normal users; as root chmod does not stop writes, so use the
    immutable attribute (chattr +i), and skip when that is not possible either."""
    if not IS_ROOT:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                         capture_output=True).returncode:
        pytest.skip("running as root and chattr +i is unavailable here: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.parametrize("stage", ["extract", "centers", "train", "encode", "index", "add", "remove"])
def test_read_only_output_folder(pipe, work, tmp_path_factory, capsys, stage):
    ro = tmp_path_factory.mktemp("ro")
    for name in ("index.bin", "index.bin.meta.h5"):
        shutil.copy(work / name, ro / name)
    args = {
        "extract": ["extract", pipe / "videos" / "red_circle", "-o", ro / "f.h5", "--frames", 4, "--workers", 0,
                    "--threads", 1],
        "centers": ["centers", work / "feats.h5", "-o", ro / "c.h5", "--clusters", 3, "--pca-dim", 8, "--bits", 16],
        "train": ["train", work / "feats.h5", "--centers", work / "centers.h5", "-o", ro / "m.pt", "--preset", "demo",
                  "--bits", 16, "--epochs", 1, "--threads", 1],
        "encode": ["encode", work / "model16.pt", work / "feats.h5", "-o", ro / "c.h5"],
        "index": ["index", work / "codes16.h5", "-o", ro / "i.bin"],
        "add": ["index", "add", ro / "index.bin", work / "codes16.h5", "--on-existing", "replace"],
        "remove": ["index", "remove", ro / "index.bin", "--key", 3],
    }[stage]
    with read_only_folder(ro):
        before = snapshot(ro)
        rc, _, err = cli(capsys, *args, "-q") if stage not in ("index", "add", "remove") else cli(capsys, *args)
        assert_one_line_error(rc, err, ro.name)
        assert snapshot(ro) == before


def test_unreadable_inputs(pipe, work, capsys):
    """Unreadable files: chmod 000 for normal users; as root (where chmod does not stop reads) a path through
    a non-folder, which fails with ENOTDIR the same way at open time."""
    if IS_ROOT:
        paths = {k: work / "labels.h5" / k for k in ("feats.h5", "codes.h5", "model.pt", "clip.mp4")}
    else:
        paths = {}
        for k, src in (("feats.h5", "feats.h5"), ("codes.h5", "codes16.h5"), ("model.pt", "model16.pt")):
            paths[k] = work / f"locked_{k}"
            shutil.copy(work / src, paths[k])
            paths[k].chmod(0)
        paths["clip.mp4"] = work / "locked.mp4"
        shutil.copy(sorted((pipe / "videos").rglob("*.mp4"))[0], paths["clip.mp4"])
        paths["clip.mp4"].chmod(0)
    cases = [
        ["centers", paths["feats.h5"], "-o", work / "c.h5"],
        ["encode", work / "model16.pt", paths["feats.h5"], "-o", work / "c.h5"],
        ["encode", paths["model.pt"], work / "feats.h5", "-o", work / "c.h5"],
        ["index", paths["codes.h5"], "-o", work / "i.bin"],
        ["query", work / "index.bin", paths["codes.h5"]],
        ["eval", paths["codes.h5"], "--labels", work / "labels.h5"],
        ["extract", paths["clip.mp4"], "-o", work / "f2.h5", "--workers", 0, "--frames", 4],
    ]
    before = snapshot(work)
    for args in cases:
        rc, _, err = cli(capsys, *args)
        assert_one_line_error(rc, err)
        assert snapshot(work) == before, args


def _enospc_after(monkeypatch, target: str, n_ok: int = 0):
    """Make ``os.<target>`` fail with ENOSPC after ``n_ok`` successful calls (a disk filling up)."""
    real = getattr(os, target)
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **k)

    monkeypatch.setattr(os, target, failing)


@pytest.mark.parametrize("stage", ["extract", "centers", "train", "encode", "index", "add", "remove"])
def test_disk_full_in_process(pipe, work, monkeypatch, capsys, stage):
    """ENOSPC at the first fsync: the command says so in one line and the previous output is untouched."""
    vids = pipe / "videos" / "red_circle"
    # previous outputs that must survive
    shutil.copy(work / "codes16.h5", work / "prev_codes.h5")
    args, victim = {
        "extract": (["extract", vids, "-o", work / "feats.h5", "--frames", 4, "--workers", 0, "--threads", 1],
                    "feats.h5"),
        "centers": (["centers", work / "feats.h5", "-o", work / "centers.h5", "--clusters", 3, "--pca-dim", 8,
                     "--bits", 16], "centers.h5"),
        "train": (["train", work / "feats.h5", "--centers", work / "centers.h5", "-o", work / "model16.pt",
                   "--preset", "demo", "--bits", 16, "--epochs", 1, "--threads", 1, "--force"], "model16.pt"),
        "encode": (["encode", work / "model16.pt", work / "feats.h5", "-o", work / "codes16.h5"], "codes16.h5"),
        "index": (["index", work / "prev_codes.h5", "-o", work / "index.bin"], "index.bin"),
        "add": (["index", "add", work / "index.bin", work / "codes8.h5"], "index.bin"),
        "remove": (["index", "remove", work / "index.bin", "--key", 2], "index.bin"),
    }[stage]
    if stage == "extract":  # a different video set, so that extract has work to do and must rewrite feats.h5
        args[1] = pipe / "queries"
        shutil.copy(work / "feats.h5", work / "keep.h5")
        args[3] = work / "keep.h5"
        victim = "keep.h5"
    if stage == "add":  # codes that may be added (same model), so that the write is reached
        args[3] = work / "prev_codes.h5"
        args += ["--on-existing", "replace"]
    before = snapshot(work)
    _enospc_after(monkeypatch, "fsync")
    rc, _, err = cli(capsys, *args) if stage in ("index", "add", "remove") else cli(capsys, *args, "-q")
    monkeypatch.undo()
    line = assert_one_line_error(rc, err)
    assert "no space left" in line.lower(), line
    after = snapshot(work)
    assert after.get(victim) == before.get(victim)
    assert not [k for k in after if k.endswith(".tmp") or "/." in f"/{k}" and k not in before]
    if stage == "extract":
        # the journal of the interrupted run is kept for resuming, nothing else is new
        assert set(after) - set(before) <= {"keep.h5.partial"}


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only): a real full disk."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if not IS_ROOT:
        pytest.skip("mounting a small tmpfs needs root; the in-process ENOSPC tests cover this case")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_disk(pipe, work, tiny_tmpfs, capsys):
    (tiny_tmpfs / "filler").write_bytes(b"\0" * 900_000)
    shutil.copy(work / "codes16.h5", tiny_tmpfs / "codes.h5")
    before = snapshot(tiny_tmpfs)
    rc, _, err = cli(capsys, "encode", work / "model16.pt", work / "feats.h5", "-o", tiny_tmpfs / "codes.h5", "-q")
    # 12 codes fit in 100 kB: the encode itself may succeed; the model copy below cannot
    if rc == 0:
        before = snapshot(tiny_tmpfs)
    rc, _, err = cli(capsys, "train", work / "feats.h5", "--centers", work / "centers.h5", "-o",
                     tiny_tmpfs / "m.pt", "--preset", "demo", "--bits", 16, "--epochs", 1, "--threads", 1, "-q")
    line = assert_one_line_error(rc, err)
    assert "no space left" in line.lower(), line
    after = snapshot(tiny_tmpfs)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if k.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------
# untrusted files
# ----------------------------------------------------------------------------------------------------------
class _Payload:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch_save", "raw_pickle", "nested_in_state_dict"])
@pytest.mark.parametrize("stage", ["encode", "query", "eval", "resume"])
def test_pickle_payload_never_runs(pipe, work, capsys, how, stage):
    import pickle

    import torch

    marker = work / "PWNED"
    _Payload.marker = str(marker)
    evil = work / "evil.pt"
    if how == "torch_save":
        torch.save({"s5vh_artifact": "model", "format_version": 1, "x": _Payload()}, evil)
    elif how == "raw_pickle":
        evil.write_bytes(pickle.dumps(_Payload()))
    else:
        d = torch.load(pipe / "model16.pt", weights_only=True)
        d["state_dict"]["evil"] = _Payload()
        torch.save(d, evil)
    if stage == "resume":
        run = work / "m.pt.run"
        run.mkdir()
        shutil.copy(evil, run / "last.pt")
        args = ["train", work / "feats.h5", "--centers", work / "centers.h5", "-o", work / "m.pt", "--preset", "demo",
                "--bits", 16, "--epochs", 1, "--resume", "-q"]
        name = "last.pt"
    else:
        args = {
            "encode": ["encode", evil, work / "feats.h5", "-o", work / "c.h5", "-q"],
            "query": ["query", work / "index.bin", work / "feats.h5", "--model", evil],
            "eval": ["eval", work / "feats.h5", "--labels", work / "labels.h5", "--model", evil],
        }[stage]
        name = "evil.pt"
    rc, _, err = cli(capsys, *args)
    line = assert_one_line_error(rc, err, name)
    assert not marker.exists()
    if stage != "query":
        assert "refused" in line


def test_stored_paths_never_choose_where_outputs_go(pipe, work, capsys, tmp_path_factory):
    """Ids and paths inside artifacts come from whoever made the file: a features file whose ids and paths
    point outside the output folder must not make any command write there."""
    outside = tmp_path_factory.mktemp("outside")
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    evil_ids = [f"../../{outside.name}/victim.txt", str(victim), "/etc/passwd"] + [f"v{i}" for i in range(9)]

    def edit(f):
        _replace(f, "ids", np.array(evil_ids, dtype=object).astype(artifacts.STR))
        del f["paths"]
        ds = f.create_dataset("paths", shape=(12,), dtype=artifacts.BYTES)
        for i, p in enumerate(evil_ids):
            ds[i] = artifacts.encode_path(p)
        f.attrs["weights_file"] = f"../../{outside.name}/victim.txt"

    feats = copy_with(pipe / "feats.h5", work / "evil_feats.h5", edit)
    out = tmp_path_factory.mktemp("outdir")
    steps = [
        ["encode", work / "model16.pt", feats, "-o", out / "codes.h5", "-q"],
        ["index", out / "codes.h5", "-o", out / "index.bin"],
        ["index", "remove", out / "index.bin", "--id", evil_ids[0]],
        ["query", out / "index.bin", feats, "--model", work / "model16.pt", "--json", "--exclude-self"],
        ["extract", pipe / "videos" / "red_circle", "-o", feats, "--frames", 4, "--workers", 0, "--threads", 1, "-q"],
    ]
    for args in steps:
        rc, _, err = cli(capsys, *args)
        assert "Traceback" not in err and "internal error" not in err, err
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert {p.name for p in out.iterdir() if not is_lock(p)} <= {"codes.h5", "index.bin", "index.bin.meta.h5"}


# ----------------------------------------------------------------------------------------------------------
# concurrency
# ----------------------------------------------------------------------------------------------------------
def test_locked_output_fails_clearly_or_waits(work, capsys):
    """A second writer of the same output either waits for the lock (centers, encode, index) or refuses at
    once with one line (extract, train: long runs)."""
    import fcntl

    lock = artifacts.lock_path(work / "busy.h5")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = threading.Event()

    def release_later():
        time.sleep(1.0)
        released.set()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    t = threading.Thread(target=release_later)
    t.start()
    try:
        rc, _, err = cli(capsys, "encode", work / "model16.pt", work / "feats.h5", "-o", work / "busy.h5", "-q")
        assert rc == 0, err
        assert released.is_set()  # it waited for the other writer instead of interleaving with it
    finally:
        t.join()
    assert artifacts.read_codes(work / "busy.h5").n == 12

    fd = os.open(artifacts.lock_path(work / "f.h5"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        rc, _, err = cli(capsys, "extract", work / "nothing", "-o", work / "f.h5", "-q")
        assert_one_line_error(rc, err)
        (work / "vid").mkdir()
        rc, _, err = cli(capsys, "extract", work / "vid", "-o", work / "f.h5", "-q")
        assert rc == 2
    finally:
        os.close(fd)


def test_two_processes_writing_one_index_serialise(work):
    """Two `s5vh index add` at once on one index, each adding other videos: both additions land (the lock
    serialises them) and the index/metadata pair stays consistent."""
    base = artifacts.read_codes(work / "codes16.h5")
    for name in ("more_a.h5", "more_b.h5"):
        c = artifacts.read_codes(work / "codes16.h5")
        c.paths = [p.replace("/videos/", f"/videos_{name[5]}/") for p in base.paths]
        artifacts.write_codes(work / name, c, artifacts.provenance("encode"),
                              extra_attrs={k: v for k, v in base.attrs.items() if k in ("backbone", "sampling", "frames")})
    procs = [subprocess.Popen([*S5VH, "index", "add", str(work / "index.bin"), str(work / c), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
             for c in ("more_a.h5", "more_b.h5")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(b"Traceback" not in e for _, e in outs)
    from s5vh_cli.search.index import open_index

    h = open_index(work / "index.bin")
    assert h.n == 36 and h.backend.ntotal == 36 and len(set(h.keys.tolist())) == 36


def test_every_writer_is_atomic_and_locked():
    """Static check: each core module that writes an artifact goes through atomic_output (and output_lock)."""
    root = Path(artifacts.__file__).parent
    writers = {"artifacts.py": ("write_features", "write_centers", "write_codes"), "checkpoint.py": ("save_model",),
               "search/index.py": ("write_index",), "extract.py": ("_finalise",), "train.py": ("_write_metrics",),
               "plots.py": ("_save",), "report.py": ("write_html",)}
    for mod, funcs in writers.items():
        src = (root / mod).read_text()
        for fn in funcs:
            body = src.split(f"def {fn}(", 1)[1].split("\ndef ", 1)[0]
            assert "atomic_output(" in body, f"{mod}:{fn} does not write through atomic_output"
    # every torch.load goes through weights_only=True
    for py in root.rglob("*.py"):
        for ln in py.read_text().splitlines():
            if "torch.load(" in ln and "def " not in ln:
                assert "weights_only=True" in ln, f"{py.name}: {ln.strip()}"
    # and no h5py.File opened for writing outside the atomic temporaries
    for py in root.rglob("*.py"):
        for ln in py.read_text().splitlines():
            if "h5py.File(" in ln and ('"w"' in ln or '"a"' in ln or '"r+"' in ln):
                assert "tmp" in ln, f"{py.name}: {ln.strip()}"


# ----------------------------------------------------------------------------------------------------------
# the real console script: no traceback, one line, for a few representative faults
# ----------------------------------------------------------------------------------------------------------
def test_subprocess_representative_faults(pipe, tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"junk" * 100)
    for args, name in [
        (["centers", junk, "-o", tmp_path / "c.h5"], "junk.h5"),
        (["encode", pipe / "feats.h5", pipe / "feats.h5", "-o", tmp_path / "c.h5"], "feats.h5"),
        (["query", pipe / "index.bin", junk], "junk.h5"),
    ]:
        p = run_sub(*args)
        assert "Traceback" not in p.stderr
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and name in errors[0], p.stderr
    p = run_sub("centers", junk, "-o", tmp_path / "c.h5", "--debug", ok=(1, 2))
    assert "Traceback" in p.stderr  # --debug shows it
    assert list(tmp_path.iterdir()) == [junk]
