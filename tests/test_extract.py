"""extract: inputs, failures, resume after a kill, float16, and extract_clips parity with the artifact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from s5vh_cli.artifacts import read_failures, read_features
from s5vh_cli.backbones import build_model
from s5vh_cli.config import ExtractConfig
from s5vh_cli.errors import InputError, MismatchError, VideoError
from s5vh_cli.extract import collect_inputs, extract, extract_clips
from s5vh_cli.progress import Recorder

sys.path.insert(0, str(Path(__file__).parent))
from private_net import marked_processes  # noqa: E402
from test_video import make_index_video  # noqa: E402

T = 4
S5VH = [sys.executable, "-m", "s5vh_cli"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A randomly initialised MobileNetV2 in torchvision's layout: the pipeline does not need ImageNet weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "mnv2-random.pth"
    torch.save(build_model("mobilenet_v2").state_dict(), path)
    return str(path)


def make_corpus(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_index_video(folder / f"v{i:02d}.mp4", 12 + 3 * i)
    return folder


def run(inputs, out, weights, **kw):
    cfg = ExtractConfig(frames=kw.pop("frames", T), batch_size=kw.pop("batch_size", 8), dtype=kw.pop("dtype", "float32"),
                        sampling=kw.pop("sampling", "uniform"))
    return extract([str(i) for i in inputs], out, config=cfg, weights=weights, device="cpu",
                   workers=kw.pop("workers", 0), **kw)


def test_folder_with_every_failure_kind(tmp_path, weights):
    vids = make_corpus(tmp_path / "vids", 2)
    (vids / "sub").mkdir()
    make_index_video(vids / "sub" / "deep.avi", 20, fourcc="MJPG")
    (vids / "zero.mp4").write_bytes(b"")
    (vids / "text.mkv").write_text("not a video\n" * 20)
    (vids / "noise.avi").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    good = (vids / "v00.mp4").read_bytes()
    (vids / "truncated.mp4").write_bytes(good[: len(good) // 3])
    os.symlink(vids / "missing.mp4", vids / "unreadable.mp4")  # a dangling link cannot be read
    (vids / "notes.txt").write_text("ignored: no video extension")
    rec = Recorder()
    res = run([vids], tmp_path / "f.h5", weights, progress=rec)
    f = read_features(tmp_path / "f.h5")
    assert f.ids == ["sub/deep.avi", "v00.mp4", "v01.mp4"]
    assert f.feats.shape == (3, T, 1280) and f.feats.dtype == np.float32
    fails = dict((os.path.basename(p), r) for p, r in read_failures(tmp_path / "f.h5"))
    assert set(fails) == {"zero.mp4", "text.mkv", "noise.avi", "truncated.mp4", "unreadable.mp4"}
    assert "empty" in fails["zero.mp4"] and "no such file" in fails["unreadable.mp4"]
    assert len(res.failed) == 5 and res.extracted == 3
    assert any("without a video extension" in m for m in rec.messages)
    assert not (tmp_path / "f.h5.partial").exists()


def test_nothing_extracted_is_an_error(tmp_path, weights):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "a.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="no video could be extracted"):
        run([d], tmp_path / "f.h5", weights)
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.partial").exists()
    with pytest.raises(InputError, match="no such file"):
        run([tmp_path / "nothing"], tmp_path / "f.h5", weights)


def test_list_file_stdin_and_glob(tmp_path):
    vids = make_corpus(tmp_path / "vids", 3)
    lst = tmp_path / "list.txt"
    lst.write_text("# a comment\nvids/v01.mp4\n\nvids/v00.mp4\n")
    items, _ = collect_inputs([str(lst)])
    assert items == [("vids/v01.mp4", str(tmp_path / "vids/v01.mp4")), ("vids/v00.mp4", str(tmp_path / "vids/v00.mp4"))]
    items, _ = collect_inputs(["-"], stdin=[str(vids / "v02.mp4") + "\n"])
    assert [p for _, p in items] == [str(vids / "v02.mp4")]
    items, _ = collect_inputs([str(vids / "v0[02].mp4")])
    assert [os.path.basename(p) for _, p in items] == ["v00.mp4", "v02.mp4"]
    items, _ = collect_inputs([str(vids), str(vids / "v00.mp4")])  # the same file twice: kept once
    assert len(items) == 3


def test_rerun_skips_done_and_appends_new(tmp_path, weights):
    vids = make_corpus(tmp_path / "vids", 3)
    out = tmp_path / "f.h5"
    run([vids], out, weights)
    first = read_features(out)
    res = run([vids], out, weights)
    assert res.extracted == 0 and res.skipped == 3
    make_index_video(vids / "v99.mp4", 15)
    res = run([vids], out, weights)
    assert res.extracted == 1 and res.skipped == 3
    f = read_features(out)
    assert f.ids == first.ids + ["v99.mp4"]
    np.testing.assert_array_equal(f.feats[:3], first.feats)
    with pytest.raises(MismatchError, match="frames"):
        run([vids], out, weights, frames=T + 1)


def test_torn_partial_record_is_cut(tmp_path, weights):
    """Resumed rows equal an uninterrupted run's bit for bit, though the passes hold other videos (1, then 2,
    against 3 in one pass): every pass is padded to the same size (here 4 videos of 8 frames)."""
    vids = make_corpus(tmp_path / "vids", 3)
    ref = run([vids], tmp_path / "ref.h5", weights, frames=8, batch_size=32)
    assert ref.videos == 3
    out = tmp_path / "f.h5"
    # a run that completed one video, then was killed half-way through writing the next record
    run([vids / "v00.mp4"], tmp_path / "one.h5", weights, frames=8, batch_size=32)
    from s5vh_cli import extract as ex

    j = ex._open_journal(out, _settings_of(tmp_path / "one.h5"), Recorder())
    one = read_features(tmp_path / "one.h5")
    head = {"id": "v00.mp4", "path": os.fsencode(str(vids / "v00.mp4")).hex()}
    j.add_video(head, one.feats[0])
    j.f.write(ex._pack(b"V", {"id": "v01.mp4", "path": "00"}, b"\0" * 4000)[:-100])
    j.f.close()
    res = run([vids], out, weights, frames=8, batch_size=32)
    assert res.skipped == 1 and res.extracted == 2
    f = read_features(out)
    assert f.ids == ["v00.mp4", "v01.mp4", "v02.mp4"]
    np.testing.assert_array_equal(f.feats, read_features(tmp_path / "ref.h5").feats)


def _settings_of(path: Path) -> dict:
    with h5py.File(path, "r") as h5:
        from s5vh_cli.extract import _SETTING_KEYS

        return {k: (v.item() if hasattr(v, "item") else v) for k in _SETTING_KEYS for v in [h5.attrs[k]]}


def test_resume_after_sigkill(tmp_path, weights):
    vids = make_corpus(tmp_path / "vids", 16)
    out = tmp_path / "f.h5"
    part = tmp_path / "f.h5.partial"
    cmd = [*S5VH, "extract", str(vids), "-o", str(out), "--frames", str(T), "--batch-size", "1",
           "--workers", "1", "--device", "cpu", "--weights", weights, "--threads", "1", "--quiet"]
    env = dict(os.environ, S5VH_OFFLINE="1", S5VH_TEST_MARK=str(tmp_path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # kill as soon as a few rows are in the journal: mid-run, quite possibly mid-write
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and part.stat().st_size > 3 * T * 1280 * 4:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    for _ in range(50):  # the decode worker dies with its main process
        if not marked_processes(str(tmp_path)):
            break
        time.sleep(0.1)
    assert not marked_processes(str(tmp_path)), "a decode worker outlived the killed run"
    assert part.exists() and not out.exists()
    subprocess.run(cmd, env=env, check=True, timeout=300)
    assert not part.exists()
    got = read_features(out)
    ref = run([vids], tmp_path / "ref.h5", weights)
    want = read_features(tmp_path / "ref.h5")
    assert ref.videos == 16
    assert got.ids == want.ids and got.paths == want.paths and len(set(got.ids)) == 16
    np.testing.assert_allclose(got.feats, want.feats, rtol=1e-4, atol=1e-5)
    for k in ("frame_indices", "frame_count", "valid_frames"):
        np.testing.assert_array_equal(got.meta[k], want.meta[k])


def test_float16_and_fps_sampling(tmp_path, weights):
    vids = make_corpus(tmp_path / "vids", 2)
    run([vids], tmp_path / "a.h5", weights, dtype="float16", sampling="fps=5", frames=3)
    f = read_features(tmp_path / "a.h5")
    assert f.feats.dtype == np.float16 and f.sampling == "fps=5"
    np.testing.assert_array_equal(f.meta["frame_indices"][0], [0, 5, 10])  # 25 frames/s source
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        assert h5.attrs["dtype"] == "float16" and h5.attrs["frames"] == 3


def test_views_are_stored_seeded_and_resumable(tmp_path, weights):
    vids = make_corpus(tmp_path / "vids", 3)
    cfg = ExtractConfig(frames=T, batch_size=8, views=2, view_seed=5)
    extract([str(vids)], tmp_path / "v.h5", config=cfg, weights=weights, device="cpu", workers=0)
    f = read_features(tmp_path / "v.h5")
    assert f.views.shape == (3, 2, T, f.dim) and f.attrs["views"] == 2
    # the plain rendering is exactly what extraction without views gives
    run([vids], tmp_path / "plain.h5", weights)
    np.testing.assert_allclose(f.feats, read_features(tmp_path / "plain.h5").feats, rtol=1e-5, atol=1e-6)
    assert f.views is not None and not np.allclose(f.views[:, 0], f.feats)  # edited renderings differ
    # same seed, same views; another seed, other views
    extract([str(vids)], tmp_path / "v2.h5", config=cfg, weights=weights, device="cpu", workers=1)
    np.testing.assert_allclose(read_features(tmp_path / "v2.h5").views, f.views, rtol=1e-5, atol=1e-6)
    other = ExtractConfig(frames=T, batch_size=8, views=2, view_seed=6)
    extract([str(vids)], tmp_path / "v3.h5", config=other, weights=weights, device="cpu", workers=0)
    assert not np.allclose(read_features(tmp_path / "v3.h5").views, f.views)
    # appending to a finished output keeps its views; other view settings are refused
    make_index_video(vids / "v99.mp4", 30)
    extract([str(vids)], tmp_path / "v.h5", config=cfg, weights=weights, device="cpu", workers=0)
    g = read_features(tmp_path / "v.h5")
    assert g.views.shape[:2] == (4, 2)
    np.testing.assert_allclose(g.views[:3], f.views, rtol=1e-5, atol=1e-6)
    with pytest.raises(MismatchError, match="views"):
        extract([str(vids)], tmp_path / "v.h5", config=ExtractConfig(frames=T, views=1, view_seed=5),
                weights=weights, device="cpu", workers=0)


def test_view_edits_render(tmp_path):
    from s5vh_cli.views import ViewSpec, apply_spatial, draw_view, view_indices, view_rng

    frame = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    kinds = set()
    for v in range(40):
        spec = draw_view(view_rng(0, "clip.mp4", v))
        assert spec.spatial  # at least one spatial edit
        kinds |= {k for k, _ in spec.spatial} | {spec.temporal.get("kind", "none")}
        out = apply_spatial(frame, spec)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        idx = view_indices(np.arange(0, 100, 10), 100, spec)
        assert len(idx) == 10 and idx.min() >= 0 and idx.max() < 100 and (np.diff(idx) >= 0).all()
    assert kinds >= {"crop", "mirror", "colour", "blur", "jpeg", "text", "subclip", "frame_rate", "none"}
    np.testing.assert_array_equal(apply_spatial(frame, ViewSpec(spatial=[("mirror", {})])), frame[:, ::-1])
    assert draw_view(view_rng(0, "a", 0)) == draw_view(view_rng(0, "a", 0))


def test_extract_clips_reproduces_artifact_rows(tmp_path, weights):
    vids = make_corpus(tmp_path / "vids", 3)
    run([vids], tmp_path / "f.h5", weights, sampling="fps=10", frames=5)
    f = read_features(tmp_path / "f.h5")
    feats, infos = extract_clips(f.paths, backbone=f.backbone, frames=f.frames, sampling=f.sampling,
                                 weights=weights, device="cpu", batch_size=7)
    assert feats.dtype == np.float32 and feats.shape == f.feats.shape
    np.testing.assert_allclose(feats, f.feats, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal([i["frame_indices"] for i in infos], f.meta["frame_indices"])
    with pytest.raises(VideoError):
        extract_clips([str(tmp_path / "nope.mp4")], backbone="mobilenet_v2", frames=5, sampling="uniform",
                      weights=weights, device="cpu")


def test_cli_exit_codes_and_json(tmp_path, weights, monkeypatch, capsys):
    import json

    from s5vh_cli.cli import main

    monkeypatch.setenv("S5VH_OFFLINE", "1")
    vids = make_corpus(tmp_path / "vids", 1)
    (vids / "bad.mp4").write_text("x")
    base = ["extract", str(vids), "--frames", "2", "--workers", "0", "--weights", weights, "--device", "cpu",
            "--quiet", "--threads", "1"]

    def cli(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as e:
            main([*base, *args])
            raise SystemExit(0)
        out, err = capsys.readouterr()
        return e.value.code, out, err

    code, out, err = cli("-o", str(tmp_path / "a.h5"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["extracted"] == 1 and summary["failed"][0]["path"].endswith("bad.mp4")
    code, out, err = cli("-o", str(tmp_path / "b.h5"), "--strict")
    assert code == 2 and "--strict" in err and (tmp_path / "b.h5").exists()
    base[1] = str(vids / "bad.mp4")
    code, out, err = cli("-o", str(tmp_path / "c.h5"))
    assert code == 2 and "Traceback" not in err and "no video could be extracted" in err


def test_worker_crash_blames_only_the_crashing_file(tmp_path, monkeypatch):
    """A decoder that kills its worker process: that file is recorded as failed, the others still decode, in order."""
    from s5vh_cli import extract as ex

    (tmp_path / "crashy_decoder.py").write_text(
        "import os\n"
        "def job(path, *args):\n"
        "    if 'crash' in path:\n"
        "        os._exit(3)\n"
        "    return 'ok', path\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    import crashy_decoder

    monkeypatch.setattr(ex, "_decode_job", crashy_decoder.job)
    names = ["a", "b", "crash", "c", "d", "e"]
    got = list(ex._decoded([(n, n) for n in names], ExtractConfig(frames=2), 64, 64, workers=2))
    assert [g[0] for g in got] == names
    assert [g[2] for g in got] == ["ok", "ok", "err", "ok", "ok", "ok"]
    assert "crashed" in got[2][3]
