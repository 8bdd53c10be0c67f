"""`s5vh serve` over real HTTP on 127.0.0.1: the same answers as the CLI, confined paths, the token, the upload
limit, writes that reach the queries, and a server killed during a write that loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from library import cli, copy_library, entries, same_entries
from serving import httpx, serving, start, stop

from s5vh_cli import api, artifacts


def _hits(doc: dict) -> list[list[tuple]]:
    """What must agree between the CLI and the server: per query, (rank, distance, key, id, path)."""
    return [[(r["rank"], r["distance"], r["key"], r["id"], r["path"]) for r in q["results"]] for q in doc["queries"]]


@pytest.fixture(scope="module")
def site(lib, tmp_path_factory):
    """One served copy of the library (its videos folder is the server's root), shared by the read-only tests."""
    root = copy_library(lib, tmp_path_factory.mktemp("site"))
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("not for the server")
    shutil.copy(sorted((root / "videos").rglob("*.mp4"))[0], outside / "clip.mp4")
    os.symlink(outside / "secret.txt", root / "videos" / "link_out.txt")
    os.symlink(outside, root / "videos" / "dir_out")
    with serving(root / "index.bin", "--root", root / "videos", log=root / "server.log") as srv:
        yield root, outside, srv


def test_clip_query_answers_what_the_cli_answers(site, capsys):
    root, _, srv = site
    clip = sorted((root / "videos").rglob("*.mp4"))[3]
    rc, out, err = cli(capsys, "query", root / "index.bin", clip, "-k", "5", "--json")
    assert rc == 0, err
    want = json.loads(out)
    with srv.client() as c:
        up = c.post("/api/query/clip", params={"name": clip.name, "topk": 5}, content=clip.read_bytes())
        by_path = c.post("/api/query/paths", json={"paths": [str(clip)], "topk": 5})
    assert up.status_code == 200, up.text
    assert by_path.status_code == 200, by_path.text
    up, by_path = up.json(), by_path.json()
    assert _hits(up) == _hits(want) == _hits(by_path)
    assert up["queries"][0]["code"] == want["queries"][0]["code"]
    assert up["queries"][0]["query"] == clip.name
    # the document is the CLI's, key for key (timings differ, the uploaded query has no server path)
    assert set(up) == set(want) and set(up["queries"][0]) == set(want["queries"][0])
    assert {k: v for k, v in by_path.items() if k != "timings"} == {k: v for k, v in want.items() if k != "timings"}


def test_code_and_feature_queries_match_the_cli(site, capsys):
    root, _, srv = site
    rc, out, err = cli(capsys, "query", root / "index.bin", root / "codes.h5", "-k", "4", "--json")
    assert rc == 0, err
    want = json.loads(out)
    codes = [q["code"] for q in want["queries"]]
    feats = artifacts.read_features(root / "feats.h5")
    with srv.client() as c:
        by_codes = c.post("/api/query/codes", json={"codes": codes, "topk": 4}).json()
        by_feats = c.post("/api/query/features", json={"features": feats.feats[:3].tolist(), "topk": 4}).json()
        within = c.post("/api/query/codes", json={"codes": codes[:1], "radius": 3}).json()
    assert _hits(by_codes) == _hits(want)
    assert _hits(by_feats) == _hits(want)[:3]
    assert [q["code"] for q in by_feats["queries"]] == codes[:3]
    rc, out, _ = cli(capsys, "query", root / "index.bin", root / "codes.h5", "--radius", 3, "--json")
    assert _hits(within) == _hits(json.loads(out))[:1]


def test_bad_requests_are_one_line_errors(site):
    _, _, srv = site
    with srv.client() as c:
        r = c.post("/api/query/codes", json={"codes": ["abcd"]})  # 16 bits is right: the lib has 16-bit codes
        assert r.status_code == 200
        for body, code in (({"codes": ["zz"]}, 400), ({"codes": ["abcdef"]}, 400), ({"codes": ["abcd"], "radius": 17}, 400),
                           ({"codes": []}, 422), ({"codes": ["abcd"], "topk": 0}, 422)):
            r = c.post("/api/query/codes", json=body)
            assert r.status_code == code, (body, r.text)
            if code == 400:
                assert "\n" not in r.json()["error"]
        r = c.post("/api/query/clip", params={"name": "x.mp4"}, content=b"not a video at all")
        assert r.status_code == 400 and "\n" not in r.json()["error"]
        assert c.post("/api/query/clip", content=b"").status_code == 400
        assert c.get("/api/videos/99999/thumbnails").status_code == 404


@pytest.mark.parametrize("path", [
    "../index.bin", "videos/../../index.bin", "/etc/passwd", "{outside}/clip.mp4", "link_out.txt",
    "dir_out/clip.mp4", "{root}/index.bin", "%2e%2e/index.bin", "..%2f..%2fetc%2fpasswd", "..\\index.bin",
    "a\x00b", "", "//etc/passwd", "{videos}/../index.bin",
])
def test_hostile_paths_are_refused(site, path):
    root, outside, srv = site
    raw = path.format(outside=outside, root=root, videos=root / "videos")
    with srv.client() as c:
        for endpoint, body in (("/api/query/paths", {"paths": [raw]}), ("/api/index/add", {"codes": raw}),
                               ("/api/sync", {"folder": raw})):
            r = c.post(endpoint, json=body)
            # refused (403), or a name with literal percent signs that does not exist inside the root (404)
            assert r.status_code in (403, 404), (endpoint, raw, r.status_code, r.text)
            assert "not for the server" not in r.text
    assert entries(root / "index.bin")  # still readable, nothing was written


def test_paths_inside_the_root_are_served(site):
    root, _, srv = site
    clip = sorted((root / "videos").rglob("*.mp4"))[0]
    rel = str(clip.relative_to(root / "videos"))
    with srv.client() as c:
        for p in (rel, str(clip)):
            r = c.post("/api/query/paths", json={"paths": [p], "topk": 1})
            assert r.status_code == 200, r.text
            assert r.json()["queries"][0]["results"][0]["path"] == str(clip)


def test_read_endpoints_give_the_cli_documents(site, capsys):
    root, _, srv = site
    with srv.client() as c:
        info = c.get("/api/index").json()
        dedup = c.get("/api/dedup", params={"radius": 2}).json()
        health = c.get("/api/health").json()
        metrics = c.get("/api/metrics").json()
        thumbs = c.get(f"/api/videos/{info['next_key'] - 1}/thumbnails", params={"count": 2}).json()
        report = c.get("/api/dedup/report", params={"radius": 2})
        openapi = c.get("/openapi.json").json()
        docs = c.get("/docs")
        page = c.get("/")
    rc, out, _ = cli(capsys, "index", "info", root / "index.bin", "--json")
    assert info == json.loads(out)
    rc, out, _ = cli(capsys, "dedup", root / "index.bin", "--radius", 2, "--json")
    want = json.loads(out)
    assert {k: v for k, v in dedup.items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}
    assert health["status"] == "ok" and health["count"] == 12 and health["clip_queries"] is True
    assert metrics["memory"]["rss_bytes"] > 0 and any(r.startswith("GET /api/") for r in metrics["routes"])
    assert len(thumbs["thumbnails"]) == 2
    assert report.status_code == 200 and "Duplicate videos" in report.text
    assert {"/api/query/clip", "/api/query/codes", "/api/index/add", "/api/sync", "/api/dedup"} <= set(openapi["paths"])
    assert docs.status_code == 200 and page.status_code == 200 and "drop" in page.text


def test_token_is_required_when_set_and_off_loopback(lib, tmp_path, capsys):
    t0 = time.monotonic()
    rc, out, err = cli(capsys, "serve", lib / "index.bin", "--host", "0.0.0.0")
    assert rc == 2 and "token" in err and len(err.strip().splitlines()) == 1
    with serving(lib / "index.bin", "--no-warm", token="s3cret-token", log=tmp_path / "log") as srv:
        with srv.client(token="") as c:
            assert c.get("/api/health").status_code == 401
            assert c.post("/api/query/codes", json={"codes": ["abcd"]}).status_code == 401
            assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/").status_code == 200  # the page itself holds no data; it asks for the token
        with srv.client() as c:
            assert c.get("/api/health").status_code == 200
            assert c.post("/api/query/codes", json={"codes": ["abcd"]}).status_code == 200
    assert time.monotonic() - t0 < 600


def test_upload_limit(lib, tmp_path):
    data = bytes(range(256)) * 200  # 51 kB; the limit below is 10.5 kB, checked before anything is decoded
    with serving(lib / "index.bin", "--no-warm", "--max-upload-mb", 0.01, log=tmp_path / "log") as srv:
        with srv.client() as c:
            r = c.post("/api/query/clip", params={"name": "big.mp4"}, content=data)
            assert r.status_code == 413, r.text

            def chunks():  # no Content-Length: counted as it arrives
                for i in range(0, len(data), 4096):
                    yield data[i:i + 4096]

            r = c.post("/api/query/clip", params={"name": "big.mp4"}, content=chunks())
            assert r.status_code == 413, r.text
            assert c.post("/api/query/codes", json={"codes": ["abcd"]}).status_code == 200


def test_writes_reach_queries_and_match_the_cli(lib, tmp_path, capsys):
    root = copy_library(lib, tmp_path / "lib")
    twin = copy_library(lib, tmp_path / "twin")  # the same library, changed by the CLI, for comparison
    for base in (root, twin):
        vids = sorted((base / "videos").rglob("*.mp4"))
        shutil.copy(vids[2], base / "videos" / "copy_of_2.mp4")
    with serving(root / "index.bin", "--root", root, log=tmp_path / "log") as srv, srv.client() as c:
        r = c.post("/api/sync", json={"folder": "videos"})
        assert r.status_code == 200, r.text
        synced = r.json()
        rc, out, err = cli(capsys, "sync", twin / "videos", twin / "index.bin", "--json", "--workers", 0)
        assert rc == 0, err
        want = json.loads(out)
        assert [Path(p).name for p in synced["added"]] == [Path(p).name for p in want["added"]] == ["copy_of_2.mp4"]
        assert synced["count"] == want["count"] == 13
        new = str(root / "videos" / "copy_of_2.mp4")
        q = c.post("/api/query/paths", json={"paths": [new], "topk": 3}).json()
        assert q["count"] == 13 and new in [r["path"] for r in q["queries"][0]["results"] if r["distance"] == 0]
        r = c.post("/api/index/remove", json={"paths": [new]}).json()
        rc, out, _ = cli(capsys, "index", "remove", twin / "index.bin", "--path", twin / "videos" / "copy_of_2.mp4",
                         "--json")
        want = json.loads(out)
        assert r["removed"] == want["removed"] == 1 and r["count"] == want["count"] == 12
        assert set(r) == set(want)
        r = c.post("/api/index/add", json={"codes": "codes.h5"}).json()
        assert r["skipped"] == 12 and r["added"] == 0
        assert c.post("/api/index/remove", json={"ids": ["nope"]}).status_code == 400
        # a write by another process beside the server is picked up at the next request
        rc, _, err = cli(capsys, "index", "remove", root / "index.bin", "--key", 0)
        assert rc == 0, err
        info = c.get("/api/index").json()
        assert info["count"] == 11
        assert c.get("/api/metrics").json()["index_reloads"] >= 3


def test_killed_during_a_write_loses_nothing_and_restarts(lib, tmp_path, capsys):
    root = copy_library(lib, tmp_path / "lib")
    vids = sorted((root / "videos").rglob("*.mp4"))
    from s5vh_cli.demo import make_copy

    for i, v in enumerate(vids):  # new videos: the sync must load the backbone, decode and embed them
        make_copy(v, root / "videos" / f"new_{i}.mp4")
    before = entries(root / "index.bin")
    srv = start(root / "index.bin", "--root", root, "--no-warm", log=tmp_path / "log")
    try:
        result: dict = {}

        def call() -> None:
            try:
                with srv.client() as c:
                    result["r"] = c.post("/api/sync", json={"folder": "videos"})
            except httpx.TransportError as e:
                result["e"] = e

        t = threading.Thread(target=call)
        t.start()
        work = root / "index.bin.sync"
        deadline = time.monotonic() + 300
        while not work.exists() and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.05)
        assert work.exists(), "the sync never started its work folder"
        time.sleep(0.2)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        t.join(60)
    finally:
        stop(srv)
    assert "e" in result, "the request was answered although the server was killed during it"
    h = api.open_index(root / "index.bin")  # intact: opens, and holds either the old entries or the new ones
    after = entries(root / "index.bin")
    assert same_entries(before, after) or h.n == 24
    with serving(root / "index.bin", "--root", root, "--no-warm", log=tmp_path / "log2") as srv2, srv2.client() as c:
        assert c.get("/api/health").json()["count"] == h.n
        r = c.post("/api/sync", json={"folder": "videos"})
        assert r.status_code == 200, r.text
        assert r.json()["count"] == 24
    h = api.open_index(root / "index.bin")
    assert h.n == 24 and len(set(h.paths)) == 24


def test_missing_extra_is_one_line_naming_it(lib):
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('fastapi', 'uvicorn'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from s5vh_cli.cli import main\n"
            f"main(['serve', {str(lib / 'index.bin')!r}])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == ["error: s5vh serve needs fastapi, uvicorn: pip install 's5vh[serve]'"]


def test_an_index_on_milvus_serves_what_the_cli_answers(milvus, lib, tmp_path, capsys):
    """The server calls api.py only, so an index whose codes live in a Milvus collection serves unchanged:
    queries equal the CLI's, a removal through the server reaches the collection and the CLI."""
    root = copy_library(lib, tmp_path / "lib")
    api.migrate(root / "index.bin", root / "index.bin", "milvus",
                backend_options={"uri": milvus.uri, "collection": f"serve_{os.getpid()}_{time.monotonic_ns()}"})
    rc, out, err = cli(capsys, "query", root / "index.bin", root / "codes.h5", "-k", "4", "--json")
    assert rc == 0, err
    want = json.loads(out)
    codes = [q["code"] for q in want["queries"]]
    clip = sorted((root / "videos").rglob("*.mp4"))[5]
    with serving(root / "index.bin", "--root", root, log=tmp_path / "log") as srv, srv.client() as c:
        info = c.get("/api/index").json()
        assert info["backend"] == "milvus" and info["count"] == 12
        assert _hits(c.post("/api/query/codes", json={"codes": codes, "topk": 4}).json()) == _hits(want)
        by_path = c.post("/api/query/paths", json={"paths": [str(clip)], "topk": 3})
        assert by_path.status_code == 200, by_path.text
        rc, out, err = cli(capsys, "query", root / "index.bin", clip, "-k", "3", "--json")
        assert rc == 0, err
        assert _hits(by_path.json()) == _hits(json.loads(out))
        r = c.post("/api/index/remove", json={"paths": [str(clip)]})
        assert r.status_code == 200, r.text
        assert r.json()["removed"] == 1 and r.json()["count"] == 11
    h = api.open_index(root / "index.bin")
    assert h.backend.name == "milvus" and h.n == 11 and str(clip) not in h.paths
    assert api.verify_index(root / "index.bin")["repaired"] == {}
