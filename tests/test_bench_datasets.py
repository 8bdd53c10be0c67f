"""Dataset builders: the temporal property of Fashion-MNIST temporal, manifests and label files, copy detection."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package

from clip_sources import fake_clip  # noqa: E402

from benchmarks.datasets import align_labels, check_dataset, read_labels, read_manifest, write_labels  # noqa: E402
from benchmarks.datasets import copy_detection as cd  # noqa: E402
from benchmarks.datasets import fmnist_temporal as ft  # noqa: E402
from s5vh_cli.errors import InputError, MismatchError  # noqa: E402


def _decode(path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32))
    return np.stack(frames)


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    out = tmp_path_factory.mktemp("fm")
    assert ft.main(["--out", str(out), "--tiny", "--synthetic", "--workers", "1"]) == 0
    return out


@pytest.mark.parametrize("axis", ft.AXES)
def test_reverse_partner_has_the_same_frames_in_reverse_order(axis):
    images, _ = ft.synthetic_images(2, seed=3)
    params = ft.motion_params(axis, np.random.default_rng(1), 64)
    fwd, rev = ft.pair_frames(images[5], axis, params, 12, 64)
    assert np.array_equal(rev, fwd[::-1])
    # Same multiset of frames ...
    key = lambda a: sorted(f.tobytes() for f in a)  # noqa: E731
    assert key(fwd) == key(rev)
    # ... but not a palindrome: the order carries information.
    assert not np.array_equal(fwd, rev)
    assert np.abs(fwd.astype(int) - rev.astype(int)).mean() > 1.0


def test_zoom_grows_and_translate_moves_right():
    images, _ = ft.synthetic_images(1, seed=0)
    img = images[0]
    zoom = ft.render_frames(img, "zoom", ft.motion_params("zoom", np.random.default_rng(0), 64), 6, 64)
    bg = zoom[0].min()
    area = [(f > bg + 30).sum() for f in zoom]
    assert area[-1] > 3 * area[0]
    tr = ft.render_frames(img, "translate", ft.motion_params("translate", np.random.default_rng(0), 64), 6, 64)
    xs = [np.nonzero(f > f.min() + 30)[1].mean() for f in tr]
    assert xs[-1] > xs[0] + 15


def test_fmnist_tiny_build_manifest_and_labels(fm):
    summary = json.loads((fm / "dataset.json").read_text())
    assert summary["videos"] == {"train": 36, "query": 6, "database": 18}
    assert check_dataset(fm) == summary["videos"]
    rows = read_manifest(fm)
    assert len(rows) == 60
    by_path = {r["path"]: r for r in rows}
    for r in rows:
        partner = by_path[r["partner"]]
        assert partner["partner"] == r["path"] and partner["split"] == r["split"]
        assert partner["garment"] == r["garment"] and partner["image_index"] == r["image_index"]
        a, b = ft.MOTIONS.index(r["motion"]), ft.MOTIONS.index(partner["motion"])
        assert a // 2 == b // 2 and a != b
        assert r["image_split"] == ("train" if r["split"] == "train" else "test")
    # Train and evaluation never share an image; query and database never share one either.
    imgs = {s: {r["image_index"] for r in rows if r["split"] == s} for s in ("train", "query", "database")}
    assert not imgs["query"] & imgs["database"]
    for split in ("train", "query", "database"):
        labels, ids, attrs = read_labels(fm / "labels" / f"{split}_labels.h5")
        srows = [r for r in rows if r["split"] == split]
        assert ids == sorted(ids) == [r["path"].split("/", 1)[1] for r in srows]
        assert labels.shape == (len(srows), 60) and (labels.sum(1) == 1).all()
        assert [ft.CLASSES[i] for i in labels.argmax(1)] == [r["label"] for r in srows]
        g, _, _ = read_labels(fm / "labels" / f"{split}_garment.h5")
        assert [ft.GARMENTS[i] for i in g.argmax(1)] == [r["garment"] for r in srows]
        assert json.loads(attrs["class_names"]) == list(ft.CLASSES)
    assert (fm / "labels" / "query_labels.mat").is_file()


def test_fmnist_encoded_partner_videos_are_reversed(fm):
    rows = [r for r in read_manifest(fm) if r["split"] == "query"]
    r = rows[0]
    a, b = _decode(fm / r["path"]), _decode(fm / r["partner"])
    assert a.shape == b.shape == (8, 64, 64)
    # mp4v is lossy, so compare with a tolerance that the un-reversed order clearly fails.
    assert np.abs(a - b[::-1]).mean() < 3.0
    assert np.abs(a - b).mean() > 2 * np.abs(a - b[::-1]).mean()


def test_fmnist_build_is_deterministic(fm, tmp_path):
    assert ft.main(["--out", str(tmp_path), "--tiny", "--synthetic", "--workers", "2"]) == 0
    assert (tmp_path / "manifest.csv").read_text() == (fm / "manifest.csv").read_text()


def test_fmnist_missing_source_is_one_line_error(tmp_path, capsys):
    assert ft.main(["--out", str(tmp_path / "o"), "--tiny", "--fmnist", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "fetch_assets.sh" in err and err.count("\n") == 1


def test_fmnist_reads_idx_files(tmp_path):
    import gzip

    images, labels = ft.synthetic_images(3, seed=0)
    for stem in ("train", "t10k"):
        with gzip.open(tmp_path / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape) + images.tobytes())
        with gzip.open(tmp_path / f"{stem}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes())
    pools = ft.load_fmnist(tmp_path)
    assert np.array_equal(pools["test"][0], images) and np.array_equal(pools["train"][1], labels)


def test_align_labels_follows_feature_ids(fm, tmp_path):
    lab = fm / "labels" / "database_labels.h5"
    labels, ids, _ = read_labels(lab)
    perm = np.random.default_rng(0).permutation(len(ids))
    # ids relative to the split folder, to the dataset root, or absolute all match by file name.
    for prefix in ("", "database/", str(fm / "database") + "/"):
        got = align_labels(lab, [prefix + ids[i] for i in perm])
        assert np.array_equal(got, labels[perm])
    with pytest.raises(MismatchError, match="no row"):
        align_labels(lab, ["nope.mp4"])


def test_write_labels_rejects_unsorted_paths(tmp_path):
    with pytest.raises(ValueError):
        write_labels(tmp_path, "x", dataset="d", split="query", level="l", paths=["query/b.mp4", "query/a.mp4"],
                     labels=np.eye(2), class_names=["a", "b"])


# ----------------------------------------------------------------------------------------------------------
# copy detection, on clips the test draws itself (the real ones need benchmarks/fetch_assets.sh)
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cdset(tmp_path_factory):
    assets = tmp_path_factory.mktemp("assets")
    (assets / "clips").mkdir()
    fake_clip(assets / "clips" / "tree.avi", 7, 10, 1)
    fake_clip(assets / "clips" / "carphone_pristine.mp4", 4.5, 10, 2)
    fake_clip(assets / "clips" / "carphone_distorted.mp4", 4.5, 10, 2)
    out = tmp_path_factory.mktemp("cd")
    # every copy kind for every segment; two long videos of one shot each (the clips are 7 and 4.5 s)
    summary = cd.build(assets, out, encoder="opencv", max_side=64, workers=1, all_kinds=True, max_segments=3,
                       long_videos=2, partial_per_long=8, long_size=(96, 54), excerpt_seconds=(1.0, 2.0))
    return out, summary


def test_copy_detection_builds_with_opencv_only(cdset):
    out, summary = cdset
    assert summary["encoder"] == "opencv"
    assert set(summary["sources"]) == {"tree", "carphone"}
    segs = summary["segments"]
    assert segs == 6 and summary["videos"]["database"] == segs
    carphone = len({r["segment"] for r in read_manifest(out) if r["source"] == "carphone"})
    assert summary["queries_per_transform"]["natural"] == carphone >= 1  # only carphone has a natural copy
    per_segment = len(cd.TRANSFORMS) + len(cd.PAIRS) + 2  # + shake and refilm
    assert summary["videos"]["query"] == segs * per_segment + carphone
    assert summary["videos"]["long"] == 2 and summary["videos"]["partial"] == 16
    assert check_dataset(out) == summary["videos"]


def test_copy_detection_relevance_levels(cdset):
    out, _ = cdset
    rows = read_manifest(out)
    qe, qids, _ = read_labels(out / "labels" / "query_exact.h5")
    de, dids, _ = read_labels(out / "labels" / "database_exact.h5")
    qs, _, _ = read_labels(out / "labels" / "query_same_shot.h5")
    ds, _, _ = read_labels(out / "labels" / "database_same_shot.h5")
    qrows = {r["path"].split("/", 1)[1]: r for r in rows if r["split"] == "query"}
    drows = {r["path"].split("/", 1)[1]: r for r in rows if r["split"] == "database"}
    exact = (qe @ de.T) > 0
    same = (qs @ ds.T) > 0
    for i, q in enumerate(qids):
        hits = [dids[j] for j in np.flatnonzero(exact[i])]
        assert hits == [qrows[q]["segment"] + ".mp4"]
        assert {drows[dids[j]]["source"] for j in np.flatnonzero(same[i])} == {qrows[q]["source"]}
    assert (exact <= same).all() and same.sum() > exact.sum()  # tree has several segments


def test_copy_detection_segments_and_transforms(cdset):
    out, _ = cdset
    rows = read_manifest(out)
    for r in rows:
        if r["split"] in ("database", "query"):
            n = int(r["end_frame"]) - int(r["start_frame"])
            assert 10 <= n <= 15  # 1.0-1.5 s at 10 fps
        assert (out / r["path"]).stat().st_size > 0
    q = {r["transform"]: r for r in rows if r["split"] == "query" and r["segment"] == "tree_000"}
    assert set(q) == set(cd.TRANSFORMS) | set(cd.PAIRS) | {"shake", "refilm"}
    d = next(r for r in rows if r["path"] == "database/tree_000.mp4")
    db = _decode(out / d["path"])
    assert int(q["scale"]["width"]) < int(d["width"])
    assert int(q["lowq"]["width"]) == int(d["width"]) // 2 or int(q["lowq"]["width"]) == 16
    assert float(q["fps"]["fps"]) != float(d["fps"])
    assert len(_decode(out / q["subclip"]["path"])) < len(db)
    speed = json.loads(q["speed"]["params"])["speed"]
    assert len(_decode(out / q["speed"]["path"])) == max(1, round(len(db) / speed))
    bright = _decode(out / q["photometric"]["path"]).mean()
    assert abs(bright - db.mean()) > 5
    mirrored = _decode(out / q["mirror"]["path"])
    # the mirror copy matches the flipped source far better than the source itself (the texture scrolls)
    assert np.abs(mirrored - db[:, :, ::-1]).mean() < 0.5 * np.abs(mirrored - db).mean()
    assert _decode(out / q["blur"]["path"]).std(axis=(1, 2)).mean() < db.std(axis=(1, 2)).mean()
    assert np.abs(_decode(out / q["text"]["path"]) - db).mean() > 5
    for kind in ("shake", "refilm"):
        assert (int(q[kind]["width"]), int(q[kind]["height"])) == (int(d["width"]), int(d["height"]))
    # a pair applies both parts, and records the parameters of each
    pair = json.loads(q["crop+lowq"]["params"])
    assert set(pair) == {"crop", "lowq"} and int(q["crop+lowq"]["width"]) < int(d["width"]) // 2 + 2


def test_copy_kinds_rotate_evenly():
    cfg = cd.BuildConfig()
    counts: dict[str, int] = {}
    for i in range(100):
        kinds = cd.kinds_for_segment(i, cfg, has_natural=False)
        assert len(kinds) == cfg.singles + cfg.pairs + 1 == len(set(kinds))
        for k in kinds:
            counts[k] = counts.get(k, 0) + 1
    assert {counts[k] for k in cd.TRANSFORMS} == {50}
    assert {counts[k] for k in cd.PAIRS} == {20}
    assert counts["shake"] == counts["refilm"] == 50
    assert "natural" in cd.kinds_for_segment(0, cfg, has_natural=True)
    only = cd.BuildConfig(kinds=("crop", "natural"))
    assert cd.kinds_for_segment(0, only, True) == ["crop", "natural"]


def test_partial_copies_have_their_time_range(cdset):
    out, _ = cdset
    truth = cd.read_truth(out)
    longs = json.loads((out / "long_videos.json").read_text())
    assert len(truth) == 16 and {t["long_video"] for t in truth} == {f"{n}.mp4" for n in longs}
    assert {t["transform"] for t in truth} == set(cd.PARTIAL_KINDS[:16])
    for t in truth:
        total = longs[t["long_video"][:-4]]["seconds"]
        assert 0 <= t["start_s"] < t["end_s"] <= total + 1e-9
        assert 0.9 <= t["end_s"] - t["start_s"] <= 2.1
    # an untransformed excerpt is the long video's frames over exactly that range
    t = next(t for t in truth if t["transform"] == "none")
    long_frames = _decode(out / "long" / t["long_video"])
    excerpt = _decode(out / "partial" / t["query"])
    a = round(t["start_s"] * cd.LONG_FPS)
    assert len(excerpt) == round((t["end_s"] - t["start_s"]) * cd.LONG_FPS)
    assert np.abs(excerpt - long_frames[a:a + len(excerpt)]).mean() < 3
    assert np.abs(excerpt - long_frames[a + 3:a + 3 + len(excerpt)]).mean() > 3  # and not another range
    # the shots tile each long video, and partial labels name the long video of the truth
    for info in longs.values():
        assert info["shots"][0]["start_s"] == 0 and info["shots"][-1]["end_s"] == pytest.approx(info["seconds"])
        assert all(a["end_s"] == b["start_s"] for a, b in zip(info["shots"], info["shots"][1:], strict=False))
    pl, pids, attrs = read_labels(out / "labels" / "partial_video.h5")
    names = json.loads(attrs["class_names"])
    by_query = {t["query"]: t["long_video"] for t in truth}
    assert [names[i] + ".mp4" for i in pl.argmax(axis=1)] == [by_query[q] for q in pids]


def test_copy_detection_build_is_deterministic(cdset, tmp_path):
    out, _ = cdset
    assets = tmp_path / "assets"
    (assets / "clips").mkdir(parents=True)
    fake_clip(assets / "clips" / "tree.avi", 7, 10, 1)
    kw = {"encoder": "opencv", "max_side": 64, "workers": 1, "max_segments": 2, "long_videos": 1,
          "partial_per_long": 3, "long_size": (96, 54), "excerpt_seconds": (1.0, 2.0)}
    cd.build(assets, tmp_path / "a", **kw)
    cd.build(assets, tmp_path / "b", **kw)
    assert (tmp_path / "a" / "manifest.csv").read_text() == (tmp_path / "b" / "manifest.csv").read_text()
    assert (tmp_path / "a" / "partial_truth.csv").read_text() == (tmp_path / "b" / "partial_truth.csv").read_text()
    cd.build(assets, tmp_path / "c", seed=1, **kw)
    assert (tmp_path / "a" / "manifest.csv").read_text() != (tmp_path / "c" / "manifest.csv").read_text()


def test_camera_path_recovers_hand_held_sway():
    rng = np.random.default_rng(0)
    base = (rng.random((90, 160, 3)) * 255).astype(np.uint8)
    import cv2

    base = cv2.GaussianBlur(base, (0, 0), 2)
    sway = np.round(4 * np.sin(np.arange(60) / 3)).astype(int)  # pixels, a few frames per period
    frames = [np.roll(base, s, axis=1) for s in sway]
    path = cd.camera_path(frames, smooth=25)
    assert path.shape == (60, 2)
    got = path[:, 0] * 320  # fractions of the width, measured at 320 px wide (frames scaled x2)
    want = (sway - np.convolve(np.pad(sway, (12, 12), mode="edge"), np.ones(25) / 25, "valid")) * 2
    assert np.corrcoef(got[12:-12], want[12:-12])[0, 1] > 0.9
    assert np.abs(path[:, 1]).max() < 0.01  # no vertical motion


def test_cut_points_cover_the_asked_lengths():
    rng = np.random.default_rng(0)
    cuts = cd.cut_points(300, 25.0, rng, 2.0, 5.0)
    assert cuts[0][0] == 0 and all(a[1] == b[0] for a, b in zip(cuts, cuts[1:], strict=False))
    assert all(50 <= e - s <= 125 for s, e in cuts) and 300 - cuts[-1][1] < 50
    assert cd.cut_points(30, 25.0, rng, 2.0, 5.0) == [(0, 30)]
    assert all(25 <= e - s <= 38 for s, e in cd.cut_points(300, 25.0, rng))  # default 1.0-1.5 s


def test_image_sequence_is_a_clip(tmp_path):
    import cv2

    seq = tmp_path / "seq"
    seq.mkdir()
    for i in range(5):
        cv2.imwrite(str(seq / f"image{i:04d}.pgm"), np.full((30, 40), i * 40, np.uint8))
    frames, fps = cd.read_clip(seq, 20, fps=12.5)
    assert fps == 12.5 and len(frames) == 5 and frames[0].shape == (16, 20, 3)
    assert [int(f.mean()) for f in frames] == [0, 40, 80, 120, 160]


def test_copy_detection_errors(tmp_path):
    (tmp_path / "clips").mkdir()
    with pytest.raises(InputError, match="fetch_assets"):
        cd.build(tmp_path, tmp_path / "o", encoder="opencv")
    with pytest.raises(InputError, match="unknown source"):
        cd.build(tmp_path, tmp_path / "o", encoder="opencv", sources=("nope",))
    with pytest.raises(InputError, match="unknown transform"):
        cd.build(tmp_path, tmp_path / "o", encoder="opencv", transforms=("sepia",))
    with pytest.raises(InputError, match="unknown transform 'sepia' in"):
        cd.transform([np.zeros((16, 16, 3), np.uint8)], 10.0, "crop+sepia", np.random.default_rng(0), "opencv")
    assert cd.main(["--out", str(tmp_path / "o"), "--segment-seconds", "x"]) == 2


def test_manifest_is_csv_with_header(cdset):
    out, _ = cdset
    with open(out / "manifest.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["path", "split", "segment"]
