"""Property-based tests: artifact readers given random bytes, random HDF5 structures and damaged real
artifacts raise only S5VHError (one line, naming the file); the command line given random argv from a
grammar of options and junk values exits 0, 1 or 2 and never shows a traceback or an internal error.

Example counts are modest in the default run; `pytest -m slow tests/test_fuzz.py` runs many more.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s5vh_cli import artifacts
from s5vh_cli.cli import main
from s5vh_cli.demo import make_corpus
from s5vh_cli.errors import S5VHError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _readers(tmp: Path):
    """(name, callable(path)) for every reader of an untrusted file."""
    from s5vh_cli.checkpoint import load_model, safe_torch_load
    from s5vh_cli.evaluate import load_labels
    from s5vh_cli.extract import _read_journal
    from s5vh_cli.search.index import open_index

    def index_meta(p: Path):
        # p plays the metadata; a valid tiny index file sits beside it
        idx = p.with_name("fz.bin")
        shutil.copy(p, p.with_name("fz.bin.meta.h5"))
        if not idx.exists():
            import faiss

            faiss.write_index_binary(faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(16)), str(idx))
        return open_index(idx, retries=0)

    def index_bin(p: Path):
        meta = p.with_name(p.name + ".meta.h5")
        if not meta.exists():
            with h5py.File(meta, "w") as f:
                f.attrs["s5vh_artifact"] = "index"
                f.attrs["format_version"] = 1
                f.attrs["bits"] = 16
                f.attrs["index_sha256"] = "x"
                f["keys"] = np.zeros(0, np.int64)
                f["codes"] = np.zeros((0, 2), np.uint8)
        return open_index(p, retries=0)

    return [
        ("features", artifacts.read_features),
        ("centers", artifacts.read_centers),
        ("codes", artifacts.read_codes),
        ("failures", artifacts.read_failures),
        ("labels", lambda p: load_labels(p, n=4)),
        ("model", load_model),
        ("torch", safe_torch_load),
        ("journal", _read_journal),
        ("index_meta", index_meta),
        ("index_bin", index_bin),
    ]


def only_s5vh_errors(fn, path: Path) -> None:
    try:
        fn(path)
    except S5VHError as e:
        msg = str(e)
        assert "\n" not in msg.strip(), msg
        assert msg.strip()
    # anything else propagates and fails the test with its traceback


# ----------------------------------------------------------------------------------------------------------
# random bytes
# ----------------------------------------------------------------------------------------------------------
_PREFIXES = [b"", b"\x89HDF\r\n\x1a\n", b"PK\x03\x04", b"S5VH-extract-journal 1\n", b"\x80\x02"]


@FAST
@given(prefix=st.sampled_from(_PREFIXES), body=st.binary(max_size=2048), which=st.integers(0, 9))
def test_random_bytes(tmp_path_factory, prefix, body, which):
    tmp = tmp_path_factory.mktemp("fzb")
    p = tmp / "f.h5"
    p.write_bytes(prefix + body)
    name, fn = _readers(tmp)[which]
    only_s5vh_errors(fn, p)


# ----------------------------------------------------------------------------------------------------------
# random HDF5 structures
# ----------------------------------------------------------------------------------------------------------
_KEYS = ["feats", "ids", "paths", "codes", "keys", "pseudo_labels", "centroids", "kmeans_centroids", "labels",
         "hash_centers", "hash_centers/16", "hash_centers/8", "hash_centers/x", "pca", "pca/mean",
         "pca/components", "meta", "meta/fps", "failures", "failures/paths", "failures/reasons", "q_label"]
_DTYPES = ["float32", "float16", "float64", "int64", "int8", "uint8", "bool", "complex64", "str", "bytes"]
_ATTR_VALUES = st.one_of(st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                         st.sampled_from(["features", "centers", "codes", "index", "{}", "[]", "{\"a\": 1}",
                                          "null"]),
                         st.lists(st.integers(0, 3), max_size=3))
_ATTR_KEYS = ["s5vh_artifact", "format_version", "bits", "frames", "feature_dim", "config", "params", "sources",
              "next_key", "index_sha256", "model_sha256", "index_type", "backbone", "sampling"]


@st.composite
def h5_layouts(draw):
    kind = draw(st.sampled_from(["features", "centers", "codes", "index", None, "model"]))
    attrs = {"s5vh_artifact": kind} if kind else {}
    attrs["format_version"] = draw(st.sampled_from([1, 1, 1, 0, 2, "1", 1.5, "x"]))
    for k in draw(st.lists(st.sampled_from(_ATTR_KEYS), max_size=5)):
        attrs[k] = draw(_ATTR_VALUES)
    datasets = []
    for key in draw(st.lists(st.sampled_from(_KEYS), max_size=6, unique=True)):
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=4)))
        dtype = draw(st.sampled_from(_DTYPES))
        special = draw(st.sampled_from([None, None, np.nan, np.inf, -1, 99]))
        datasets.append((key, shape, dtype, special))
    return attrs, datasets


def _write_layout(path: Path, layout) -> None:
    attrs, datasets = layout
    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            if v is not None:
                f.attrs[k] = v
        for key, shape, dtype, special in datasets:
            if any(key.startswith(other + "/") or other.startswith(key + "/") for other in f):
                continue
            try:
                if dtype == "str":
                    data = np.array(["a" * (i % 3) for i in range(int(np.prod(shape)))], dtype=object)
                    f.create_dataset(key, data=data.reshape(shape), dtype=artifacts.STR)
                elif dtype == "bytes":
                    ds = f.create_dataset(key, shape=shape, dtype=artifacts.BYTES)
                    del ds
                else:
                    data = np.ones(shape, dtype=dtype)
                    if special is not None and data.size:
                        with np.errstate(all="ignore"):
                            data.flat[0] = special if dtype.startswith(("float", "complex")) else 0
                    f.create_dataset(key, data=data)
            except (ValueError, TypeError):
                continue  # a layout h5py itself refuses to write


@FAST
@given(layout=h5_layouts(), which=st.integers(0, 8))
def test_random_hdf5_structures(tmp_path_factory, layout, which):
    tmp = tmp_path_factory.mktemp("fzh")
    p = tmp / "f.h5"
    _write_layout(p, layout)
    name, fn = _readers(tmp)[which]
    only_s5vh_errors(fn, p)


# ----------------------------------------------------------------------------------------------------------
# real artifacts with damaged bytes
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("fzreal")
    make_corpus(root, per_class=1, queries_per_class=0)
    run = ["--quiet"]
    for args in (["extract", root / "videos", "-o", root / "feats.h5", "--frames", 4, "--workers", 0,
                  "--threads", 1, *run],
                 ["centers", root / "feats.h5", "-o", root / "centers.h5", "--clusters", 2, "--pca-dim", 4,
                  "--bits", 16, *run],
                 ["train", root / "feats.h5", "--centers", root / "centers.h5", "-o", root / "model.pt", "--preset",
                  "demo", "--bits", 16, "--epochs", 1, "--threads", 1, *run],
                 ["encode", root / "model.pt", root / "feats.h5", "-o", root / "codes.h5", *run],
                 ["index", root / "codes.h5", "-o", root / "index.bin"]):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            assert e.code in (0, None)
    return root


_REAL = {"features": "feats.h5", "centers": "centers.h5", "codes": "codes.h5", "model": "model.pt",
         "index_meta": "index.bin.meta.h5"}


@FAST
@given(which=st.sampled_from(sorted(_REAL)), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)),
                                                            min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_damaged_real_artifacts(real, tmp_path_factory, which, flips, cut):
    tmp = tmp_path_factory.mktemp("fzd")
    data = bytearray((real / _REAL[which]).read_bytes())
    for pos, x in flips:
        data[int(pos * (len(data) - 1))] ^= x
    if cut is not None:
        data = data[: int(cut * len(data))]
    p = tmp / _REAL[which].replace("index.bin.meta.h5", "f.h5")
    p.write_bytes(bytes(data))
    readers = dict(_readers(tmp))
    if which == "index_meta":
        shutil.copy(real / "index.bin", tmp / "fz.bin")
    only_s5vh_errors(readers[which], p)


# ----------------------------------------------------------------------------------------------------------
# the command line: random argv from a grammar
# ----------------------------------------------------------------------------------------------------------
_COMMANDS = {
    "extract": ["-o", "--output", "--frames", "--fps", "--backbone", "--weights", "--batch-size", "--workers",
                "--device", "--dtype", "--strict", "--threads", "--quiet", "--json"],
    "centers": ["-o", "--out", "--clusters", "-k", "--bits", "--pca-dim", "--seed", "--preset", "--json", "--quiet"],
    "train": ["--centers", "-o", "--output", "--bits", "--preset", "--behaviour", "--epochs", "--batch-size", "--lr",
              "--encoder", "--device", "--ssm-backend", "--resume", "--seed", "--val-fraction", "--threads",
              "--mask-ratio", "--alpha", "--decoder-order", "--mamba-init", "--centers-mode", "--label-pred",
              "--quiet"],
    "encode": ["-o", "--output", "--batch-size", "--device", "--ssm-backend", "--quiet"],
    "index": ["-o", "--out", "--type", "-t", "--nprobe", "--ef-search", "--nflip", "--json", "--backend", "--uri",
              "--collection", "--nlist", "--replace-collection"],
    "index migrate": ["-o", "--backend", "--type", "--uri", "--collection", "--nlist", "--json"],
    "index add": ["--on-existing", "replace", "--json"],
    "index remove": ["--id", "--key", "--path", "--ids-file", "--json"],
    "index info": ["--check", "-k", "--queries", "--nprobe", "--json"],
    "query": ["--topk", "-k", "--radius", "-r", "--exclude-self", "--json", "--jsonl", "--model", "--weights",
              "--device", "--ssm-backend", "--batch-size", "--nprobe", "--ef-search", "--nflip"],
    "eval": ["--labels", "-l", "--database", "-d", "--db-labels", "--protocol", "--labels-key", "--model", "--k",
             "--no-full-map", "--plots", "--device", "--batch-size", "--json"],
    "info": ["--device", "--json"],
}
_JUNK = ["", "0", "-1", "1", "3", "abc", "nan", "inf", "1e309", "-0", "0x10", "64,", "8,x", "../x", "/", ".",
         "-", "--", "-q", "BFoo", "BIVF0", "BHash99", "BHNSW1", "cuda", "cuda:9", "cpu", "mps", "float8", "\udce9",
         "é", " ", "--help"]


@st.composite
def argvs(draw, files: dict[str, str]):
    cmd = draw(st.sampled_from(sorted(_COMMANDS)))
    args = cmd.split()
    pos = st.sampled_from(sorted(files.values()) + _JUNK)
    for _ in range(draw(st.integers(0, 3))):
        args.append(draw(pos))
    for _ in range(draw(st.integers(0, 5))):
        opt = draw(st.sampled_from(_COMMANDS[cmd] + ["--bogus", "-z"]))
        args.append(opt)
        if draw(st.booleans()):
            args.append(draw(st.one_of(pos, st.sampled_from(_JUNK))))
    if draw(st.booleans()):
        args.insert(draw(st.integers(0, len(args))), draw(st.sampled_from(["--debug", "--version", "-h"])))
    return [a for a in args if a != "--debug"]  # --debug would rightly show tracebacks


@pytest.fixture(scope="module")
def argv_files(tmp_path_factory):
    """Files the argv grammar points at: every one of them makes a command stop early (no long runs)."""
    d = tmp_path_factory.mktemp("fzargv")
    (d / "zero.h5").write_bytes(b"")
    (d / "junk.pt").write_bytes(os.urandom(300))
    (d / "empty").mkdir()
    (d / "text.mp4").write_text("not a video")
    with h5py.File(d / "nofeats.h5", "w") as f:
        f.attrs["s5vh_artifact"] = "features"
        f.attrs["format_version"] = 1
    return {"zero": str(d / "zero.h5"), "junk": str(d / "junk.pt"), "empty": str(d / "empty"),
            "text": str(d / "text.mp4"), "nofeats": str(d / "nofeats.h5"), "missing": str(d / "missing.h5"),
            "out": str(d / "out.h5")}


def _run_argv(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        main(argv)
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    _, err = capsys.readouterr()
    return rc, err


def _check_argv(argv_files, capsys, data) -> None:
    argv = data.draw(argvs(argv_files))
    cwd = os.getcwd()
    os.chdir(Path(argv_files["empty"]).parent)  # relative junk like "../x" stays inside the temp folder
    try:
        rc, err = _run_argv(argv, capsys)
    finally:
        os.chdir(cwd)
    assert rc in (0, 1, 2), (argv, rc, err)
    assert "Traceback" not in err, (argv, err)
    assert "internal error" not in err, (argv, err)


@FAST
@given(data=st.data())
def test_cli_random_argv(argv_files, capsys, data):
    _check_argv(argv_files, capsys, data)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_cli_random_argv_many(argv_files, capsys, data):
    _check_argv(argv_files, capsys, data)


@pytest.mark.slow
@SLOW
@given(layout=h5_layouts(), which=st.integers(0, 8))
def test_random_hdf5_structures_many(tmp_path_factory, layout, which):
    test_random_hdf5_structures.hypothesis.inner_test(tmp_path_factory, layout, which)


def test_cli_subprocess_junk_argv(argv_files):
    """A few junk command lines through the real console script."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "S5VH_DEBUG": ""}
    for argv in (["train", argv_files["zero"], "--epochs", "abc"], ["index", "info"],
                 ["query", argv_files["missing"], argv_files["text"], "--topk", "-3"],
                 ["extract", argv_files["empty"], "-o", argv_files["out"], "--frames", "0"]):
        p = subprocess.run([sys.executable, "-m", "s5vh_cli", *argv], capture_output=True, text=True, env=env,
                           timeout=120)
        assert p.returncode in (0, 1, 2), (argv, p.stderr)
        assert "Traceback" not in p.stderr, (argv, p.stderr)
