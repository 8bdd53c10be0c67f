import itertools
import json

import faiss
import numpy as np
import pytest

from s5vh_cli import artifacts
from s5vh_cli.artifacts import Codes
from s5vh_cli.cli import main
from s5vh_cli.codes import hamming, rank
from s5vh_cli.errors import ArtifactError, InputError, MismatchError
from s5vh_cli.search import index as I
from s5vh_cli.search.backends.faiss import FaissBackend


def make_codes(path, n, bits=16, seed=0, model="m" * 64, prefix="v", **attrs):
    r = np.random.default_rng(seed)
    c = Codes(path=None, codes=r.integers(0, 256, size=(n, bits // 8), dtype=np.uint8),
              ids=[f"{prefix}{i}" for i in range(n)], paths=[f"/videos/{prefix}{i}.mp4" for i in range(n)],
              bits=bits, model_sha256=model)
    extra = {"backbone": "resnet50", "sampling": "uniform", "frames": 25, "model_path": "/nowhere/model.pt"}
    extra.update(attrs)
    artifacts.write_codes(path, c, artifacts.provenance("encode"), extra_attrs=extra)
    return artifacts.read_codes(path)


def cli(args, capsys):
    try:
        main([str(a) for a in args])
        rc = 0
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def brute_topk(h, queries, k):
    d, rows = rank(queries, h.codes, k)
    return d, h.keys[rows]


_collections = itertools.count()


@pytest.fixture(params=["faiss", "milvus"])
def backend(request):
    """The same test against each backend: build_index keyword arguments (milvus: a fresh collection on the
    run's private server, skipped where none can start)."""
    if request.param == "faiss":
        return {}
    server = request.getfixturevalue("milvus")
    return {"backend": "milvus",
            "backend_options": {"uri": server.uri, "collection": f"test_index_{next(_collections)}"}}


def test_build_reopen_is_plain_faiss(tmp_path):
    c = make_codes(tmp_path / "a.h5", 200)
    h = I.build_index(c, tmp_path / "i.bin")
    plain = faiss.read_index_binary(str(tmp_path / "i.bin"))
    assert plain.ntotal == 200 and plain.d == 16
    assert (faiss.vector_to_array(plain.id_map) == np.arange(200)).all()
    h2 = I.open_index(tmp_path / "i.bin")
    assert h2.ids == c.ids and h2.paths == c.paths and (h2.codes == c.codes).all()
    assert h2.provenance["backbone"] == "resnet50" and h2.model_sha256 == h.model_sha256
    assert h2.index_sha256 == artifacts.sha256_file(tmp_path / "i.bin")


@pytest.mark.parametrize("k", [1, 20, 300])
def test_exact_search_equals_brute_force_with_ties(tmp_path, k):
    # 16-bit codes over 3000 rows: the k-th distance is shared by many rows
    c = make_codes(tmp_path / "a.h5", 3000)
    q = np.random.default_rng(5).integers(0, 256, size=(40, 2), dtype=np.uint8)
    h = I.build_index(c, tmp_path / "i.bin")
    res = I.search(I.open_index(tmp_path / "i.bin"), q, k)
    bd, bk = brute_topk(h, q, k)
    for i, (d, keys) in enumerate(res):
        assert d.tolist() == bd[i].tolist()
        assert keys.tolist() == bk[i].tolist()


def test_add_remove_keys_never_reused_and_search_stays_exact(tmp_path, backend):
    a = make_codes(tmp_path / "a.h5", 500, seed=1)
    b = make_codes(tmp_path / "b.h5", 100, seed=2, prefix="w")
    I.build_index(a, tmp_path / "i.bin", **backend)
    h, rep = I.add_codes(tmp_path / "i.bin", b)
    new = rep.added
    assert new.tolist() == list(range(500, 600))
    h, gone = I.remove(tmp_path / "i.bin", ids=["v3", "w99"], keys=[7], paths=["/videos/v10.mp4"])
    assert gone.tolist() == [3, 7, 10, 599]
    h, rep2 = I.add_codes(tmp_path / "i.bin", make_codes(tmp_path / "c.h5", 5, seed=3, prefix="x"))
    new2 = rep2.added
    assert new2.tolist() == list(range(600, 605))  # 599 was removed but is not handed out again
    h = I.open_index(tmp_path / "i.bin")
    assert h.n == 601 and h.next_key == 605 and h.backend.ntotal == 601
    if not backend:
        assert faiss.read_index_binary(str(tmp_path / "i.bin")).ntotal == 601
    q = np.random.default_rng(9).integers(0, 256, size=(25, 2), dtype=np.uint8)
    bd, bk = brute_topk(h, q, 30)
    for i, (d, keys) in enumerate(I.search(h, q, 30)):
        assert d.tolist() == bd[i].tolist() and keys.tolist() == bk[i].tolist()
    row = h.row_of()
    assert h.ids[row[600]] == "x0" and 599 not in row


def test_remove_unknown_names_removes_nothing(tmp_path, backend):
    I.build_index(make_codes(tmp_path / "a.h5", 50), tmp_path / "i.bin", **backend)
    before = (tmp_path / "i.bin").read_bytes(), (tmp_path / "i.bin.meta.h5").read_bytes()
    with pytest.raises(InputError, match="not in the index: id 'nope'"):
        I.remove(tmp_path / "i.bin", ids=["v1", "nope"])
    assert ((tmp_path / "i.bin").read_bytes(), (tmp_path / "i.bin.meta.h5").read_bytes()) == before
    h = I.open_index(tmp_path / "i.bin")
    assert h.backend.ntotal == 50 and not h.repaired


def test_mismatched_bits_and_models(tmp_path, backend):
    I.build_index(make_codes(tmp_path / "a.h5", 50), tmp_path / "i.bin", **backend)
    with pytest.raises(MismatchError, match="32 bits"):
        I.add_codes(tmp_path / "i.bin", make_codes(tmp_path / "b.h5", 5, bits=32))
    with pytest.raises(MismatchError, match="model"):
        I.add_codes(tmp_path / "i.bin", make_codes(tmp_path / "c.h5", 5, model="x" * 64))
    with pytest.raises(MismatchError, match="backbone"):
        I.add_codes(tmp_path / "i.bin", make_codes(tmp_path / "d.h5", 5, backbone="vgg16"))
    h, rep = I.add_codes(tmp_path / "i.bin", artifacts.read_codes(tmp_path / "a.h5"))  # the same codes again
    assert rep.skipped == 50 and rep.added.size == 0 and h.n == 50 and h.backend.ntotal == 50


def test_cli_mismatch_is_one_line_exit_2(tmp_path, capsys):
    make_codes(tmp_path / "a.h5", 50)
    make_codes(tmp_path / "b.h5", 5, bits=32)
    rc, out, err = cli(["index", tmp_path / "a.h5", "-o", tmp_path / "i.bin", "--json"], capsys)
    assert rc == 0 and json.loads(out)["count"] == 50
    rc, out, err = cli(["index", "add", tmp_path / "i.bin", tmp_path / "b.h5"], capsys)
    assert rc == 2 and "32 bits" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    rc, out, err = cli(["index", "remove", tmp_path / "i.bin", "--key", "999"], capsys)
    assert rc == 2 and "key 999" in err


def test_out_of_sync_pair_is_refused(tmp_path):
    I.build_index(make_codes(tmp_path / "a.h5", 50), tmp_path / "i.bin")
    I.build_index(make_codes(tmp_path / "b.h5", 60, seed=4), tmp_path / "j.bin")
    (tmp_path / "i.bin").write_bytes((tmp_path / "j.bin").read_bytes())
    with pytest.raises(ArtifactError, match="out of sync"):
        I.open_index(tmp_path / "i.bin", retries=0)
    (tmp_path / "j.bin.meta.h5").unlink()
    with pytest.raises(ArtifactError, match="metadata file"):
        I.open_index(tmp_path / "j.bin")


def test_range_search_is_inclusive_and_sorted(tmp_path, backend):
    c = make_codes(tmp_path / "a.h5", 2000)
    h = I.build_index(c, tmp_path / "i.bin", **backend)
    q = c.codes[:10]
    full = hamming(q, c.codes)
    for i, (d, keys) in enumerate(I.range_search(h, q, 3)):
        assert keys.tolist() == [j for j in sorted(range(2000), key=lambda j: (full[i, j], j)) if full[i, j] <= 3]
        assert d.tolist() == full[i][keys].tolist()
    ex = I.range_search(h, q, 0, exclude=[{i} for i in range(10)])
    assert all(i not in keys.tolist() for i, (_, keys) in enumerate(ex))


def test_range_search_on_hnsw_grows_knn(tmp_path):
    c = make_codes(tmp_path / "a.h5", 2000)
    q = c.codes[:10]
    full = hamming(q, c.codes)
    hh = I.build_index(c, tmp_path / "h.bin", "BHNSW16", params=I.IndexParams(ef_search=4000))
    for i, (d, keys) in enumerate(I.range_search(hh, q, 3)):
        expected = [j for j in sorted(range(2000), key=lambda j: (full[i, j], j)) if full[i, j] <= 3]
        # approximate: a sorted subset within the radius
        assert set(keys.tolist()) <= set(expected) and (np.diff(d) >= 0).all() and (d <= 3).all()


@pytest.mark.parametrize("kind,params", [
    ("BHNSW16", I.IndexParams(ef_search=256)),
    ("BIVF8", I.IndexParams(nprobe=8)),
    ("BHash2x16", I.IndexParams(nflip=2)),
    ("BHash12", I.IndexParams(nflip=3)),
])
def test_approximate_types_build_search_remove_and_check(tmp_path, kind, params):
    c = make_codes(tmp_path / "a.h5", 1500, bits=32, seed=3)
    I.build_index(c, tmp_path / "i.bin", kind, params=params)
    h = I.open_index(tmp_path / "i.bin")
    assert h.index_type == kind and not h.exact
    for name, value in vars(params).items():
        if value is not None:
            assert getattr(h.params, name) == value
    res = I.search(h, c.codes[:20], 5)
    assert all(keys[0] == i for i, (_, keys) in enumerate(res))  # each code finds itself at distance 0
    rep = I.check_recall(h, k=5, n_queries=100)
    assert 0.2 < rep["recall"] <= 1.0
    h, _ = I.remove(tmp_path / "i.bin", keys=[0, 1])
    h = I.open_index(tmp_path / "i.bin")
    assert h.n == 1498 and h.backend.ntotal == 1498
    assert I.search(h, c.codes[2:3], 1)[0][1].tolist() == [2]


def test_full_nprobe_ivf_is_exact(tmp_path):
    c = make_codes(tmp_path / "a.h5", 800, seed=6)
    h = I.build_index(c, tmp_path / "i.bin", "BIVF4", params=I.IndexParams(nprobe=4))
    rep = I.check_recall(I.open_index(tmp_path / "i.bin"), k=10, n_queries=50)
    assert rep["recall"] == 1.0
    # every list probed: the distances are exact; which of several tied items fills the last places is faiss's
    # choice (only BFlat completes ties), but the order shown is (distance, key)
    bd, bk = brute_topk(h, c.codes[:30], 10)
    for i, (d, keys) in enumerate(I.search(h, c.codes[:30], 10)):
        assert d.tolist() == bd[i].tolist()
        pairs = list(zip(d.tolist(), keys.tolist(), strict=True))
        assert sorted(pairs) == pairs


def test_info_check_cli(tmp_path, capsys):
    make_codes(tmp_path / "a.h5", 400)
    assert cli(["index", "build", tmp_path / "a.h5", "-o", tmp_path / "i.bin", "--type", "BHNSW8"], capsys)[0] == 0
    rc, out, _ = cli(["index", "info", tmp_path / "i.bin", "--check", "--queries", "50", "-k", "10", "--json",
                      "--ef-search", "400"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["type"] == "BHNSW8" and data["check"]["queries"] == 50 and data["check"]["k"] == 10
    assert data["check"]["recall"] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("name", ["BPQ8", "BHNSW1", "BHash40", "BHash3x20", "flat"])
def test_bad_type_names(name):
    with pytest.raises(InputError):
        FaissBackend.check_type(name, 32)


def test_ivf_needs_enough_codes(tmp_path):
    with pytest.raises(InputError, match="nlist"):
        I.build_index(make_codes(tmp_path / "a.h5", 10), tmp_path / "i.bin", "BIVF64")


@pytest.mark.parametrize("edit", ["rolled_keys", "swapped_codes", "next_key_low", "params_text", "params_list",
                                  "nflip_huge", "type_other", "sources_object", "bits_text", "keys_float"])
def test_ill_typed_or_inconsistent_metadata_is_refused(tmp_path, edit):
    """Metadata that still names the right index file (its sha256 is intact) but lies about it."""
    import h5py

    c = make_codes(tmp_path / "a.h5", 40, bits=32)
    kind = "BHash2x16" if edit == "nflip_huge" else "BFlat"
    I.build_index(c, tmp_path / "i.bin", kind)
    meta = tmp_path / "i.bin.meta.h5"
    with h5py.File(meta, "r+") as f:
        def put(key, data):
            del f[key]
            f[key] = data
        if edit == "rolled_keys":
            put("keys", np.roll(f["keys"][()], 1))
        elif edit == "swapped_codes":
            put("codes", f["codes"][()][::-1])
        elif edit == "next_key_low":
            f.attrs["next_key"] = 5
        elif edit == "params_text":
            f.attrs["params"] = json.dumps({"nprobe": "8"})
        elif edit == "params_list":
            f.attrs["params"] = json.dumps([1, 2])
        elif edit == "nflip_huge":
            f.attrs["params"] = json.dumps({"nflip": 17})
        elif edit == "type_other":
            f.attrs["index_type"] = "BHNSW32"
        elif edit == "sources_object":
            f.attrs["sources"] = json.dumps({"a": 1})
        elif edit == "bits_text":
            f.attrs["bits"] = "32"
        elif edit == "keys_float":
            put("keys", f["keys"][()].astype(np.float64))
    with pytest.raises(ArtifactError):
        I.open_index(tmp_path / "i.bin")


@pytest.mark.parametrize("opt,value,kind", [("nprobe", 0, "BIVF4"), ("nprobe", -1, "BIVF4"), ("nprobe", 5, "BIVF4"),
                                            ("nflip", -1, "BHash2x16"), ("nflip", 17, "BHash2x16"),
                                            ("ef_search", 2_000_000_000, "BHNSW16"), ("ef_search", 0, "BHNSW16")])
def test_search_options_out_of_range_are_one_line_errors(tmp_path, capsys, opt, value, kind):
    c = make_codes(tmp_path / "a.h5", 300, bits=32)
    I.build_index(c, tmp_path / "i.bin", kind)
    flag = "--" + opt.replace("_", "-")
    for args in (["query", tmp_path / "i.bin", tmp_path / "a.h5", flag, value],
                 ["index", tmp_path / "a.h5", "-o", tmp_path / "j.bin", "--type", kind, flag, value]):
        rc, _, err = cli(args, capsys)
        assert rc == 2 and flag in err and "internal error" not in err, err
    assert not (tmp_path / "j.bin").exists()


def test_radius_and_check_queries_out_of_range(tmp_path, capsys, backend):
    c = make_codes(tmp_path / "a.h5", 30, bits=32)
    I.build_index(c, tmp_path / "i.bin", **backend)
    for args in (["query", tmp_path / "i.bin", tmp_path / "a.h5", "--radius", "10000000000"],
                 ["query", tmp_path / "i.bin", tmp_path / "a.h5", "--radius", "33"],
                 ["index", "info", tmp_path / "i.bin", "--check", "--queries", "-1"],
                 ["index", "info", tmp_path / "i.bin", "--check", "-k", "0"]):
        rc, _, err = cli(args, capsys)
        assert rc == 2 and "internal error" not in err and err.count("\n") == 1, err
