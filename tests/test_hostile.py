"""Second round of the fault table (docs/RELIABILITY.md): racing writers, HDF5 files whose bytes live elsewhere,
terminal control sequences in names, non-UTF-8 bytes in JSON, sizes a file declares but does not hold, ill-typed
model configs and training states, and memory. Each class has a generator of such files here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

S5VH = [sys.executable, "-m", "s5vh_cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "S5VH_DEBUG": ""}
ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(Path(__file__).parent))
from library import cli  # noqa: E402
from test_reliability import assert_one_line_error as one_line_error  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# racing writers
# ----------------------------------------------------------------------------------------------------------
# Each racer enters the lock ROUNDS times, either bare (output_lock) or through a real writer (write_features,
# write_codes, write_centers, whose atomic_output is wrapped here). Inside, it claims a marker with O_EXCL
# (failing means another process is inside too) and bumps a counter with a read-sleep-write (a lost update
# shows up as a short count). The sleeps keep the waiter-on-the-old-file / newcomer-on-a-new-file window wide.
RACER = textwrap.dedent("""
    import contextlib, os, sys, time
    import numpy as np
    from s5vh_cli import artifacts
    target, rounds, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    marker, counter = target + ".inside", target + ".count"
    overlaps = [0]

    @contextlib.contextmanager
    def inside():
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            mine = True
        except FileExistsError:
            overlaps[0] += 1
            mine = False
        n = int(open(counter).read() or 0)
        time.sleep(0.002)
        with open(counter, "w") as f:
            f.write(str(n + 1))
        try:
            yield
        finally:
            if mine:
                os.unlink(marker)

    real_atomic = artifacts.atomic_output

    @contextlib.contextmanager
    def atomic(path, suffix=""):
        with inside(), real_atomic(path, suffix) as tmp:
            yield tmp

    artifacts.atomic_output = atomic
    rng = np.random.default_rng(os.getpid())
    prov = artifacts.provenance("race")
    for i in range(rounds):
        if kind == "writers":  # every writer in turn: each holds the same lock for its whole write
            kind_now = ("features", "codes", "centers")[(i + os.getpid()) % 3]
        else:
            kind_now = kind
        if kind_now == "bare":
            with artifacts.output_lock(target), inside():
                pass
        elif kind_now == "features":
            artifacts.write_features(target, rng.random((3, 2, 4), dtype=np.float32), ["a", "b", "c"],
                                     ["a", "b", "c"], backbone="x", backbone_sha256="", sampling="uniform", prov=prov)
        elif kind_now == "codes":
            c = artifacts.Codes(path=None, codes=rng.integers(0, 256, (3, 2), dtype=np.uint8), ids=["a", "b", "c"],
                                paths=["a", "b", "c"], bits=16)
            artifacts.write_codes(target, c, prov)
        elif kind_now == "centers":
            c = artifacts.Centers(path=None, pseudo_labels=np.array([0, 1, 0]), centroids=np.eye(2, dtype=np.float32),
                                  pca_mean=np.zeros(4, np.float32), pca_components=np.ones((2, 4), np.float32),
                                  hash_centers={8: np.array([[1] * 8, [-1] * 8], np.int8)})
            artifacts.write_centers(target, c, prov)
        time.sleep(0.0005)
    print(overlaps[0])
""")


@pytest.mark.parametrize("kind", ["bare", "writers"])
def test_output_lock_excludes_n_racing_processes(tmp_path, kind):
    """N >= 4 processes racing on one output: never two inside at once, no update lost, and the output is one
    writer's complete file with no temporary left."""
    target = tmp_path / "out.h5"
    (tmp_path / "out.h5.count").write_text("0")
    n, rounds = (6, 40) if kind == "bare" else (4, 12)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(target), str(rounds), kind], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT) for _ in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    overlaps = sum(int(o.strip()) for o, _ in outs)
    assert overlaps == 0, f"{overlaps} times two processes held the lock at once"
    assert int((tmp_path / "out.h5.count").read_text()) == n * rounds
    if kind != "bare":
        from s5vh_cli import artifacts

        read = {"features": artifacts.read_features, "codes": artifacts.read_codes,
                "centers": artifacts.read_centers}[artifacts.h5_kind(target)]
        read(target)  # complete and valid: the last writer's whole file
        assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------
# a small pipeline on synthetic features (no videos): features, centres, model, codes, index, labels
# ----------------------------------------------------------------------------------------------------------
def synthetic_features(path: Path, n: int = 12, frames: int = 4, dim: int = 16, ids=None, seed: int = 0) -> Path:
    import numpy as np

    from s5vh_cli import artifacts

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)).astype(np.float32) * 3
    feats = centres[np.arange(n) % 3][:, None, :] + rng.normal(size=(n, frames, dim)).astype(np.float32)
    ids = ids or [f"v{i:02d}" for i in range(n)]
    artifacts.write_features(path, feats.astype(np.float32), ids, [f"/videos/{i}.mp4" for i in ids],
                             backbone="synthetic", backbone_sha256="", sampling="uniform",
                             prov=artifacts.provenance("test"))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    import contextlib

    import h5py
    import numpy as np

    from s5vh_cli.cli import main

    root = tmp_path_factory.mktemp("hostile")
    synthetic_features(root / "feats.h5")

    def run(*args):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            assert e.code in (0, None), f"s5vh {args} -> {e.code}"

    with contextlib.redirect_stdout(open(os.devnull, "w")):
        run("centers", root / "feats.h5", "-o", root / "centers.h5", "--clusters", 3, "--pca-dim", 8, "--bits", 16,
            "-q")
        run("train", root / "feats.h5", "--centers", root / "centers.h5", "-o", root / "model.pt", "--preset", "demo",
            "--bits", 16, "--epochs", 1, "--threads", 1, "-q")
        run("encode", root / "model.pt", root / "feats.h5", "-o", root / "codes.h5", "-q")
        run("index", root / "codes.h5", "-o", root / "index.bin")
    with h5py.File(root / "labels.h5", "w") as f:
        f["labels"] = np.arange(12) % 3
    return root


# ----------------------------------------------------------------------------------------------------------
# terminal control sequences in ids, paths, file names and messages
# ----------------------------------------------------------------------------------------------------------
# The generator: one name per kind of sequence a terminal acts on.
NASTY = {
    "clear_screen": "cls\x1b[2J\x1b[H",
    "osc8_link": "\x1b]8;;https://example.invalid/\x1b\\click\x1b]8;;\x1b\\",
    "window_title": "\x1b]0;pwned\x07title",
    "bare_esc": "esc\x1b",
    "csi_c1": "c1\x9b31mred",
    "bidi_override": "exe.\u202egpj",
    "backspace_cr": "hide\x08\x08\rline",
}


def assert_clean(text: str, where: str) -> None:
    import re

    bad = re.findall("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text)
    assert not bad, f"{where}: raw control characters {sorted(set(map(repr, bad)))} reach the terminal:\n{text!r}"


def test_control_sequences_never_reach_the_terminal(small, tmp_path, capsys):
    """Every kind of sequence at once: in ids (tables), stored paths, file names and option values (error lines)."""
    kinds = sorted(NASTY)
    all_in_one = "".join(NASTY.values())
    feats = synthetic_features(tmp_path / "f.h5", ids=[f"{NASTY[kinds[i % len(kinds)]]}{i}" for i in range(12)])
    runs = [
        ("encode", small / "model.pt", feats, "-o", tmp_path / "c.h5"),
        ("index", tmp_path / "c.h5", "-o", tmp_path / "i.bin"),
        ("index", "info", tmp_path / "i.bin"),
        ("query", tmp_path / "i.bin", tmp_path / "c.h5", "--topk", 3),
        ("query", tmp_path / "i.bin", feats, "--topk", 3),  # the model path is recorded: features are encoded
        ("index", "remove", tmp_path / "i.bin", "--id", f"{NASTY[kinds[0]]}0"),
        # error lines naming a file, an id and an option value
        ("centers", tmp_path / f"missing{all_in_one}.h5", "-o", tmp_path / "x.h5"),
        ("index", "remove", tmp_path / "i.bin", "--id", f"none{all_in_one}"),
        ("centers", feats, "-o", tmp_path / "x.h5", "--clusters", all_in_one),
        ("eval", tmp_path / "c.h5", "--labels", tmp_path / f"labels{all_in_one}.h5"),
    ]
    for args in runs:
        rc, out, err = cli(capsys, *args)
        assert "Traceback" not in err and "internal error" not in err, (args, err)
        assert_clean(out, f"stdout of {args[:2]}")
        assert_clean(err, f"stderr of {args[:2]}")
    # the escaped form is still there for a person to read
    rc, out, err = cli(capsys, "centers", tmp_path / "missing\x1b[2J.h5", "-o", tmp_path / "x.h5")
    assert "missing\\e[2J.h5" in err


def test_failed_lines_of_extract_escape_file_names(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    make_video(src / "good.mp4")
    names = [f"bad_{kind}{nasty.replace('/', '_')}.mp4" for kind, nasty in NASTY.items()]
    for name in names:
        (src / name).write_bytes(b"not a video\n" * 20)
    rc, out, err = cli(capsys, "extract", src, "-o", tmp_path / "f.h5", "--frames", 2, "--workers", 0,
                       "--threads", 1)
    assert rc == 0, err
    assert out.count("failed:") == len(names)
    assert_clean(out, "extract summary")
    assert_clean(err, "extract progress")


def make_video(path: Path, frames: int = 6, size: int = 32) -> Path:
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (size, size))
    for i in range(frames):
        w.write(np.full((size, size, 3), 40 * i % 255, np.uint8))
    w.release()
    return path


# ----------------------------------------------------------------------------------------------------------
# damaged `train --resume` state
# ----------------------------------------------------------------------------------------------------------
def damaged_states(state: dict) -> dict[str, tuple[dict, str | None]]:
    """name -> (a mutated copy of a real last.pt, metrics.jsonl text or None to keep the real one)."""
    import copy

    import torch

    def m(fn, metrics=None):
        s = copy.deepcopy(state)
        fn(s)
        return s, metrics

    opt_state = next(iter(state["optimizer"]["state"].values()))
    cases = {f"no_{key}": m(lambda s, key=key: s.pop(key)) for key in
             ("model", "optimizer", "scheduler", "soft_labels", "rng", "epoch", "best_loss", "best_epoch",
              "fingerprint")}
    cases |= {
        "epoch_negative": m(lambda s: s.update(epoch=-1)),
        "epoch_beyond": m(lambda s: s.update(epoch=999)),
        "epoch_text": m(lambda s: s.update(epoch="1")),
        "epoch_float": m(lambda s: s.update(epoch=0.5)),
        "best_epoch_after": m(lambda s: s.update(best_epoch=7)),
        "best_loss_text": m(lambda s: s.update(best_loss="low")),
        "best_loss_nan": m(lambda s: s.update(best_loss=float("nan"))),
        "soft_short": m(lambda s: s.update(soft_labels=s["soft_labels"][:3])),
        "soft_float32": m(lambda s: s.update(soft_labels=s["soft_labels"].float())),
        "soft_nan": m(lambda s: s["soft_labels"].fill_(float("nan"))),
        "soft_negative": m(lambda s: s["soft_labels"].fill_(-1.0)),
        "soft_list": m(lambda s: s.update(soft_labels=[1, 2])),
        "rng_short": m(lambda s: s["rng"].update(torch=s["rng"]["torch"][:100])),
        "rng_generator_missing": m(lambda s: s["rng"].pop("generator")),
        "rng_not_dict": m(lambda s: s.update(rng=[1])),
        "optimizer_empty": m(lambda s: s.update(optimizer={})),
        "optimizer_moment_shape": m(lambda s: next(iter(s["optimizer"]["state"].values())).update(
            exp_avg=torch.zeros(3))),
        "optimizer_step_nan": m(lambda s: next(iter(s["optimizer"]["state"].values())).update(
            step=torch.tensor(float("nan")))),
        "optimizer_lr_text": m(lambda s: s["optimizer"]["param_groups"][0].update(lr="fast")),
        "optimizer_betas": m(lambda s: s["optimizer"]["param_groups"][0].update(betas=(1, 2, 3))),
        "optimizer_no_groups": m(lambda s: s["optimizer"].pop("param_groups")),
        "scheduler_empty": m(lambda s: s.update(scheduler={})),
        "scheduler_text": m(lambda s: s["scheduler"].update(last_epoch="x")),
        "scheduler_base_lrs": m(lambda s: s["scheduler"].update(base_lrs=[])),
        "scheduler_extra": m(lambda s: s["scheduler"].update(surprise=1)),
        "model_wrong_shape": m(lambda s: s["model"].update({next(iter(s["model"])): torch.zeros(2)})),
        "model_not_dict": m(lambda s: s.update(model=3)),
        "fingerprint_not_dict": m(lambda s: s.update(fingerprint="x")),
        "fingerprint_tensor": m(lambda s: s["fingerprint"].update(n_train=torch.zeros(3))),
        "metrics_bad_line": m(lambda s: None, metrics='{"epoch": 1, "loss": 1.0}\nnot json\n'),
        "metrics_list_line": m(lambda s: None, metrics="[1, 2]\n"),
        "metrics_no_epoch": m(lambda s: None, metrics='{"loss": 1.0}\n'),
    }
    assert opt_state  # the real state has moments to damage
    return cases


_RESUME_DEFAULT = ["no_optimizer", "rng_short", "soft_short", "metrics_bad_line", "optimizer_moment_shape",
                   "scheduler_text", "epoch_text", "fingerprint_tensor"]


def _resume_case(small, tmp_path, capsys, name):
    import shutil

    import torch

    run = tmp_path / "m.pt.run"
    shutil.copytree(small / "model.pt.run", run)
    state = torch.load(run / "last.pt", weights_only=True)
    bad, metrics = damaged_states(state)[name]
    torch.save(bad, run / "last.pt")
    if metrics is not None:
        (run / "metrics.jsonl").write_text(metrics)
    rc, _, err = cli(capsys, "train", small / "feats.h5", "--centers", small / "centers.h5", "-o", tmp_path / "m.pt",
                     "--preset", "demo", "--bits", 16, "--epochs", 1, "--threads", 1, "--resume", "-q")
    one_line_error(rc, err, "last.pt" if metrics is None else "metrics.jsonl")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("name", _RESUME_DEFAULT)
def test_damaged_resume_state(small, tmp_path, capsys, name):
    _resume_case(small, tmp_path, capsys, name)


@pytest.mark.slow
def test_damaged_resume_state_every_case(small, tmp_path_factory, capsys):
    import torch

    names = sorted(damaged_states(torch.load(small / "model.pt.run" / "last.pt", weights_only=True)))
    for name in names:
        _resume_case(small, tmp_path_factory.mktemp(name), capsys, name)


# ----------------------------------------------------------------------------------------------------------
# ill-typed or absurd model configs
# ----------------------------------------------------------------------------------------------------------
CONFIG_FAULTS = {
    "bits_text": {"bits": "64"}, "bits_float": {"bits": 16.0}, "d_model_float": {"d_model": 1.5},
    "d_model_zero": {"d_model": 0}, "d_model_huge": {"d_model": 1_000_000}, "depth_huge": {"depth": 20000},
    "depth_zero": {"depth": 0}, "expand_zero": {"expand": 0}, "expand_text": {"expand": "2"},
    "d_state_negative": {"d_state": -4}, "frames_huge": {"frames": 10**9}, "feature_dim_none": {"feature_dim": None},
    "n_heads_zero": {"encoder": "transformer", "n_heads": 0},
    "n_heads_not_dividing": {"encoder": "transformer", "n_heads": 7},
    "drop_path_nan": {"drop_path": float("nan")}, "tie_text": {"tie_directions": "yes"},
    "encoder_list": {"encoder": ["mamba"]}, "n_clusters_huge": {"n_clusters": 10**12},
    "dec_d_model_huge": {"dec_d_model": 10**6}, "bits_bool": {"bits": True},
}


def _model_with(src: Path, dst: Path, changes: dict) -> Path:
    import torch

    d = torch.load(src, weights_only=True)
    d["model_config"].update(changes)
    torch.save(d, dst)
    return dst


@pytest.mark.parametrize("fault", sorted(CONFIG_FAULTS))
def test_ill_typed_or_absurd_model_config(small, tmp_path, capsys, fault):
    bad = _model_with(small / "model.pt", tmp_path / f"bad_{fault}.pt", CONFIG_FAULTS[fault])
    rc, _, err = cli(capsys, "encode", bad, small / "feats.h5", "-o", tmp_path / "c.h5", "-q")
    one_line_error(rc, err, bad.name)
    assert not (tmp_path / "c.h5").exists()


def test_random_model_configs_fuzz(small, tmp_path_factory):
    """Random values of random types in random config fields: load_model answers with one S5VHError line or a
    working model, nothing else."""
    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from s5vh_cli.checkpoint import load_model
    from s5vh_cli.config import ModelConfig
    from s5vh_cli.errors import S5VHError

    base = torch.load(small / "model.pt", weights_only=True)
    fields = sorted(ModelConfig.__dataclass_fields__) + ["unknown_key"]
    values = st.one_of(st.integers(-3, 3), st.integers(2**31, 2**63 - 1), st.floats(allow_nan=True),
                       st.text(max_size=4), st.booleans(), st.none(), st.lists(st.integers(0, 2), max_size=2),
                       st.sampled_from([16, 256, 192, 2, 6, "mamba", "transformer", "fixed", "learned", 1e6]))

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(changes=st.dictionaries(st.sampled_from(fields), values, min_size=1, max_size=3))
    def check(changes):
        d = {**base, "model_config": {**base["model_config"], **changes}}
        p = tmp_path_factory.mktemp("cfg") / "m.pt"
        torch.save(d, p)
        try:
            load_model(p)
        except S5VHError as e:
            assert "\n" not in str(e).strip() and str(p) in str(e)

    check()


# ----------------------------------------------------------------------------------------------------------
# features with 0 frames or huge finite values
# ----------------------------------------------------------------------------------------------------------
def _features_like(path: Path, feats) -> Path:
    import numpy as np

    from s5vh_cli import artifacts

    n = feats.shape[0]
    ids = [f"v{i}" for i in range(n)]
    with artifacts.atomic_output(path) as tmp:  # any shape, values as given
        import h5py

        with h5py.File(tmp, "w") as f:
            artifacts.set_provenance(f, "features", artifacts.provenance("test"))
            f["feats"] = np.asarray(feats)
            artifacts._write_ids_paths(f, ids, ids)
    return path


FEATURE_VALUE_FAULTS = {
    "zero_frames": lambda np: np.zeros((12, 0, 16), np.float32),
    "zero_dims": lambda np: np.zeros((12, 4, 0), np.float32),
    "huge": lambda np: np.full((12, 4, 16), 3e37, np.float32),
    "huge_one_video": lambda np: np.concatenate([np.random.default_rng(0).normal(size=(11, 4, 16)),
                                                 np.full((1, 4, 16), -1e30)]).astype(np.float32),
    "float64_huge": lambda np: np.full((12, 4, 16), 1e300, np.float64),
}


@pytest.mark.parametrize("fault", sorted(FEATURE_VALUE_FAULTS))
@pytest.mark.parametrize("stage", ["centers", "train", "encode"])
def test_features_with_zero_frames_or_huge_values(small, tmp_path, capsys, stage, fault):
    import numpy as np

    path = _features_like(tmp_path / f"{fault}.h5", FEATURE_VALUE_FAULTS[fault](np))
    args = {
        "centers": ["centers", path, "-o", tmp_path / "c.h5", "--clusters", 3, "--pca-dim", 8, "--bits", 16, "-q"],
        "train": ["train", path, "-o", tmp_path / "m.pt", "--preset", "demo", "--bits", 16, "--epochs", 1, "-q"],
        "encode": ["encode", small / "model.pt", path, "-o", tmp_path / "c.h5", "-q"],
    }[stage]
    rc, _, err = cli(capsys, *args)
    one_line_error(rc, err, path.name)
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------------------------------------------
# labels that are not labels, and K beyond the database (issue 14, point 10)
# ----------------------------------------------------------------------------------------------------------
def _labels_file(path: Path, data, key: str = "labels") -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f[key] = data
    return path


def test_eval_refuses_labels_that_are_not_labels(small, tmp_path, capsys):
    import numpy as np

    cases = {
        "codes.h5": small / "codes.h5",  # the code bytes were read as a label matrix: mAP 1.0
        "feats.h5": small / "feats.h5",
        "bytes.h5": _labels_file(tmp_path / "bytes.h5", np.arange(12 * 2, dtype=np.uint8).reshape(12, 2), "x"),
        "near2_63.h5": _labels_file(tmp_path / "near2_63.h5", np.full(12, 2**63 - 2, np.int64)),
        "nan.h5": _labels_file(tmp_path / "nan.h5", np.array([0, 1, np.nan] * 4)),
        "nan2d.h5": _labels_file(tmp_path / "nan2d.h5", np.full((12, 3), np.nan)),
        "inf.h5": _labels_file(tmp_path / "inf.h5", np.array([0, 1, np.inf] * 4)),
        "negative.h5": _labels_file(tmp_path / "negative.h5", np.array([0, -1, 2] * 4)),
        "twos.h5": _labels_file(tmp_path / "twos.h5", np.full((12, 3), 2, np.uint8)),
        "noclasses.h5": _labels_file(tmp_path / "noclasses.h5", np.zeros((12, 0), np.uint8)),
    }
    for name, path in cases.items():
        rc, out, err = cli(capsys, "eval", small / "codes.h5", "--labels", path, "--json")
        one_line_error(rc, err, name)


def test_eval_says_when_k_exceeds_the_database(small, capsys):
    rc, out, err = cli(capsys, "eval", small / "codes.h5", "--labels", small / "labels.h5", "--k", "5,100")
    assert rc == 0, err
    assert "K = 100 exceeds the 12-item database" in out
    rc, out, _ = cli(capsys, "eval", small / "codes.h5", "--labels", small / "labels.h5", "--k", "5,100", "--json")
    doc = json.loads(out)
    assert doc["k_beyond_database"] == [100] and doc["notes"]


def test_class_index_labels_need_no_one_hot_matrix(small, tmp_path):
    """Class indices stay indices: relevance compares them, with the same numbers as the one-hot form."""
    import numpy as np

    from s5vh_cli.evaluate import evaluate, one_hot, read_labels

    lab = read_labels(small / "labels.h5", n=12)
    assert lab.ndim == 1
    codes = np.random.default_rng(0).integers(0, 256, (12, 2), dtype=np.uint8)
    a = evaluate(codes, lab, codes, lab, 16, ks=(5,))
    b = evaluate(codes, one_hot(lab), codes, one_hot(lab), 16, ks=(5,))
    assert a["map_at_k"] == b["map_at_k"] and a["map"] == b["map"]
    big = _labels_file(tmp_path / "sparse_ids.h5", np.array([3, 2**31 - 1] * 6))  # far apart, yet nothing big
    assert read_labels(big, n=12).max() == 2**31 - 1


def test_s5vh_artifact_attribute_holding_an_array(small, tmp_path, capsys):
    import shutil

    import h5py
    import numpy as np

    for name in ("codes.h5", "feats.h5"):
        shutil.copy(small / name, tmp_path / name)
        with h5py.File(tmp_path / name, "r+") as f:
            f.attrs["s5vh_artifact"] = np.array([1, 2])
        rc, _, err = cli(capsys, "eval", tmp_path / name, "--labels", small / "labels.h5", "--model",
                         small / "model.pt")
        one_line_error(rc, err, name)


# ----------------------------------------------------------------------------------------------------------
# HDF5 datasets whose bytes live outside the file
# ----------------------------------------------------------------------------------------------------------
def outside_variants(src: Path, folder: Path, key: str) -> dict[str, Path]:
    """Copies of ``src`` whose dataset ``key`` is replaced by something stored elsewhere: external raw storage
    (a secret file, a FIFO), an external link (to another HDF5 file, to a FIFO), a virtual dataset (over
    another file, over a FIFO), a soft link to another file's path, a dangling soft link."""
    import shutil

    import h5py
    import numpy as np

    secret = folder / "secret.bin"
    secret.write_bytes(b"root:x:0:0:secret\n" * 64)
    fifo = folder / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    other = folder / "other.h5"
    with h5py.File(src, "r") as f:
        data = f[key][()]
    with h5py.File(other, "w") as f:
        f["x"] = data
    out = {}

    def variant(name, make):
        dst = folder / f"{name}_{src.name}"
        shutil.copy(src, dst)
        with h5py.File(dst, "r+") as f:
            shape, dtype = f[key].shape, f[key].dtype
            del f[key]
            make(f, shape, dtype)
        out[name] = dst

    def external(target):
        def make(f, shape, dtype):
            f.create_dataset(key, shape=shape, dtype=dtype, external=[(str(target), 0, h5py.h5f.UNLIMITED)])
        return make

    def virtual(target):
        def make(f, shape, dtype):
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(str(target), "x", shape=shape)
            f.create_virtual_dataset(key, layout, fillvalue=0)
        return make

    if data.dtype.kind != "O":  # variable-length data cannot be stored externally
        variant("external_raw", external(secret))
        variant("external_raw_fifo", external(fifo))
    variant("external_link", lambda f, s, d: f.__setitem__(key, h5py.ExternalLink(str(other), "x")))
    variant("external_link_fifo", lambda f, s, d: f.__setitem__(key, h5py.ExternalLink(str(fifo), "x")))
    if data.dtype.kind != "O":
        variant("virtual", virtual(other))
        variant("virtual_fifo", virtual(fifo))
    variant("soft_link_elsewhere", lambda f, s, d: (f.__setitem__("ext", h5py.ExternalLink(str(other), "/")),
                                                    f.__setitem__(key, h5py.SoftLink("/ext/x"))))
    variant("dangling_soft_link", lambda f, s, d: f.__setitem__(key, h5py.SoftLink("/nothing/here")))
    assert np.asarray(data).size
    return out


def _outside_commands(small: Path, kind: str, path: Path, out: Path) -> list[list]:
    return {
        "feats": [["encode", small / "model.pt", path, "-o", out / "c.h5", "-q"],
                  ["centers", path, "-o", out / "c.h5", "--clusters", 3, "-q"],
                  ["query", small / "index.bin", path, "--json"]],
        "ids": [["query", small / "index.bin", path, "--json"], ["index", path, "-o", out / "i.bin"]],
        "codes": [["query", small / "index.bin", path, "--json"], ["index", path, "-o", out / "i.bin"],
                  ["eval", path, "--labels", small / "labels.h5"]],
        "pseudo_labels": [["train", small / "feats.h5", "--centers", path, "-o", out / "m.pt", "--preset", "demo",
                           "--bits", 16, "--epochs", 1, "-q"]],
        "labels": [["eval", small / "codes.h5", "--labels", path]],
    }[kind]


_OUTSIDE_FILES = {"feats": "feats.h5", "ids": "codes.h5", "codes": "codes.h5", "pseudo_labels": "centers.h5",
                  "labels": "labels.h5"}


@pytest.mark.parametrize("key", sorted(_OUTSIDE_FILES))
def test_hdf5_data_stored_outside_the_file_is_refused(small, tmp_path, capsys, key):
    """Every reader refuses, in one line and before reading (a FIFO would hang, a secret file would be printed)."""
    src = tmp_path / _OUTSIDE_FILES[key]
    import shutil

    shutil.copy(small / _OUTSIDE_FILES[key], src)
    out = tmp_path / "out"
    out.mkdir()
    for name, path in outside_variants(src, tmp_path, key).items():
        for args in _outside_commands(small, key, path, out):
            rc, stdout, err = cli(capsys, *args)
            line = one_line_error(rc, err, path.name)
            assert "stored in the file itself" in line, (name, args[0], line)
            assert "secret" not in stdout
        assert list(out.iterdir()) == []


def test_index_metadata_stored_outside_the_file_is_refused(small, tmp_path, capsys):
    import shutil

    for name in ("index.bin", "index.bin.meta.h5"):
        shutil.copy(small / name, tmp_path / name)
    for key in ("ids", "keys"):
        for variant, path in outside_variants(tmp_path / "index.bin.meta.h5", tmp_path, key).items():
            shutil.copy(path, tmp_path / "index.bin.meta.h5")
            rc, _, err = cli(capsys, "index", "info", tmp_path / "index.bin")
            line = one_line_error(rc, err, "index.bin.meta.h5")
            assert "stored in the file itself" in line, (variant, line)
            shutil.copy(small / "index.bin.meta.h5", tmp_path / "index.bin.meta.h5")


# ----------------------------------------------------------------------------------------------------------
# sizes a file declares but does not hold
# ----------------------------------------------------------------------------------------------------------
def declared_size_file(folder: Path, name: str) -> tuple[Path, str]:
    """A file under 10 KB (model_bomb: 500 KB) that declares far more than it holds, and the kind of input it is
    (features, labels, model). Names: DECLARED_SIZE_CASES."""
    import zipfile
    import zlib

    import h5py

    from s5vh_cli import artifacts

    def features(make, public: bool = False):
        p = folder / f"{name}.h5"
        with h5py.File(p, "w") as f:
            if not public:
                artifacts.set_provenance(f, "features", artifacts.provenance("test"))
            make(f)
        return p, "features"

    def one_chunk(f):
        ds = f.create_dataset("feats", shape=(60000, 8, 1280), dtype="f4", chunks=(1, 8, 1280), compression="gzip")
        ds[0] = 1.0

    def bomb(f):
        # every chunk stored, each deflated twice: 245 MB of zeros per 524 bytes, far beyond honest compression
        c, block = zlib.compressobj(9), bytes(1 << 20)
        inner = b"".join(c.compress(block) for _ in range(6000 * 8 * 1280 * 4 >> 20)) + c.flush()
        data = zlib.compress(inner, 9)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((6000, 8, 1280))
        dcpl.set_deflate(9)
        dcpl.set_deflate(9)
        ds = h5py.Dataset(h5py.h5d.create(f.id, b"feats", h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((60000, 8, 1280)),
                                          dcpl=dcpl))
        for i in range(10):
            ds.id.write_direct_chunk((i * 6000, 0, 0), data, 0)

    def labels(chunks):
        p = folder / f"{name}.h5"  # eval once took 20.7 GB for such a 1.4 KB file
        with h5py.File(p, "w") as f:
            f.create_dataset("labels", shape=(24, 10**8), dtype="u1", chunks=chunks)
        return p, "labels"

    def mat5():
        p = folder / f"{name}.mat"  # a MATLAB v5 header declaring 10^5 x 10^4 doubles, with 16 bytes of data
        p.write_bytes(_mat5_header() + _mat5_matrix("labels", (100_000, 10_000), b"\0" * 16))
        return p, "labels"

    def model_bomb():
        # a real torch archive whose tensor record is deflated and whose pickle asks for 500 MiB: a 500 KB file
        import io
        import re
        import struct

        import torch

        n_floats = 500 << 18  # 500 MiB of float32
        buf = io.BytesIO()
        torch.save({"s5vh_artifact": "model", "format_version": 1, "model_config": {},
                    "state_dict": {"binary.weight": torch.zeros(4)}}, buf)
        src = zipfile.ZipFile(buf)
        p = folder / f"{name}.pt"
        with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename.endswith("data.pkl"):  # the storage's element count: 4 -> 500 MiB worth
                    data = re.sub(rb"(cpuq.)K\x04t", lambda m: m.group(1) + b"J" + struct.pack("<i", n_floats) + b"t",
                                  data, flags=re.S)
                if info.filename.endswith("data/0"):
                    with z.open(info.filename, "w", force_zip64=True) as w:
                        block = bytes(1 << 20)
                        for _ in range(n_floats * 4 >> 20):
                            w.write(block)
                    continue
                z.writestr(info.filename, data)
        return p, "model"

    def model_legacy():
        p = folder / f"{name}.pt"  # the pre-zip torch format declares storage sizes in the pickle
        p.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.")
        return p, "model"

    def vlen_claim():
        # one id whose variable-length descriptor claims 2 GiB (HDF5 allocates what it says before reading)
        import struct

        import numpy as np

        p, _ = features(lambda f: f.create_dataset("feats", data=np.ones((1, 2, 4), np.float32)), public=True)
        with h5py.File(p, "r+") as f:
            f.create_dataset("ids", data=np.array(["v0"], dtype=object), dtype=artifacts.STR)
        with h5py.File(p, "r") as f:
            at = f["ids"].id.get_offset()
        with open(p, "r+b") as f:
            f.seek(at)
            f.write(struct.pack("<I", 0x7FFFFFFF))
        return p, "features"

    makers = {
        # 60000 videos x 8 frames x 1280 dims (2.4 GB of float32)
        "feats_unallocated": lambda: features(lambda f: f.create_dataset("feats", shape=(60000, 8, 1280),
                                                                         dtype="f4")),
        "feats_no_chunks": lambda: features(lambda f: f.create_dataset("feats", shape=(60000, 8, 1280), dtype="f4",
                                                                       chunks=(1, 8, 1280))),
        "feats_one_chunk": lambda: features(one_chunk),
        "feats_bomb": lambda: features(bomb, public=True),  # a public-style file: just 'feats'
        "ids_vlen_claim": vlen_claim,
        "labels_24x1e8": lambda: labels(None),
        "labels_chunked": lambda: labels((24, 1 << 20)),
        "labels_v5": mat5,
        "model_bomb": model_bomb,
        "model_legacy": model_legacy,
    }
    path, kind = makers[name]()
    # deflate cannot pack 500 MB into 10 KB (about 500 KB): the one case above the memory test's 10 KB
    assert path.stat().st_size < (600_000 if name == "model_bomb" else 10_000), (name, path.stat().st_size)
    return path, kind


DECLARED_SIZE_CASES = ["feats_unallocated", "feats_no_chunks", "feats_one_chunk", "feats_bomb", "ids_vlen_claim",
                       "labels_24x1e8", "labels_chunked", "labels_v5", "model_bomb", "model_legacy"]


def _mat5_header() -> bytes:
    text = b"MATLAB 5.0 MAT-file, made by the s5vh tests"
    return text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"


def _mat5_matrix(name: str, dims: tuple[int, int], data: bytes) -> bytes:
    import struct

    def element(dtype: int, payload: bytes) -> bytes:
        pad = (-len(payload)) % 8
        return struct.pack("<II", dtype, len(payload)) + payload + b"\0" * pad

    flags = element(6, struct.pack("<II", 6, 0))  # miUINT32: class mxDOUBLE_CLASS
    dim = element(5, struct.pack("<ii", *dims))  # miINT32
    nm = element(1, name.encode())  # miINT8
    real = element(9, data)  # miDOUBLE, far shorter than the dims say
    body = flags + dim + nm + real
    return struct.pack("<II", 14, len(body)) + body  # miMATRIX


def _declared_size_command(small: Path, stage: str, path: Path, out: Path) -> list:
    return {
        "features": ["encode", small / "model.pt", path, "-o", out / "c.h5", "-q"],
        "labels": ["eval", small / "codes.h5", "--labels", path],
        "model": ["encode", path, small / "feats.h5", "-o", out / "c.h5", "-q"],
    }[stage]


@pytest.mark.parametrize("name", DECLARED_SIZE_CASES)
def test_declared_sizes_not_backed_by_data(small, tmp_path, capsys, name):
    path, stage = declared_size_file(tmp_path, name)
    rc, _, err = cli(capsys, *_declared_size_command(small, stage, path, tmp_path))
    line = one_line_error(rc, err, path.name)
    assert "out of memory" not in line


def test_honest_compression_is_accepted(small, tmp_path):
    """A gzip-compressed public features file (real values, a few to one) reads as before."""
    import h5py

    from s5vh_cli import artifacts

    with h5py.File(small / "feats.h5", "r") as f:
        data = f["feats"][()]
    with h5py.File(tmp_path / "public.h5", "w") as f:
        f.create_dataset("feats", data=data, compression="gzip", compression_opts=9, shuffle=True)
    assert (artifacts.read_features(tmp_path / "public.h5").feats == data).all()


# ----------------------------------------------------------------------------------------------------------
# non-UTF-8 bytes in paths never break --json
# ----------------------------------------------------------------------------------------------------------
def test_json_parses_with_non_utf8_paths(small, tmp_path, capsys):
    import shutil

    odd = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/dir\xfe\xff"))
    odd.mkdir()
    codes = odd / os.fsdecode(b"codes\xe9.h5")
    shutil.copy(small / "codes.h5", codes)
    index = odd / os.fsdecode(b"index\xfe.bin")
    for name in ("index.bin", "index.bin.meta.h5"):  # (faiss itself cannot write to such a path)
        shutil.copy(small / name, odd / os.fsdecode(b"index\xfe.bin" + name[9:].encode()))
    runs = [
        ["index", "info", index, "--json"],
        ["query", index, codes, "--json", "--topk", 2],
        ["query", index, codes, "--jsonl", "--topk", 2],
        ["eval", codes, "--labels", small / "labels.h5", "--json"],
        ["encode", small / "model.pt", small / "feats.h5", "-o", odd / os.fsdecode(b"c\xff.h5"), "-q"],
    ]
    for args in runs:
        capsys.readouterr()
        rc, out, err = cli(capsys, *args)
        assert rc == 0, (args, err)
        for line in out.splitlines():  # --jsonl: one document a line
            json.loads(line)
        assert_clean(err, f"stderr of {args[0]}")


# ----------------------------------------------------------------------------------------------------------
# errors that point the wrong way (issue 14, point 9)
# ----------------------------------------------------------------------------------------------------------
def test_a_text_file_is_not_silently_taken_as_a_list(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("Meeting notes\nthe clips are in the usual place\n")
    rc, _, err = cli(capsys, "extract", notes, "-o", tmp_path / "f.h5", "--workers", 0, "--frames", 2, "-q")
    line = one_line_error(rc, err, "notes.txt", "list")
    assert "Meeting notes" in line
    # a real list is read, and the run says that it read it as one
    make_video(tmp_path / "a.mp4")
    lst = tmp_path / "clips.txt"
    lst.write_text("a.mp4\n")
    rc, _, err = cli(capsys, "extract", lst, "-o", tmp_path / "f.h5", "--workers", 0, "--frames", 2, "--threads", 1)
    assert rc == 0, err
    assert "clips.txt: read as a list of 1 path(s)" in " ".join(err.split())  # rich wraps at 80 columns


def test_a_still_image_is_treated_alike_named_or_in_a_folder(tmp_path, capsys):
    import numpy as np

    from s5vh_cli import artifacts

    src = tmp_path / "in"
    src.mkdir()
    make_video(src / "clip.mp4")
    import cv2

    cv2.imwrite(str(src / "photo.png"), np.full((32, 32, 3), 200, np.uint8))
    # in a folder: skipped, and said so
    rc, out, err = cli(capsys, "extract", src, "-o", tmp_path / "a.h5", "--workers", 0, "--frames", 2, "--threads", 1)
    assert rc == 0, err
    assert artifacts.read_features(tmp_path / "a.h5").ids == ["clip.mp4"]
    assert "skipped 1 still image(s) (first: photo.png)" in " ".join(err.split())
    # named directly: not a 2-frame "video" either; recorded as a failure that says why
    rc, out, err = cli(capsys, "extract", src / "clip.mp4", src / "photo.png", "-o", tmp_path / "b.h5", "--workers", 0,
                       "--frames", 2, "--threads", 1)
    assert rc == 0, err
    assert len(artifacts.read_features(tmp_path / "b.h5").ids) == 1
    failed = artifacts.read_failures(tmp_path / "b.h5")
    assert [Path(p).name for p, _ in failed] == ["photo.png"] and "still image (PNG)" in failed[0][1]
    assert "still image" in out


def test_debug_keeps_the_exit_code_and_is_in_help(tmp_path):
    p = subprocess.run([*S5VH, "centers", tmp_path / "missing.h5", "-o", tmp_path / "c.h5", "--debug"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" in p.stderr and p.stderr.strip().splitlines()[-1].startswith("error:")
    p = subprocess.run([*S5VH, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert "--debug" in p.stdout


@pytest.mark.parametrize("n", [18, 64])
def test_centers_and_train_choose_k_by_one_rule(tmp_path, capsys, n):
    from s5vh_cli import artifacts
    from s5vh_cli.centers import default_clusters

    feats = synthetic_features(tmp_path / "f.h5", n=n)
    rc, _, err = cli(capsys, "centers", feats, "-o", tmp_path / "c.h5", "--bits", 16)
    assert rc == 0, err
    k = artifacts.read_centers(tmp_path / "c.h5").n_clusters
    assert k == default_clusters(n, 100) == max(2, n // 4)
    rc, _, err = cli(capsys, "train", feats, "-o", tmp_path / "m.pt", "--bits", 16, "--epochs", 1, "--preset",
                     "default", "--batch-size", 16, "--threads", 1)
    assert rc == 0, err
    assert f"computing {k} clusters" in " ".join(err.split())
    # an explicit --clusters larger than the videos is still refused, in one line
    rc, _, err = cli(capsys, "centers", feats, "-o", tmp_path / "c2.h5", "--bits", 16, "--clusters", n + 1)
    one_line_error(rc, err, "--clusters")


# ----------------------------------------------------------------------------------------------------------
# memory: no input file under 10 KB makes a command use more than 500 MB
# ----------------------------------------------------------------------------------------------------------
# One child runs every case in-process, one after the other. Each case may add at most 500 MB to the memory the
# process held when it started: RLIMIT_DATA (heap and anonymous mappings; RLIMIT_AS is useless with torch's large
# virtual reservations) is lowered to that before the case, so an allocation beyond it fails at once, and the case
# fails the test as an allocation error (today's code reported some as "cannot read ... Unable to allocate").
# Before each case the peak resident size is reset (/proc/self/clear_refs, "5"); after it VmHWM must stay under
# 500 MB as well, imports and earlier cases' leftovers included. A hard cap of 2 GiB keeps a regression from
# taking the shared machine down.
MEMORY_CAP = 2 << 30
MEMORY_LIMIT_MB = 500
MEMORY_CHILD = textwrap.dedent("""
    import contextlib, io, json, os, resource, sys
    hard = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
    from s5vh_cli.cli import main

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    results = []
    for args in json.load(open(sys.argv[1])):
        resource.setrlimit(resource.RLIMIT_DATA, (min(hard, status("VmData") + (500 << 20)), hard))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main(args)
                rc = 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException as e:  # MemoryError escaping, etc.
                rc, err = -1, io.StringIO(f"escaped: {type(e).__name__}: {e}")
        resource.setrlimit(resource.RLIMIT_DATA, (hard, hard))
        results.append({"args": args, "rc": rc, "err": err.getvalue()[-2000:], "peak_mb": status("VmHWM") / 2**20})
    print(json.dumps(results))
""")
ALLOCATION_FAILED = ("out of memory", "unable to allocate", "can't allocate", "alloc_cpu", "memoryerror",
                     "cannot allocate")


def tiny_models(folder: Path, small: Path) -> dict[str, Path]:
    """Model files under 10 KB whose config asks for a huge model (the weights are a token few)."""
    import torch

    base = torch.load(small / "model.pt", weights_only=True)
    out = {}
    for name, change in {"d_model_1e6": {"d_model": 1_000_000}, "depth_20000": {"depth": 20000},
                         "d_model_16384": {"d_model": 16384}, "depth_512": {"depth": 512},
                         "dec_d_model_1e6": {"dec_d_model": 1_000_000}, "frames_1e9": {"frames": 10**9},
                         "n_clusters_1e12": {"n_clusters": 10**12},
                         "ffn_1e9": {"encoder": "transformer", "ffn_dim": 10**9, "n_heads": 8}}.items():
        p = folder / f"tiny_{name}.pt"
        torch.save({**{k: v for k, v in base.items() if k != "state_dict"},
                    "model_config": {**base["model_config"], **change},
                    "state_dict": {"binary.weight": torch.zeros(16, 4)}}, p)
        assert p.stat().st_size < 10_000
        out[name] = p
    return out


def memory_cases(small: Path, folder: Path, exhaustive: bool) -> list[tuple[list[str], str]]:
    """(command line, the hostile file's name) pairs: each command reads one hostile file. The default run has one
    case per kind of blow-up; the exhaustive one every file through every command that reads its kind."""
    out = folder / "out"
    out.mkdir(exist_ok=True)
    # the default run: the cases that are cheap to make (the bombs take seconds to compress)
    names = DECLARED_SIZE_CASES if exhaustive else ["feats_unallocated", "labels_24x1e8"]
    cases = []
    for name in names:
        path, kind = declared_size_file(folder, name)
        if kind == "features":
            cmds = [["encode", small / "model.pt", path, "-o", out / "c.h5", "-q"]]
            if exhaustive:
                cmds += [["centers", path, "-o", out / "c.h5", "--clusters", 3, "-q"],
                         ["train", path, "-o", out / "m.pt", "--preset", "demo", "--epochs", 1, "-q"],
                         ["query", small / "index.bin", path, "--json"],
                         ["eval", path, "--labels", small / "labels.h5", "--model", small / "model.pt"]]
        elif kind == "labels":
            cmds = [["eval", small / "codes.h5", "--labels", path]]
        else:
            cmds = [["encode", path, small / "feats.h5", "-o", out / "c.h5", "-q"]]
            if exhaustive:
                cmds += [["query", small / "index.bin", small / "feats.h5", "--model", path],
                         ["eval", small / "feats.h5", "--labels", small / "labels.h5", "--model", path]]
        cases += [(c, path.name) for c in cmds]
    for name, path in tiny_models(folder, small).items():
        if exhaustive or name in ("d_model_1e6", "depth_20000", "d_model_16384"):
            cases.append((["encode", path, small / "feats.h5", "-o", out / "c.h5", "-q"], path.name))
            if exhaustive:
                cases.append((["eval", small / "feats.h5", "--labels", small / "labels.h5", "--model", path],
                              path.name))
    return [([str(a) for a in c], name) for c, name in cases]


def _check_memory(small: Path, folder: Path, exhaustive: bool) -> None:
    cases = memory_cases(small, folder, exhaustive)
    spec = folder / "cases.json"
    spec.write_text(json.dumps([c for c, _ in cases]))
    p = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(spec), str(MEMORY_CAP)], capture_output=True,
                       text=True, env=ENV, cwd=ROOT, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(p.stdout.strip().splitlines()[-1])
    problems = []
    for r, (_, name) in zip(results, cases, strict=True):
        errors = [ln for ln in r["err"].splitlines() if ln.startswith("error:")]
        line = errors[0] if errors else r["err"].strip()[-300:]
        what = f"{r['args'][0]} {name}"
        if r["rc"] != 2 or len(errors) != 1 or any(m in line.lower() for m in ALLOCATION_FAILED) or name not in line:
            problems.append(f"{what}: rc {r['rc']}: {line}")
        if r["peak_mb"] > MEMORY_LIMIT_MB:
            problems.append(f"{what}: peak {r['peak_mb']:.0f} MB")
    assert not problems, "\n".join(problems)


def test_small_files_never_use_more_than_500_mb(small, tmp_path):
    _check_memory(small, tmp_path, exhaustive=False)


@pytest.mark.slow
def test_small_files_never_use_more_than_500_mb_every_case(small, tmp_path):
    _check_memory(small, tmp_path, exhaustive=True)
