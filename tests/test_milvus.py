"""The Milvus backend against a real Milvus 2.3.5 standalone server (tests/milvus_server.py, one per run).

What it must show: results identical to faiss BFlat on the same codes with ties broken by key, for top-k and
radius queries (also past Milvus's 16384-results limit); add, remove, sync and migrate round trips; a writer
killed before its metadata commit, a server that lost data, and a killed server, all ending with the server
agreeing with the metadata; Milvus's limits as one-line errors.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from library import cli as lib_cli
from test_index import brute_topk, cli, make_codes

from s5vh_cli import api, artifacts
from s5vh_cli.codes import hamming
from s5vh_cli.errors import ArtifactError, BackendError, InputError
from s5vh_cli.progress import NULL
from s5vh_cli.search import index as I
from s5vh_cli.search.backends.base import Entries

_names = itertools.count()


@pytest.fixture
def opts(milvus, request):
    """Backend options naming a fresh collection on the shared server."""
    return {"uri": milvus.uri, "collection": f"t{next(_names)}_{request.node.name[:40]}".replace("[", "_")
            .replace("]", "").replace("-", "_")}


def client(milvus):
    from pymilvus import MilvusClient

    return MilvusClient(uri=milvus.uri)


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])
                                    for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------------------------------------
# identical to faiss BFlat
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twins(milvus, tmp_path_factory):
    """20,000 random 16-bit codes in a faiss BFlat index and a Milvus BIN_FLAT one: every distance is shared by
    hundreds of codes, so ties decide most rankings, and more than 16,384 codes lie within distance 10."""
    d = tmp_path_factory.mktemp("twins")
    c = make_codes(d / "a.h5", 20000, bits=16, seed=11)
    f = I.build_index(c, d / "f.bin")
    m = I.build_index(c, d / "m.bin", backend="milvus", backend_options={"uri": milvus.uri, "collection": "twins"})
    return c, f, I.open_index(d / "m.bin"), m


@pytest.mark.parametrize("k", [1, 20, 300])
def test_topk_identical_to_faiss_bflat_with_ties_broken_by_key(twins, k):
    c, f, m, _ = twins
    q = np.random.default_rng(5).integers(0, 256, size=(30, 2), dtype=np.uint8)
    res_m, res_f = I.search(m, q, k), I.search(f, q, k)
    assert same(res_m, res_f)
    bd, bk = brute_topk(f, q, k)
    assert all(d.tolist() == bd[i].tolist() and keys.tolist() == bk[i].tolist() for i, (d, keys) in enumerate(res_m))
    ex = [{int(k0)} for k0 in range(30)]
    assert same(I.search(m, c.codes[:30], k, exclude=ex), I.search(f, c.codes[:30], k, exclude=ex))


@pytest.mark.parametrize("radius", [0, 2, 5])
def test_radius_identical_to_faiss_bflat(twins, radius):
    c, f, m, _ = twins
    q = c.codes[:20]
    assert same(I.range_search(m, q, radius), I.range_search(f, q, radius))


def test_past_the_16384_results_limit_ties_and_radius_stay_exact(twins):
    """The 16,380 nearest end inside a tie wider than Milvus returns at once, and a radius of 10 holds more than
    16,384 codes: the tie is completed below a falling key bound, the radius query splits the key range."""
    c, f, m, _ = twins
    q = c.codes[100:102]
    dist = hamming(q, c.codes)
    assert ((dist <= 10).sum(1) > 16384).all() and ((dist < 10).sum(1) < 16380).all()
    res = I.search(m, q, 16380)
    bd, bk = brute_topk(f, q, 16380)
    assert all(d.tolist() == bd[i].tolist() and keys.tolist() == bk[i].tolist() for i, (d, keys) in enumerate(res))
    rm = I.range_search(m, q, 10)
    assert [x[1].size for x in rm] == (dist <= 10).sum(1).tolist()
    assert same(rm, I.range_search(f, q, 10))


def test_milvus_limits_are_one_line_errors(twins, capsys):
    c, f, m, _ = twins
    with pytest.raises(InputError, match="16384"):
        I.search(m, c.codes[:1], 16384, exclude=[{0}])  # the limit counts the excluded result too
    with pytest.raises(InputError, match="16384"):
        m.backend.search(c.codes[:1], 20000)
    rc, _, err = cli(["query", m.path, m.path.with_name("a.h5"), "--topk", "20000"], capsys)
    assert rc == 2 and "16384" in err and err.count("\n") == 1


def test_killed_writer_and_lost_data_are_repaired_on_open(twins, milvus, tmp_path):
    """A writer that changed the server and died before committing the metadata, and a server that lost rows,
    a changed code and finally the whole collection: opening puts it back, searches never see the difference."""
    c, f, _, _ = twins
    shutil.copy(f.path.with_name("m.bin"), tmp_path / "m.bin")
    shutil.copy(f.path.with_name("m.bin.meta.h5"), tmp_path / "m.bin.meta.h5")
    h = I.open_index(tmp_path / "m.bin")
    q = c.codes[:10]
    expected = I.search(f, q, 15)
    # an add and a remove that reached the server but never the metadata (the add inserting rows, as it does
    # where pymilvus has no column-wise insert; the repair below upserts columns)
    h.backend.columns = False
    h.backend.add(Entries(np.arange(20000, 20050), c.codes[:50], ["ghost"] * 50, ["/ghost"] * 50), NULL)
    h.backend.remove(np.array([3, 4, 5]), h.entries(), NULL)
    reader = I.open_index(tmp_path / "m.bin")
    assert reader.repaired == {"extra": 50, "missing": 3}
    assert same(I.search(reader, q, 15), expected) and reader.backend.ntotal == 20000
    # rows lost by the server, and one stored code that is no longer the metadata's
    mc = client(milvus)
    mc.delete("twins", ids=[10, 11])
    mc.upsert("twins", [{"key": 12, "code": bytes(2), "id": "v12", "path": "/videos/v12.mp4"}])
    assert I.open_index(tmp_path / "m.bin").repaired == {"extra": 0, "missing": 2}
    assert api.verify_index(tmp_path / "m.bin")["repaired"] == {"extra": 0, "missing": 1}  # the changed code
    assert api.verify_index(tmp_path / "m.bin")["repaired"] == {}
    assert same(I.search(I.open_index(tmp_path / "m.bin"), q, 15), expected)


def test_killed_writer_process(milvus, opts, tmp_path):
    """A real `s5vh index add` SIGKILLed after inserting into Milvus, before writing the metadata."""
    a = make_codes(tmp_path / "a.h5", 300, bits=32, seed=1)
    make_codes(tmp_path / "b.h5", 40, bits=32, seed=2, prefix="w")
    I.build_index(a, tmp_path / "m.bin", backend="milvus", backend_options=opts)
    before = (tmp_path / "m.bin.meta.h5").read_bytes()
    code = ("import os, signal, sys\n"
            "from s5vh_cli.search import index as I\n"
            "def die(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "I.write_index = die\n"
            "from s5vh_cli.cli import main\n"
            f"main(['index', 'add', {str(tmp_path / 'm.bin')!r}, {str(tmp_path / 'b.h5')!r}])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == -9, p.stderr
    assert (tmp_path / "m.bin.meta.h5").read_bytes() == before
    from pymilvus import MilvusClient

    mc = MilvusClient(uri=milvus.uri)
    held = mc.query(opts["collection"], filter="key >= 0", output_fields=["count(*)"], consistency_level="Strong")
    assert held[0]["count(*)"] == 340  # the dead writer's 40 rows are on the server
    h = I.open_index(tmp_path / "m.bin")
    assert h.repaired == {"extra": 40, "missing": 0} and h.n == 300 and h.backend.ntotal == 300
    h, rep = I.add_codes(tmp_path / "m.bin", artifacts.read_codes(tmp_path / "b.h5"))
    assert rep.added.tolist() == list(range(300, 340)) and h.backend.ntotal == 340


def test_a_reader_does_not_see_or_undo_a_writer_at_work(twins, tmp_path):
    """While a writer holds the lock its uncommitted rows are on the server: a reader filters them out (keys at
    or above next_key) and leaves them alone; once the writer is gone, the next open removes them."""
    c, f, _, _ = twins
    for name in ("m.bin", "m.bin.meta.h5"):
        shutil.copy(f.path.with_name(name), tmp_path / name)
    h = I.open_index(tmp_path / "m.bin")
    held, go = threading.Event(), threading.Event()

    def writer():
        with I.index_lock(tmp_path / "m.bin"):
            h.backend.add(Entries(np.arange(20000, 20010), c.codes[:10], ["new"] * 10, ["/new"] * 10), NULL)
            held.set()
            go.wait(60)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert held.wait(60)
        r = I.open_index(tmp_path / "m.bin")
        assert r.repaired == {}
        res = I.search(r, c.codes[:10], 5)
        assert all(keys.max() < 20000 for _, keys in res)
        assert same(res, I.search(f, c.codes[:10], 5))
    finally:
        go.set()
        t.join()
    assert I.open_index(tmp_path / "m.bin").repaired == {"extra": 10, "missing": 0}


# ----------------------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------------------
def test_cli_build_add_remove_query_and_migrate_round_trip(milvus, opts, tmp_path, capsys):
    make_codes(tmp_path / "a.h5", 500, bits=64, seed=1)
    make_codes(tmp_path / "b.h5", 60, bits=64, seed=2, prefix="w")
    rc, out, err = cli(["index", tmp_path / "a.h5", "-o", tmp_path / "m.bin", "--backend", "milvus", "--uri",
                        opts["uri"], "--collection", opts["collection"], "--json"], capsys)
    assert rc == 0, err
    info = json.loads(out)
    assert info["backend"] == "milvus" and info["type"] == "BIN_FLAT" and info["count"] == 500
    desc = json.loads((tmp_path / "m.bin").read_text())  # the local file only names the collection
    assert desc["collection"] == opts["collection"] and desc["uri"] == opts["uri"]
    # the same operations on a faiss index
    assert cli(["index", tmp_path / "a.h5", "-o", tmp_path / "f.bin"], capsys)[0] == 0
    for idx in ("m.bin", "f.bin"):
        assert cli(["index", "add", tmp_path / idx, tmp_path / "b.h5"], capsys)[0] == 0
        assert cli(["index", "remove", tmp_path / idx, "--key", 3, "--id", "w7", "--path", "/videos/v9.mp4"],
                   capsys)[0] == 0
        assert cli(["index", "add", tmp_path / idx, tmp_path / "b.h5", "--on-existing", "replace"], capsys)[0] == 0
    m, f = I.open_index(tmp_path / "m.bin"), I.open_index(tmp_path / "f.bin")
    assert m.n == f.n == 558 and m.next_key == f.next_key == 620 and m.keys.tolist() == f.keys.tolist()
    mc = client(milvus)
    rows = mc.query(opts["collection"], filter="key == 560", output_fields=["id", "path"], consistency_level="Strong")
    assert rows[0]["id"] == m.ids[m.row_of()[560]] and rows[0]["path"] == m.paths[m.row_of()[560]]
    label = json.loads(mc.describe_collection(opts["collection"])["description"])
    assert label["model_sha256"] == m.model_sha256 and label["backbone"] == "resnet50" and label["bits"] == 64
    for args in (["--topk", "7"], ["--radius", "24"], ["--topk", "5", "--exclude-self"]):
        outs = [cli(["query", tmp_path / idx, tmp_path / "a.h5", "--json", *args], capsys) for idx in ("m.bin", "f.bin")]
        assert outs[0][0] == outs[1][0] == 0
        docs = [json.loads(o[1]) for o in outs]
        assert [q["results"] for q in docs[0]["queries"]] == [q["results"] for q in docs[1]["queries"]]
    # migrate: the faiss index into Milvus and back gives the same faiss file
    rc, _, err = cli(["index", "migrate", tmp_path / "f.bin", "-o", tmp_path / "fm.bin", "--backend", "milvus",
                      "--uri", opts["uri"], "--collection", opts["collection"] + "_m"], capsys)
    assert rc == 0, err
    rc, _, err = cli(["index", "migrate", tmp_path / "fm.bin", "-o", tmp_path / "back.bin", "--backend", "faiss"],
                     capsys)
    assert rc == 0, err
    assert (tmp_path / "back.bin").read_bytes() == (tmp_path / "f.bin").read_bytes()
    back = I.open_index(tmp_path / "back.bin")
    assert back.next_key == f.next_key and back.ids == f.ids and back.paths == f.paths
    assert back.sources == f.sources and (back.codes == f.codes).all()


def test_bin_ivf_flat_nlist_nprobe(milvus, opts, tmp_path, capsys):
    c = make_codes(tmp_path / "a.h5", 3000, bits=32, seed=3)
    rc, _, err = cli(["index", tmp_path / "a.h5", "-o", tmp_path / "m.bin", "--backend", "milvus", "--uri", opts["uri"],
                      "--collection", opts["collection"], "--type", "BIN_IVF_FLAT", "--nlist", 16, "--nprobe", 16],
                     capsys)
    assert rc == 0, err
    h = I.open_index(tmp_path / "m.bin")
    assert h.index_type == "BIN_IVF_FLAT" and not h.exact and h.params.nprobe == 16
    # every list probed: the distances are exact
    bd, _ = brute_topk(h, c.codes[:30], 10)
    assert all(d.tolist() == bd[i].tolist() for i, (d, _) in enumerate(I.search(h, c.codes[:30], 10)))
    low = I.check_recall(I.open_index(tmp_path / "m.bin", params=I.IndexParams(nprobe=1)), k=10, n_queries=100)
    assert low["recall"] < 1.0 and low["params"] == {"nprobe": 1}
    for args, msg in ((["--nprobe", 17], "--nprobe must be between 1 and the index's 16 lists"),
                      (["--nprobe", 0], "--nprobe must be an integer of at least 1")):
        rc, _, err = cli(["query", tmp_path / "m.bin", tmp_path / "a.h5", *args], capsys)
        assert rc == 2 and msg in err and err.count("\n") == 1
    h, _ = I.remove(tmp_path / "m.bin", keys=[0, 1])
    assert I.open_index(tmp_path / "m.bin").backend.ntotal == 2998
    assert I.search(h, c.codes[2:3], 1)[0][1].tolist() == [2]


def test_sync_and_dedup_on_a_milvus_index(milvus, opts, work, capsys):
    """The library workflow unchanged on a Milvus index: sync adds, replaces and removes; dedup groups."""
    from test_library import make_copy

    api.migrate(work / "index.bin", work / "index.bin", "milvus", backend_options=opts)  # in place
    assert json.loads((work / "index.bin").read_text())["collection"] == opts["collection"]
    vids = sorted((work / "videos").rglob("*.mp4"))
    make_copy(vids[0], work / "videos" / "new.mp4")
    shutil.copy(vids[1], work / "videos" / "dup.mp4")
    shutil.copy(vids[4], vids[2])  # changed content
    vids[3].unlink()
    rc, out, err = lib_cli(capsys, "sync", work / "videos", work / "index.bin", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert len(doc["added"]) == 2 and doc["replaced"] == [str(vids[2])] and doc["removed"] == [str(vids[3])]
    h = I.open_index(work / "index.bin")
    assert h.backend.name == "milvus" and h.n == 13 and api.verify_index(work / "index.bin")["repaired"] == {}
    rc, out, _ = lib_cli(capsys, "sync", work / "videos", work / "index.bin", "--json")
    assert json.loads(out)["unchanged"] == 13
    api.migrate(work / "index.bin", work / "f.bin", "faiss")
    groups = [api.dedup(work / name, radius=0).as_dict()["duplicate_groups"] for name in ("index.bin", "f.bin")]
    assert groups[0] == groups[1]
    auto = [api.dedup(work / name).as_dict() for name in ("index.bin", "f.bin")]  # the threshold from the library
    assert auto[0]["radius"] == auto[1]["radius"] and auto[0]["duplicate_groups"] == auto[1]["duplicate_groups"]
    assert any({m["path"] for m in g["members"]} >= {str(vids[1]), str(work / "videos" / "dup.mp4")}
               for g in groups[0])


# ----------------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # 11 s; the default run keeps every other Milvus test
def test_collections_of_others_are_not_touched(milvus, opts, tmp_path, capsys, monkeypatch):
    a = make_codes(tmp_path / "a.h5", 50, bits=32)
    I.build_index(a, tmp_path / "one.bin", backend="milvus", backend_options=opts)
    with monkeypatch.context() as m:  # a server that moved: the environment overrides the descriptor's uri
        m.setenv("S5VH_MILVUS_URI", "http://127.0.0.1:9")
        with pytest.raises(BackendError, match="cannot reach Milvus at http://127.0.0.1:9"):
            I.open_index(tmp_path / "one.bin")
    with pytest.raises(InputError, match="already holds another s5vh index"):
        I.build_index(a, tmp_path / "two.bin", backend="milvus", backend_options=opts)
    other = opts["collection"] + "_x"
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    mc = client(milvus)
    ip = mc.prepare_index_params()
    ip.add_index(field_name="v", index_type="FLAT", metric_type="L2")
    mc.create_collection(other, schema=schema, index_params=ip)
    for flag in ([], ["--replace-collection"]):
        rc, _, err = cli(["index", tmp_path / "a.h5", "-o", tmp_path / "x.bin", "--backend", "milvus", "--uri",
                          opts["uri"], "--collection", other, *flag], capsys)
        assert rc == 2 and "not made by s5vh" in err
    assert mc.has_collection(other)
    # --replace-collection takes an s5vh collection over; the index that had it is refused on open
    I.build_index(a, tmp_path / "two.bin", backend="milvus", backend_options={**opts, "replace_collection": True})
    with pytest.raises(ArtifactError, match="holds another index"):
        I.open_index(tmp_path / "one.bin")
    assert I.open_index(tmp_path / "two.bin").backend.ntotal == 50


def test_option_errors_are_one_line(milvus, tmp_path, capsys):
    make_codes(tmp_path / "a.h5", 50, bits=32)
    base = ["index", tmp_path / "a.h5", "-o", tmp_path / "x.bin"]
    for args, msg in (
        (["--backend", "milvus", "--collection", "c"], "needs --uri"),
        (["--backend", "milvus", "--uri", milvus.uri], "needs --collection"),
        (["--backend", "milvus", "--uri", milvus.uri, "--collection", "1bad"], "Milvus names"),
        (["--backend", "milvus", "--uri", "/tmp/lite.db", "--collection", "c"], "Milvus Lite"),
        (["--backend", "milvus", "--uri", milvus.uri, "--collection", "c", "--type", "BFlat"], "unknown milvus"),
        (["--backend", "milvus", "--uri", milvus.uri, "--collection", "c", "--type", "BIN_IVF_FLAT"], "needs --nlist"),
        (["--backend", "milvus", "--uri", milvus.uri, "--collection", "c", "--type", "BIN_IVF_FLAT", "--nlist",
          "64"], "at least 64 codes"),
        (["--backend", "milvus", "--uri", milvus.uri, "--collection", "c", "--nlist", "4"], "applies to BIN_IVF_FLAT"),
        (["--nlist", "4"], "milvus options"),
        (["--backend", "nope"], "unknown index backend"),
        (["--backend", "milvus", "--uri", "http://127.0.0.1:9", "--collection", "c"], "cannot reach Milvus"),
    ):
        rc, _, err = cli([*base, *args], capsys)
        assert rc == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert not (tmp_path / "x.bin").exists()


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # `import pymilvus` now raises ImportError
    a = make_codes(tmp_path / "a.h5", 20, bits=32)
    with pytest.raises(BackendError, match=r"pip install 's5vh\[milvus\]'"):
        I.build_index(a, tmp_path / "x.bin", backend="milvus",
                      backend_options={"uri": "http://127.0.0.1:19530", "collection": "c"})


# ----------------------------------------------------------------------------------------------------------
# last: the server is killed and restarted
# ----------------------------------------------------------------------------------------------------------
def test_killed_server_restarts_without_loss(milvus, opts, twins, tmp_path):
    """SIGKILL the server after a build, an add and a remove it never flushed; after the restart every entry is
    there (no repair needed) and searches are unchanged."""
    c, f, m, _ = twins
    a = make_codes(tmp_path / "a.h5", 500, bits=64, seed=4)
    make_codes(tmp_path / "b.h5", 100, bits=64, seed=5, prefix="w")
    I.build_index(a, tmp_path / "m.bin", backend="milvus", backend_options=opts)
    I.add_codes(tmp_path / "m.bin", artifacts.read_codes(tmp_path / "b.h5"))
    I.remove(tmp_path / "m.bin", keys=list(range(0, 500, 10)))
    h = I.open_index(tmp_path / "m.bin")
    before = I.search(h, a.codes[:50], 10), I.range_search(h, a.codes[:50], 20)
    twins_before = I.search(m, c.codes[:10], 20)
    h.backend.close()
    milvus.crash()
    milvus.restart()
    h = I.open_index(tmp_path / "m.bin")
    assert h.repaired == {} and h.backend.ntotal == 550
    assert same(I.search(h, a.codes[:50], 10), before[0]) and same(I.range_search(h, a.codes[:50], 20), before[1])
    assert api.verify_index(tmp_path / "m.bin")["repaired"] == {}
    m2 = I.open_index(m.path)
    assert m2.repaired == {} and same(I.search(m2, c.codes[:10], 20), twins_before)


def test_api_doc_milvus_example_runs(milvus, work, monkeypatch):
    """The Milvus example of docs/api.md, as written, with the private server's address."""
    import contextlib
    import io
    import re

    doc = Path(__file__).resolve().parent.parent / "docs" / "api.md"
    blocks = re.findall(r"```python milvus\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(work)
    ns: dict = {"api": api}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        for code in blocks:
            code = re.sub(r'^uri = ".*?"', f'uri = "{milvus.uri}"', code, flags=re.M)
            exec(compile(code, "docs/api.md (milvus)", "exec"), ns)
    assert out.getvalue().startswith("milvus BIN_FLAT 12")
    assert ns["out"].to_records()[0]["results"] and ns["f"].backend.name == "faiss" and ns["f"].n == 12
