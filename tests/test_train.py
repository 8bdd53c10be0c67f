import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s5vh_cli import artifacts
from s5vh_cli.artifacts import Centers, Features
from s5vh_cli.checkpoint import load_model
from s5vh_cli.config import ModelConfig, TrainConfig, preset
from s5vh_cli.encode import encode_array, encode_file
from s5vh_cli.errors import InputError, MismatchError
from s5vh_cli.progress import Recorder
from s5vh_cli.train import train

N, T, F, L, K = 20, 8, 12, 16, 4


def make_features(n=N, frames=T, dim=F, seed=0, path=None) -> Features:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, frames, dim)).astype(np.float32)
    return Features(path=Path(path or "mem.h5"), feats=feats, ids=[f"v{i}" for i in range(n)],
                    paths=[f"/videos/v{i}.mp4" for i in range(n)], backbone="test", sampling="uniform",
                    sha256="a" * 64)


def make_centers(n=N, seed=0) -> Centers:
    rng = np.random.default_rng(seed)
    return Centers(path=Path("c.h5"), pseudo_labels=rng.integers(0, K, n), centroids=np.zeros((K, 3), np.float32),
                   pca_mean=np.zeros(F, np.float32), pca_components=np.zeros((3, F), np.float32),
                   hash_centers={L: (rng.integers(0, 2, (K, L)) * 2 - 1).astype(np.int8)})


def configs(behaviour="paper", **train_kw) -> tuple[ModelConfig, TrainConfig]:
    m, t, _ = preset("demo", behaviour)
    m = dataclasses.replace(m, bits=L, d_model=32, depth=2, dec_d_model=24, drop_path=0.2)
    t = dataclasses.replace(t, **{"epochs": 2, "batch_size": 8, "warm_up_epochs": 1, **train_kw})
    return m, t


def run_train(tmp_path, name, behaviour="paper", progress=None, resume=False, features=None, backend="torch",
              on_epoch=None, **train_kw):
    m, t = configs(behaviour, **train_kw)
    return train(features or make_features(), make_centers(), m, t, tmp_path / name, resume=resume, device="cpu",
                 ssm_backend=backend, progress=progress, on_epoch=on_epoch)


def _cpu_kernel_ok() -> bool:
    from s5vh_cli.ssm import available_backends

    return available_backends()["cpu"].startswith("available")


@pytest.mark.parametrize("behaviour", ["paper", "released"])
def test_both_behaviours_train(tmp_path, behaviour):
    rec = Recorder()
    s = run_train(tmp_path, f"{behaviour}.pt", behaviour, progress=rec, warm_up_epochs=0)
    assert s["epochs_run"] == 2 and s["ssm_backend"] == "torch"
    rows = [json.loads(x) for x in Path(s["metrics"]).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite([r["loss"], r["rec"], r["dcl"], r["ca"]]).all() for r in rows)
    assert rows[1]["lr"] < rows[0]["lr"] == pytest.approx(5e-4)
    assert any("selective scan: torch" in m for m in rec.messages)
    model, meta = load_model(tmp_path / f"{behaviour}.pt", ssm_backend="torch")
    assert meta["model_config"]["centers_mode"] == ("fixed" if behaviour == "paper" else "learned")
    assert meta["train_config"]["label_pred"] == behaviour


class _StopAt(Recorder):
    """Interrupts training at the first step of a given epoch, as Ctrl-C would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def advance(self, n=1, **info):
        if info.get("epoch") == self.epoch:
            raise KeyboardInterrupt
        super().advance(n, **info)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_resume_is_bit_for_bit(tmp_path, backend):
    if backend == "cpu" and not _cpu_kernel_ok():
        pytest.skip("the numba selective-scan kernel does not load here")
    run_train(tmp_path, "straight.pt", backend=backend)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path, "resumed.pt", progress=_StopAt(2), backend=backend)
    assert not (tmp_path / "resumed.pt").exists() and (tmp_path / "resumed.pt.run" / "last.pt").exists()
    rec = Recorder()
    s = run_train(tmp_path, "resumed.pt", progress=rec, resume=True, backend=backend)
    assert s["epochs_run"] == 1 and any("resuming after epoch 1" in m for m in rec.messages)
    a = torch.load(tmp_path / "straight.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = [json.loads(x) for x in (tmp_path / "straight.pt.run" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "resumed.pt.run" / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in ma] == \
        [{k: v for k, v in r.items() if k != "time_s"} for r in mb]


def test_same_seed_same_model_other_seed_differs(tmp_path):
    run_train(tmp_path, "a.pt", epochs=1)
    run_train(tmp_path, "b.pt", epochs=1)
    run_train(tmp_path, "c.pt", epochs=1, seed=2)
    a, b, c = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["state_dict"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_on_epoch_callback_leaves_training_unchanged(tmp_path):
    run_train(tmp_path, "plain.pt")
    seen, models = [], []

    def evaluate_and_disturb(epoch, model, row):
        seen.append((epoch, row["epoch"], model.training, torch.is_grad_enabled()))
        models.append(model)
        torch.rand(5)  # draws from the global RNG, as DropPath or a random probe would
        encode_array(model, make_features(n=5, seed=3).feats)  # leaves the model in eval mode
        row["loss"] = -1.0  # the callback gets a copy: the metrics file must not see this

    s = run_train(tmp_path, "hooked.pt", on_epoch=evaluate_and_disturb)
    assert seen == [(1, 1, True, False), (2, 2, True, False)]
    assert models[-1].training
    a = torch.load(tmp_path / "plain.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "hooked.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = [json.loads(x) for x in (tmp_path / "plain.pt.run" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in Path(s["metrics"]).read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in ma] == \
        [{k: v for k, v in r.items() if k != "time_s"} for r in mb]


def test_resume_refuses_other_config(tmp_path):
    run_train(tmp_path, "m.pt", epochs=1)
    with pytest.raises(MismatchError):
        run_train(tmp_path, "m.pt", epochs=1, resume=True, lr=1e-3)
    with pytest.raises(InputError):
        run_train(tmp_path, "none.pt", resume=True)


def test_validation_split_keeps_best(tmp_path):
    s = run_train(tmp_path, "v.pt", val_fraction=0.25, epochs=3)
    assert s["n_val"] == 5 and s["n_train"] == 15
    rows = [json.loads(x) for x in Path(s["metrics"]).read_text().splitlines()]
    best = min(rows, key=lambda r: r["val_loss"])
    assert s["selected_epoch"] == best["epoch"] and s["best_val_loss"] == pytest.approx(best["val_loss"])
    meta = torch.load(tmp_path / "v.pt", weights_only=True)
    assert meta["extra"]["selected_epoch"] == best["epoch"]


def test_centres_must_match_features(tmp_path):
    m, t = configs()
    with pytest.raises(MismatchError):
        train(make_features(n=N + 4), make_centers(), m, t, tmp_path / "x.pt", device="cpu", ssm_backend="torch")
    c = make_centers()
    c.hash_centers = {32: np.ones((K, 32), np.int8)}
    with pytest.raises(MismatchError):
        train(make_features(), c, m, t, tmp_path / "x.pt", device="cpu", ssm_backend="torch")


def test_in_process_centres(tmp_path):
    pytest.importorskip("s5vh_cli.centers")
    m, t = configs(epochs=1)
    rec = Recorder()
    feats = make_features(n=40)
    s = train(feats, None, m, t, tmp_path / "m.pt", device="cpu", ssm_backend="torch", progress=rec)
    assert any("computing" in msg for msg in rec.messages)
    assert s["n_train"] == 40


def test_encode_array_packs_hash_bits(tmp_path):
    run_train(tmp_path, "m.pt", epochs=1)
    model, _ = load_model(tmp_path / "m.pt", ssm_backend="torch")
    feats = make_features(n=7, seed=5).feats
    codes = encode_array(model, feats, batch_size=3)
    assert codes.dtype == np.uint8 and codes.shape == (7, L // 8)
    want = model.hash(torch.from_numpy(feats)).numpy()
    assert np.array_equal(np.unpackbits(codes, axis=1).astype(bool), want)
    with pytest.raises(MismatchError):
        encode_array(model, make_features(n=2, frames=T + 2).feats)


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "S5VH_DEBUG": ""}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "s5vh_cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600)


def write_inputs(tmp_path, frames=T, name="f.h5"):
    f = make_features(frames=frames)
    path = tmp_path / name
    artifacts.write_features(path, f.feats, f.ids, f.paths, backbone="test", backbone_sha256="", sampling="uniform",
                             prov=artifacts.provenance("extract"))
    c = make_centers()
    c.features_sha256 = artifacts.sha256_file(path)
    artifacts.write_centers(tmp_path / "c.h5", c, artifacts.provenance("centers"))
    return path


def test_cli_train_and_encode(tmp_path):
    feats = write_inputs(tmp_path)
    p = cli("train", feats, "--centers", tmp_path / "c.h5", "-o", tmp_path / "m.pt", "--bits", L, "--preset", "demo",
            "--behaviour", "released", "--no-tie-directions", "--decoder-order", "temporal", "--epochs", 1,
            "--batch-size", 8, "--ssm-backend", "torch", "--threads", 1, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert "behaviour: released" in p.stderr and "selective scan: torch" in p.stderr
    model, meta = load_model(tmp_path / "m.pt")
    assert meta["model_config"]["tie_directions"] is False and meta["model_config"]["centers_mode"] == "learned"
    assert meta["model_config"]["decoder_order"] == "temporal" and meta["model_config"]["frames"] == T
    p = cli("encode", tmp_path / "m.pt", feats, "-o", tmp_path / "codes.h5", "--quiet", "--ssm-backend", "torch")
    assert p.returncode == 0, p.stderr
    codes = artifacts.read_codes(tmp_path / "codes.h5")
    assert codes.bits == L and codes.ids == [f"v{i}" for i in range(N)]
    assert codes.model_sha256 == artifacts.sha256_file(tmp_path / "m.pt")
    assert codes.attrs["model_path"] == str((tmp_path / "m.pt").resolve()) and codes.attrs["frames"] == T
    f = artifacts.read_features(feats)
    assert np.array_equal(codes.codes, encode_array(model, f.feats))
    # a features file with another frame count: one red line, exit 2
    other = write_inputs(tmp_path, frames=T + 2, name="g.h5")
    p = cli("encode", tmp_path / "m.pt", other, "-o", tmp_path / "bad.h5")
    assert p.returncode == 2 and "frames" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "bad.h5").exists()


def test_encode_file_mismatch(tmp_path):
    feats = write_inputs(tmp_path)
    run_train(tmp_path, "m.pt", epochs=1)
    other = write_inputs(tmp_path, frames=T + 1, name="g.h5")
    with pytest.raises(MismatchError):
        encode_file(tmp_path / "m.pt", other, tmp_path / "x.h5", ssm_backend="torch")
    codes = encode_file(tmp_path / "m.pt", feats, tmp_path / "ok.h5", ssm_backend="torch")
    assert codes.n == N


def test_label_pred_modes():
    from s5vh_cli.model import S5VH
    from s5vh_cli.train import _label_pred

    m, _ = configs()
    torch.manual_seed(0)
    model = S5VH(dataclasses.replace(m, feature_dim=F, frames=T, n_clusters=K, drop_path=0.5, centers_mode="learned"),
                 ssm_backend="torch").train()
    x = torch.randn(5, T, F)
    p1, p2 = _label_pred(model, x, "paper", 0.5), _label_pred(model, x, "paper", 0.5)
    assert model.training and torch.equal(p1, p2)
    with torch.no_grad():
        model.eval()
        want = torch.softmax(model.center_logits(model.frame_codes(x).mean(1)) / (L * 0.5), -1)
        model.train()
    assert torch.allclose(p1, want)
    # released: train mode (DropPath draws), no LayerNorm before the sign, no temperature
    torch.manual_seed(1)
    r1 = _label_pred(model, x, "released", 0.5)
    torch.manual_seed(1)
    with torch.no_grad():
        codes = torch.where(model.binary(model.encoder(x)) > 0, 1.0, -1.0)
        want = torch.softmax(model.center_logits(codes.mean(1)), -1)
    assert torch.allclose(r1, want)
    assert not torch.allclose(r1, p1)


def test_transformed_views_and_reverse_negatives(tmp_path):
    f = make_features()
    with pytest.raises(InputError, match="extract --views"):
        run_train(tmp_path, "a.pt", features=f, transformed_views=True)
    f.views = np.random.default_rng(1).standard_normal((f.n, 2, f.frames, f.dim)).astype(np.float32)
    s = run_train(tmp_path, "b.pt", features=f, transformed_views=True, reverse_negatives=True)
    assert np.isfinite(s["last"]["loss"])
    _, meta = load_model(tmp_path / "b.pt", ssm_backend="torch")
    assert meta["train_config"]["transformed_views"] and meta["train_config"]["reverse_negatives"]
    # the paper's training is untouched by the existence of views: same seed, same model as without them
    plain = run_train(tmp_path, "c.pt", features=make_features())
    with_views = run_train(tmp_path, "d.pt", features=f)
    assert plain["last"]["loss"] == with_views["last"]["loss"]


def test_two_renderings_differ_per_video():
    from s5vh_cli.train import _two_renderings

    feats = np.zeros((6, 2, 3), np.float32)
    views = np.stack([np.full((6, 2, 3), k + 1, np.float32) for k in range(3)], axis=1)  # rendering k holds k
    a, b = _two_renderings(feats, views, np.arange(6), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert a.shape == (6, 2, 3) and (a[:, 0, 0] != b[:, 0, 0]).all()
    assert set(a[:, 0, 0].tolist()) | set(b[:, 0, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_temporal_pool_trains_and_codes_pool_each_stretch(tmp_path):
    """--temporal-pool 2 trains end to end (contrastive views pool the visible frames by their positions) and
    bit block s of the code is the sign of the frame codes' mean over the s-th half of the video only."""
    import torch

    m, t = configs()
    m = dataclasses.replace(m, temporal_pool=2)
    s = train(make_features(), make_centers(), m, t, tmp_path / "p.pt", device="cpu", ssm_backend="torch")
    assert np.isfinite(s["last"]["loss"])
    model, meta = load_model(tmp_path / "p.pt", ssm_backend="torch")
    assert meta["model_config"]["temporal_pool"] == 2
    x = torch.from_numpy(make_features().feats[:8])
    with torch.no_grad():
        fc = model.frame_codes(x)  # [B, T, L] +-1
        half, t_ = fc.shape[2] // 2, fc.shape[1]
        want = torch.cat([fc[:, :t_ // 2, :half].mean(1), fc[:, t_ // 2:, half:].mean(1)], dim=1) >= 0
        assert torch.equal(model.hash(x), want)


def test_auto_schedule_is_what_trains_and_is_recorded(tmp_path):
    """epochs = batch_size = 0 (the default preset): the schedule comes from the library size, the loop runs
    exactly that many epochs, and the model records the resolved values."""
    from s5vh_cli.config import resolve_schedule

    m, t = configs(epochs=0, batch_size=0, auto_steps=6)
    want = resolve_schedule(t, N)
    assert (want.batch_size, want.epochs) == (16, 3)  # 20 videos: 2 steps an epoch, at least 3 epochs
    s = train(make_features(), make_centers(), m, t, tmp_path / "a.pt", device="cpu", ssm_backend="torch")
    assert s["epochs"] == s["epochs_run"] == 3
    _, meta = load_model(tmp_path / "a.pt", ssm_backend="torch")
    assert (meta["train_config"]["epochs"], meta["train_config"]["batch_size"]) == (3, 16)
