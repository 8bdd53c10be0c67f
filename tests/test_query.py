"""Query pipeline and CLI: codes, features and clip inputs; JSON schema; exit codes; exclusion; radius."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import s5vh_cli.encode  # noqa: F401 - imported now, so that it binds the real load_model, not the fixture's stand-in
from s5vh_cli import artifacts, checkpoint, extract
from s5vh_cli.artifacts import Codes
from s5vh_cli.cli import main
from s5vh_cli.codes import hamming, rank
from s5vh_cli.search import index as I
from s5vh_cli.search.query import query

BITS, T, F = 16, 4, 6


class StandIn(torch.nn.Module):
    """A fixed random projection: the bits of sum_t x_t @ W (enough to test the plumbing)."""

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(bits=BITS, frames=T, feature_dim=F, encoder="transformer", code_tie="plus_one")
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(F, BITS, generator=g))

    def hash(self, x):
        return (x @ self.w).sum(dim=1) >= 0

    # the descriptor side of a model (encode --descriptor soft): pre-sign frame codes and their mean
    def soft_frame_codes(self, x):
        return x @ self.w

    def bits_from_soft(self, h):
        return h.sum(dim=1) >= 0

    def soft_video(self, h):
        return h.mean(dim=1)


def encode_np(feats):
    m = StandIn()
    with torch.no_grad():
        return np.packbits(m.hash(torch.from_numpy(feats)).numpy(), axis=1)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """An index of 300 stand-in codes whose model file exists, plus a features file and a clip folder."""
    model_path = tmp_path / "model.pt"
    model_path.write_bytes(b"stand-in model")
    sha = artifacts.sha256_file(model_path)
    r = np.random.default_rng(0)
    feats = r.normal(size=(300, T, F)).astype(np.float32)
    paths = [str(tmp_path / "videos" / f"c{i % 3}" / f"v{i}.mp4") for i in range(300)]
    c = Codes(path=None, codes=encode_np(feats), ids=[f"v{i}" for i in range(300)], paths=paths, bits=BITS,
              model_sha256=sha)
    extra = {"model_path": str(model_path), "backbone": "resnet50", "sampling": "uniform", "frames": T}
    artifacts.write_codes(tmp_path / "codes.h5", c, artifacts.provenance("encode"), extra_attrs=extra)
    artifacts.write_features(tmp_path / "feats.h5", feats[:5], [f"v{i}" for i in range(5)], paths[:5],
                             backbone="resnet50", backbone_sha256="bb", sampling="uniform",
                             prov=artifacts.provenance("extract"))
    I.build_index(artifacts.read_codes(tmp_path / "codes.h5"), tmp_path / "i.bin")
    # clips: files whose features are the indexed features of the video with the same number
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in (7, 8):
        (clips / f"v{i}.mp4").write_bytes(b"not really a video")
    calls = []

    def fake_load_model(path, device="cpu", ssm_backend="auto"):
        calls.append(str(path))
        return StandIn(), {"features": {"backbone": "resnet50", "backbone_sha256": "bb", "sampling": "uniform",
                                        "frames": T, "feature_dim": F}, "model_config": {"bits": BITS}}

    def fake_extract_clips(paths, *, backbone, frames, sampling, weights=None, device="auto", batch_size=32,
                           runtime="auto", precision="auto", progress=None, mirror=False):
        assert (backbone, frames, sampling) == ("resnet50", T, "uniform")
        idx = [int(os.path.basename(str(p))[1:].split(".")[0]) for p in paths]
        calls.append(("mirror" if mirror else "plain", len(paths)))
        # a clip named m<i>.mp4 is a mirrored copy of v<i>: as it is, its features are far from v<i>'s (their
        # negation: every bit differs); mirrored back they are v<i>'s own
        mirrored = [os.path.basename(str(p)).startswith("m") for p in paths]
        out = np.stack([feats[i] if m == mirror else -feats[i] for i, m in zip(idx, mirrored, strict=True)]) \
            if any(mirrored) else feats[idx]
        return out, [{"path": str(p), "backbone_sha256": "bb"} for p in paths]

    monkeypatch.setattr(checkpoint, "load_model", fake_load_model)
    monkeypatch.setattr(extract, "extract_clips", fake_extract_clips)
    return SimpleNamespace(dir=tmp_path, feats=feats, codes=c.codes, paths=paths, model=model_path,
                           index=tmp_path / "i.bin", calls=calls)


def cli(args, capsys):
    try:
        main([str(a) for a in args])
        rc = 0
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_codes_input_json_schema_and_exactness(corpus, capsys):
    rc, out, err = cli(["query", corpus.index, corpus.dir / "codes.h5", "--topk", "7", "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert set(doc) == {"index", "type", "exact", "bits", "count", "topk", "radius", "timings", "queries",
                        "queries_without_results", "rerank", "flip", "windows"}
    assert (doc["rerank"], doc["flip"], doc["windows"]) == (None, False, False)
    assert doc["type"] == "BFlat" and doc["exact"] is True and doc["bits"] == BITS and doc["topk"] == 7
    assert len(doc["queries"]) == 300
    q0 = doc["queries"][0]
    assert set(q0) == {"query", "query_id", "query_path", "code", "status", "results"}
    assert q0["status"] == "found" and doc["queries_without_results"] == 0
    assert set(q0["results"][0]) == {"rank", "distance", "key", "id", "path"}
    dist, idx = rank(corpus.codes, corpus.codes, 7)
    for i, q in enumerate(doc["queries"]):
        assert [r["key"] for r in q["results"]] == idx[i].tolist()
        assert [r["distance"] for r in q["results"]] == dist[i].tolist()
        assert [r["rank"] for r in q["results"]] == list(range(1, 8))
    assert not corpus.calls  # codes need no model


def test_jsonl_and_exclude_self(corpus, capsys):
    rc, out, _ = cli(["query", corpus.index, corpus.dir / "codes.h5", "-k", "3", "--jsonl", "--exclude-self"],
                     capsys)
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and len(lines) == 300
    for q in lines:
        assert q["query_path"] not in [r["path"] for r in q["results"]] and len(q["results"]) == 3


def test_radius_exit_codes(corpus, capsys):
    full = hamming(corpus.codes[:1], corpus.codes)[0]
    rc, out, _ = cli(["query", corpus.index, corpus.dir / "codes.h5", "--radius", "2", "--json"], capsys)
    q0 = json.loads(out)["queries"][0]
    expected = [j for j in sorted(range(300), key=lambda j: (full[j], j)) if full[j] <= 2]
    assert rc == 0 and [r["key"] for r in q0["results"]] == expected
    # a code that is not in the index: nothing within radius 0 -> exit 1, still valid JSON lines
    present = {bytes(c) for c in corpus.codes}
    absent = next(np.frombuffer(v.to_bytes(2, "big"), np.uint8) for v in range(65536)
                  if v.to_bytes(2, "big") not in present)
    lone = Codes(path=None, codes=absent[None, :].copy(), ids=["q"], paths=[""], bits=BITS,
                 model_sha256=artifacts.sha256_file(corpus.model))
    artifacts.write_codes(corpus.dir / "one.h5", lone, artifacts.provenance("encode"))
    rc, out, _ = cli(["query", corpus.index, corpus.dir / "one.h5", "-r", "0", "--jsonl"], capsys)
    assert rc == 1 and json.loads(out)["results"] == [] and json.loads(out)["status"] == "none"
    # one query of two finds nothing: exit 1 all the same, and each query says which it was
    two = Codes(path=None, codes=np.concatenate([absent[None, :], corpus.codes[:1]]), ids=["q", "r"], paths=["", ""],
                bits=BITS, model_sha256=artifacts.sha256_file(corpus.model))
    artifacts.write_codes(corpus.dir / "two.h5", two, artifacts.provenance("encode"))
    rc, out, _ = cli(["query", corpus.index, corpus.dir / "two.h5", "-r", "0", "--json"], capsys)
    doc = json.loads(out)
    assert rc == 1 and [q["status"] for q in doc["queries"]] == ["none", "found"]
    assert doc["queries_without_results"] == 1
    rc, out, _ = cli(["query", corpus.index, corpus.dir / "one.h5", "-r", "16", "--jsonl"], capsys)
    assert rc == 0 and len(json.loads(out)["results"]) == 300
    rc, _, err = cli(["query", corpus.index, corpus.dir / "missing.h5"], capsys)
    assert rc == 2 and "no such file" in err


def test_features_input_is_encoded_with_the_recorded_model(corpus, capsys):
    rc, out, err = cli(["query", corpus.index, corpus.dir / "feats.h5", "-k", "1", "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert [q["results"][0]["distance"] for q in doc["queries"]] == [0] * 5
    assert [c for c in corpus.calls if isinstance(c, str)] == [str(corpus.model)]


def test_clip_folder_input(corpus, capsys):
    out = query(corpus.index, [str(corpus.dir / "clips")], topk=2)
    assert [q.id for q in out.queries] == ["v7.mp4", "v8.mp4"]
    assert [int(d[0]) for d, _ in out.results] == [0, 0]
    assert out.timings["extract_s"] >= 0 and out.timings["encode_s"] >= 0


def test_wrong_model_file_is_a_mismatch(corpus, capsys):
    other = corpus.dir / "other.pt"
    other.write_bytes(b"another model")
    rc, _, err = cli(["query", corpus.index, corpus.dir / "clips", "--model", other], capsys)
    assert rc == 2 and "is not the model that made" in err and len(err.strip().splitlines()) == 1
    corpus.model.unlink()
    rc, _, err = cli(["query", corpus.index, corpus.dir / "clips"], capsys)
    assert rc == 2 and "--model" in err


def test_codes_from_another_model_or_bit_length(corpus, capsys):
    r = np.random.default_rng(1)
    for bits, model, msg in ((32, artifacts.sha256_file(corpus.model), "32 bits"), (BITS, "f" * 64, "model")):
        c = Codes(path=None, codes=r.integers(0, 256, (3, bits // 8), dtype=np.uint8), ids=["a", "b", "c"],
                  paths=["", "", ""], bits=bits, model_sha256=model)
        artifacts.write_codes(corpus.dir / "x.h5", c, artifacts.provenance("encode"))
        rc, _, err = cli(["query", corpus.index, corpus.dir / "x.h5"], capsys)
        assert rc == 2 and msg in err


def test_table_output(corpus, capsys):
    rc, out, _ = cli(["query", corpus.index, corpus.dir / "feats.h5", "-k", "2"], capsys)
    flat = "".join(out.split())  # long paths fold onto the next line
    assert rc == 0 and "dist" in out and "v0.mp4(idv0)" in flat
    assert max(len(line) for line in out.splitlines()) <= 80  # fits a terminal, or a log, of 80 columns
    rc, out, err = cli(["query", corpus.index, corpus.dir / "feats.h5", "--json", "--jsonl"], capsys)
    assert rc == 2


def _with_descriptors(corpus, name="d.bin"):
    """An index of the corpus codes plus a soft descriptor per video (random, so that it tells videos apart
    independently of their codes)."""
    c = artifacts.read_codes(corpus.dir / "codes.h5")
    c.descriptors = np.random.default_rng(5).normal(size=(c.n, BITS)).astype(np.float16)
    artifacts.write_codes(corpus.dir / "dcodes.h5", c, artifacts.provenance("encode"),
                          extra_attrs={k: c.attrs.get(k, "") for k in ("model_path", "backbone", "sampling", "frames")})
    I.build_index(artifacts.read_codes(corpus.dir / "dcodes.h5"), corpus.dir / name)
    return c, corpus.dir / name


def test_rerank_rescores_the_top_k_by_descriptor(corpus, capsys):
    c, index = _with_descriptors(corpus)
    # query: v0's code with the descriptor of the video 6th in v0's Hamming ranking
    order = np.lexsort((np.arange(c.n), hamming(c.codes[:1], c.codes)[0]))  # (distance, key)
    j = int(order[5])
    q = Codes(path=None, codes=c.codes[:1], ids=["q"], paths=[""], bits=BITS, model_sha256=c.model_sha256,
              descriptors=c.descriptors[j:j + 1])
    artifacts.write_codes(corpus.dir / "q.h5", q, artifacts.provenance("encode"))
    plain = query(index, [str(corpus.dir / "q.h5")], topk=3)
    assert plain.scores is None and int(plain.results[0][1][0]) == int(order[0])
    out = query(index, [str(corpus.dir / "q.h5")], topk=3, rerank=10)
    keys = out.results[0][1]
    assert int(keys[0]) == j and out.scores[0][0] == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.diff(out.scores[0]) <= 0) and set(keys.tolist()) <= set(order[:10].tolist())
    # only the top K are re-scored: j (6th by Hamming) is out of reach of --rerank 5
    assert j not in query(index, [str(corpus.dir / "q.h5")], topk=3, rerank=5).results[0][1].tolist()
    rc, out_s, err = cli(["query", index, corpus.dir / "q.h5", "--rerank", "10", "-k", "2", "--json"], capsys)
    doc = json.loads(out_s)
    assert rc == 0 and doc["rerank"] == 10 and doc["queries"][0]["results"][0]["id"] == f"v{j}"
    assert doc["queries"][0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_rerank_encodes_feature_queries_like_the_index(corpus, capsys):
    """Features are encoded with descriptors of the index's kind: a video's own features score 1 against it."""
    _, index = _with_descriptors(corpus)
    m = StandIn()
    with torch.no_grad():
        desc = m.soft_video(m.soft_frame_codes(torch.from_numpy(corpus.feats))).numpy().astype(np.float16)
    c = artifacts.read_codes(corpus.dir / "codes.h5")
    c.descriptors = desc
    artifacts.write_codes(corpus.dir / "dcodes.h5", c, artifacts.provenance("encode"),
                          extra_attrs={k: c.attrs.get(k, "") for k in ("model_path", "backbone", "sampling", "frames")})
    I.build_index(artifacts.read_codes(corpus.dir / "dcodes.h5"), index)
    out = query(index, [str(corpus.dir / "feats.h5")], topk=1, rerank=20)
    assert [int(k[0]) for _, k in out.results] == [0, 1, 2, 3, 4]
    assert all(s[0] == pytest.approx(1.0, abs=2e-3) for s in out.scores)


def test_rerank_needs_descriptors(corpus, capsys):
    rc, _, err = cli(["query", corpus.index, corpus.dir / "codes.h5", "--rerank", "5"], capsys)
    assert rc == 2 and "--descriptor" in err and len(err.strip().splitlines()) == 1
    _, index = _with_descriptors(corpus)
    rc, _, err = cli(["query", index, corpus.dir / "codes.h5", "--rerank", "5"], capsys)  # codes without any
    assert rc == 2 and "descriptor" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(["query", index, corpus.dir / "codes.h5", "--rerank", "-1"], capsys)
    assert rc == 2


def test_flip_finds_mirrored_copies(corpus, capsys):
    clips = corpus.dir / "mirrored"
    clips.mkdir()
    for i in (7, 8):
        (clips / f"m{i}.mp4").write_bytes(b"not really a video")
    plain = query(corpus.index, [str(clips)], topk=5)
    assert [int(k[0]) for _, k in plain.results] != [7, 8]
    assert [int(d[-1]) for d, _ in plain.results] <= [BITS] * 2 and 7 not in plain.results[0][1].tolist()
    corpus.calls.clear()
    out = query(corpus.index, [str(clips)], topk=5, flip=True)
    assert [int(k[0]) for _, k in out.results] == [7, 8] and [int(d[0]) for d, _ in out.results] == [0, 0]
    assert ("mirror", 2) in corpus.calls  # the mirror images are extracted once for all clips
    # each key once, with its better distance, in (distance, key) order
    for d, k in out.results:
        assert len(set(k.tolist())) == len(k) and np.all(np.diff(d) >= 0)
    rc, out_s, _ = cli(["query", corpus.index, clips, "--flip", "-k", "1", "--json"], capsys)
    doc = json.loads(out_s)
    assert rc == 0 and doc["flip"] is True and [q["results"][0]["id"] for q in doc["queries"]] == ["v7", "v8"]


def test_clips_follow_a_bfloat16_model_even_when_it_loads_beside_them(corpus, monkeypatch):
    """A cold clip query loads the model beside decoding, so with --precision auto the model's feature
    precision is known only after the clips went through the backbone; a bfloat16 model gets them again in
    bfloat16 (clips must be embedded as the training features were). An explicit precision is kept."""
    seen = []
    real_load, real_extract = checkpoint.load_model, extract.extract_clips

    def load_bf16(path, device="cpu", ssm_backend="auto"):
        model, meta = real_load(path, device, ssm_backend)
        meta["features"]["precision"] = "bfloat16"
        return model, meta

    def recording(paths, **kw):
        seen.append(kw["precision"])
        return real_extract(paths, **kw)

    monkeypatch.setattr(checkpoint, "load_model", load_bf16)
    monkeypatch.setattr(extract, "extract_clips", recording)
    out = query(corpus.index, [str(corpus.dir / "clips")], topk=1)
    assert seen[-1] == "bfloat16"
    assert [int(d[0]) for d, _ in out.results] == [0, 0]
    seen.clear()
    query(corpus.index, [str(corpus.dir / "clips")], topk=1, precision="float32")
    assert seen == ["float32"]
