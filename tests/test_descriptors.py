"""Descriptors for re-ranking, window (segment) codes and temporal voting for partial copies."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s5vh_cli import artifacts
from s5vh_cli.config import ModelConfig
from s5vh_cli.descriptors import frame_positions, normalise, sequence_similarity, soft_similarity
from s5vh_cli.encode import encode_segments, encode_with_descriptors, parse_seconds, segment_windows
from s5vh_cli.errors import InputError
from s5vh_cli.linear import LinearHash
from s5vh_cli.voting import vote

sys.path.insert(0, str(Path(__file__).parent))


def test_frame_positions():
    np.testing.assert_array_equal(frame_positions(25, 5), [2, 7, 12, 17, 22])
    np.testing.assert_array_equal(frame_positions(4, 8), [0, 1, 2, 3])
    np.testing.assert_array_equal(frame_positions(4, 0), [0, 1, 2, 3])


def test_monotone_alignment_tells_order_and_tolerates_subclips(rng):
    seq = normalise(rng.standard_normal((12, 16)))
    cands = np.stack([seq, seq[::-1], seq[rng.permutation(12)], normalise(rng.standard_normal((12, 16)))])
    for order in ("aligned", "monotone"):
        s = sequence_similarity(seq, cands, order)
        assert s[0] == pytest.approx(1.0, abs=1e-5)
        assert s[0] > s[1] and s[0] > s[2] and s[0] > s[3]
    # the reverse and a shuffle hold the same frames: a bag of frames cannot tell them apart
    bag = sequence_similarity(seq, cands, "none")
    assert bag[0] == pytest.approx(bag[1], abs=1e-5) == pytest.approx(bag[2], abs=1e-5)
    # a sub-clip (frames 3..8, each twice: another frame rate) still aligns perfectly with its source
    sub = np.repeat(seq[3:9], 2, axis=0)
    assert sequence_similarity(sub, cands, "monotone")[0] == pytest.approx(1.0, abs=1e-5)
    assert sequence_similarity(seq, cands[:1], "aligned")[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError):
        sequence_similarity(seq, cands, "sideways")
    assert soft_similarity(seq[0], seq[:2])[0] == pytest.approx(1.0, abs=1e-6)


def test_monotone_alignment_matches_brute_force(rng):
    import itertools

    q, c = rng.standard_normal((4, 5)), rng.standard_normal((1, 5, 5))
    sim = normalise(q) @ normalise(c[0]).T
    best = max(np.mean([sim[i, j] for i, j in enumerate(path)])
               for path in itertools.product(range(5), repeat=4) if list(path) == sorted(path))
    assert sequence_similarity(q, c, "monotone")[0] == pytest.approx(best, abs=1e-5)


def test_parse_seconds():
    assert parse_seconds("4s") == 4.0 and parse_seconds("2.5") == 2.5 and parse_seconds("500ms") == 0.5
    for bad in ("four", "-1s", "0"):
        with pytest.raises(InputError):
            parse_seconds(bad)


def test_windows_cover_the_video():
    times = np.arange(0, 10.0, 0.5)  # 20 frames at 2 frames/s: a 10 s video
    w = segment_windows(np.concatenate([times, np.full(5, 9.5)]), 20, 4.0, 2.0)
    assert [(a, b) for a, b, _ in w] == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert all(len(idx) == 8 for _, _, idx in w)
    w = segment_windows(times, 20, 4.0, 3.0)
    assert [(a, b) for a, b, _ in w] == [(0, 4), (3, 7), (6, 10)]  # the last window ends at the end
    assert [(a, b) for a, b, _ in segment_windows(times[:4], 4, 4.0, 1.0)] == [(0, 2)]  # shorter than a window


def _linear(dim=8, bits=16, frames=4, seed=0):
    g = np.random.default_rng(seed)
    m = LinearHash(ModelConfig(method="lsh", bits=bits, feature_dim=dim, frames=frames))
    return m.set_fit(np.zeros(dim), g.standard_normal((dim, bits)))


def test_encode_descriptors_and_segments(rng):
    model = _linear()
    feats = rng.standard_normal((3, 4, 8)).astype(np.float32)
    codes, desc = encode_with_descriptors(model, feats, "frames", 2)
    assert desc.dtype == np.float16 and desc.shape == (3, 2, 16)
    with torch.no_grad():
        h = model.soft_frame_codes(torch.from_numpy(feats)).numpy()
    np.testing.assert_allclose(desc.astype(np.float32), h[:, [1, 3]], rtol=1e-2, atol=1e-2)
    # windows: a 2-video "library" sampled at 2 frames/s, 12 s and 5 s long
    long = rng.standard_normal((2, 24, 8)).astype(np.float32)
    times = np.tile(np.arange(24) * 0.5, (2, 1))
    seg = encode_segments(model, long, times, np.array([24, 10]), 4.0, 2.0)
    assert list(seg["video"]) == [0] * 5 + [1] * 2
    np.testing.assert_array_equal(seg["start"], [0, 2, 4, 6, 8, 0, 1])
    # a window's code is the code of its frames resampled to the model's 4 frames
    expect, _ = encode_with_descriptors(model, long[:1, 4:12][:, [1, 3, 5, 7]], "none")
    np.testing.assert_array_equal(seg["codes"][1], expect[0])


def test_encode_file_segments_round_trip(tmp_path, rng):
    from s5vh_cli.checkpoint import save_model
    from s5vh_cli.config import TrainConfig
    from s5vh_cli.encode import encode_file

    model = _linear(dim=8, bits=16, frames=4)
    save_model(tmp_path / "m.pt", model, model.cfg, TrainConfig(), {"backbone": "test"})
    feats = rng.standard_normal((2, 20, 8)).astype(np.float32)
    meta = {"frame_times": np.tile(np.arange(20) * 0.5, (2, 1)), "valid_frames": np.array([20, 12])}
    artifacts.write_features(tmp_path / "f.h5", feats, ["a.mp4", "b.mp4"], ["/v/a.mp4", "/v/b.mp4"],
                             backbone="test", backbone_sha256="", sampling="fps=2", meta=meta,
                             prov=artifacts.provenance("test"))
    c = encode_file(tmp_path / "m.pt", tmp_path / "f.h5", tmp_path / "c.h5", segment="4s", hop="2s",
                    descriptor="soft")
    back = artifacts.read_codes(tmp_path / "c.h5")
    assert back.ids[0] == "a.mp4#t=0,4" and back.segments["video_id"][-1] == "b.mp4"
    assert len(back.ids) == len(set(back.ids)) == c.n == back.descriptors.shape[0]
    assert back.attrs["segment_seconds"] == 4.0 and back.attrs["hop_seconds"] == 2.0
    artifacts.write_features(tmp_path / "u.h5", feats, ["a", "b"], ["a", "b"], backbone="test", backbone_sha256="",
                             sampling="uniform", prov=artifacts.provenance("test"))
    with pytest.raises(InputError, match="fixed rate"):
        encode_file(tmp_path / "m.pt", tmp_path / "u.h5", tmp_path / "d.h5", segment="4s")


def test_vote_finds_video_and_range():
    # database: video A windows start every 1 s (0..20), video B the same; windows last 4 s
    starts = np.concatenate([np.arange(21.0), np.arange(21.0)])
    videos = ["A"] * 21 + ["B"] * 21
    # a query cut from A at 7 s: query windows at 0..6 s hit A's windows at 7..13 s, plus scattered noise hits
    q_start = np.arange(7.0)
    rows = [np.array([7 + i, 21 + (5 * i) % 21]) for i in range(7)]
    dist = [np.array([4, 14]) for _ in range(7)]
    m = vote(q_start, q_start + 4, rows, dist, videos, starts, starts + 4, bits=32)
    assert m[0].video == "A" and m[0].windows == 7
    assert m[0].offset == pytest.approx(7.0)
    assert (m[0].query_start, m[0].query_end) == (0.0, 10.0)
    assert (m[0].video_start, m[0].video_end) == (7.0, 17.0)
    assert m[0].score > m[1].score
    # a distance no better than chance does not vote at all
    none = vote(q_start[:1], q_start[:1] + 4, [np.array([3])], [np.array([16])], videos, starts, starts + 4, bits=32)
    assert none == []


def test_vote_finds_the_speed_of_a_sped_up_copy_and_its_whole_range():
    """An excerpt played at twice the speed: query window q hits the source window at 7 + 2q. Votes at speed 1
    drift out of any one offset bin; the vote at speed 2 collects them all and maps the whole query range."""
    starts = np.arange(0.0, 40.0, 0.5)
    videos = ["A"] * len(starts)
    q_start = np.arange(0.0, 6.5, 0.5)  # 13 windows of 2 s
    rows = [np.array([int((7 + 2 * q) / 0.5)]) for q in q_start]
    dist = [np.array([2]) for _ in q_start]
    m = vote(q_start, q_start + 2, rows, dist, videos, starts, starts + 2, bits=32, resolution=0.5)[0]
    assert m.speed == pytest.approx(2.0) and m.windows == 13
    assert m.video_start == pytest.approx(7.0) and m.video_end == pytest.approx(7.0 + 2 * 8.0)
    one = vote(q_start, q_start + 2, rows, dist, videos, starts, starts + 2, bits=32, resolution=0.5, speeds=(1.0,))[0]
    assert one.speed == 1.0 and one.windows < 13 and one.video_end - one.video_start < 10
    # a copy at speed 1 stays at speed 1 when another speed fits only a little better (the margin)
    rows1 = [np.array([int((7 + q) / 0.5)]) for q in q_start]
    m1 = vote(q_start, q_start + 2, rows1, dist, videos, starts, starts + 2, bits=32, resolution=0.5)[0]
    assert m1.speed == 1.0 and (m1.video_start, m1.video_end) == (7.0, 15.0)
    assert m1.as_dict()["speed"] == 1.0


def test_window_index_query_finds_source_and_time_range(tmp_path, rng, capsys):
    """An 8 s excerpt cut from the middle of a 20 s video: the query API votes its windows into that video and
    the matching range in both videos (index and queries of `encode --segment` codes / fixed-rate features)."""
    import json

    from s5vh_cli.checkpoint import save_model
    from s5vh_cli.cli import main
    from s5vh_cli.config import TrainConfig
    from s5vh_cli.encode import encode_file
    from s5vh_cli.search.index import build_index
    from s5vh_cli.search.query import query

    model = _linear(dim=16, bits=32, frames=4)
    save_model(tmp_path / "m.pt", model, model.cfg, TrainConfig(), {"backbone": "test"})
    feats = rng.standard_normal((3, 40, 16)).astype(np.float32)  # 3 videos of 20 s at 2 frames/s
    names = ["a.mp4", "b.mp4", "c.mp4"]

    def write(path, x, ids):
        meta = {"frame_times": np.tile(np.arange(x.shape[1]) * 0.5, (len(x), 1)),
                "valid_frames": np.full(len(x), x.shape[1])}
        artifacts.write_features(path, x, ids, [f"/v/{i}" for i in ids], backbone="test", backbone_sha256="",
                                 sampling="fps=2", meta=meta, prov=artifacts.provenance("test"))

    write(tmp_path / "db.h5", feats, names)
    encode_file(tmp_path / "m.pt", tmp_path / "db.h5", tmp_path / "c.h5", segment="4s", hop="1s", descriptor="soft")
    build_index(artifacts.read_codes(tmp_path / "c.h5"), tmp_path / "w.bin")
    excerpt = feats[1:2, 16:32] + 0.1 * rng.standard_normal((1, 16, 16)).astype(np.float32)  # b, 8 s to 16 s
    write(tmp_path / "q.h5", excerpt, ["q.mp4"])
    for rerank in (0, 5):
        out = query(tmp_path / "w.bin", [str(tmp_path / "q.h5")], topk=3, rerank=rerank)
        best = out.matches[0][0]
        assert best.video == "b.mp4" and abs(best.video_start - 8.0) <= 1.0 and abs(best.video_end - 16.0) <= 1.0
        assert abs(best.query_start) <= 1.0 and abs(best.query_end - 8.0) <= 1.0
    # the same through the CLI, and codes of windows as the query
    encode_file(tmp_path / "m.pt", tmp_path / "q.h5", tmp_path / "qc.h5", segment="4s", hop="1s", descriptor="soft")
    for q in (tmp_path / "q.h5", tmp_path / "qc.h5"):
        capsys.readouterr()
        main(["query", str(tmp_path / "w.bin"), str(q), "--json"])
        doc = json.loads(capsys.readouterr().out)
        r = doc["queries"][0]["results"][0]
        assert doc["windows"] is True and r["id"] == "b.mp4" and abs(r["video_range_s"][0] - 8.0) <= 1.0
    with pytest.raises(InputError, match="--radius"):
        query(tmp_path / "w.bin", [str(tmp_path / "q.h5")], radius=3)


def test_query_to_partial_converts_window_answers():
    """benchmarks.query_to_partial: `s5vh query --jsonl` on a window index -> copy_eval's partial predictions."""
    import json

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from benchmarks.query_to_partial import convert

    line = json.dumps({"query": "partial/q.mp4", "query_path": "/d/partial/q.mp4", "results": [
        {"rank": 1, "id": "long_01.mp4", "video_range_s": [8.0, 16.0], "query_range_s": [0.0, 8.0]},
        {"rank": 2, "id": "long_02.mp4", "video_range_s": [1.0, 3.0], "query_range_s": [0.0, 2.0]}]})
    assert convert([line, ""]) == [{"query": "q.mp4", "results": [
        {"video": "long_01.mp4", "start_s": 8.0, "end_s": 16.0}, {"video": "long_02.mp4", "start_s": 1.0, "end_s": 3.0}]}]
