"""The library workflow on real (generated) videos: idempotent add, sync, paths that survive, models that are
never lost, duplicate groups with keepers, moves that can be undone, and the HTML report."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from library import cli, entries, run, same_entries

from s5vh_cli import api, artifacts
from s5vh_cli.demo import make_copy
from s5vh_cli.search import sync as sync_mod


def reextract(work: Path, name: str) -> Path:
    run("extract", work / "videos", "-o", work / f"{name}_feats.h5", "--frames", 4, "--threads", 1, "--workers", 0,
        "--quiet")
    run("encode", work / "model.pt", work / f"{name}_feats.h5", "-o", work / f"{name}_codes.h5", "--quiet")
    return work / f"{name}_codes.h5"


# ----------------------------------------------------------------------------------------------------------
# data integrity
# ----------------------------------------------------------------------------------------------------------
def test_paths_are_absolute_and_exclude_self_works_from_anywhere(lib, tmp_path, capsys, monkeypatch):
    h = api.open_index(lib / "index.bin")
    assert h.n == 12 and all(os.path.isabs(p) and os.path.isfile(p) for p in h.paths)
    assert all(h.record(i).get("file_sha256") and h.record(i).get("width") == 64 for i in range(h.n))
    monkeypatch.chdir(tmp_path)  # another folder than extract ran from
    rc, out, err = cli(capsys, "query", lib / "index.bin", lib / "codes.h5", "-k", "3", "--exclude-self", "--json")
    assert rc == 0, err
    for q in json.loads(out)["queries"]:
        assert q["query_path"] not in [r["path"] for r in q["results"]]
        assert all(os.path.isfile(r["path"]) for r in q["results"])


def test_adding_the_same_library_twice_changes_nothing(work, capsys):
    before = entries(work / "index.bin")
    codes = reextract(work, "again")  # a new features file and codes file of the same videos
    rc, out, err = cli(capsys, "index", "add", work / "index.bin", codes, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["count"] == 12 and doc["added"] == 0 and doc["skipped"] == 12
    assert same_entries(before, entries(work / "index.bin"))
    rc, out, err = cli(capsys, "index", "add", work / "index.bin", work / "codes.h5", "--json")
    assert rc == 0 and json.loads(out)["count"] == 12
    assert same_entries(before, entries(work / "index.bin"))


def test_grown_library_adds_only_new_videos_and_changed_ones_replace(work, capsys):
    h0 = api.open_index(work / "index.bin")
    old_keys = dict(zip(h0.paths, h0.keys.tolist(), strict=True))
    vids = sorted((work / "videos").rglob("*.mp4"))
    make_copy(vids[0], work / "videos" / "new_copy.mp4")
    changed = vids[1]
    shutil.copy(vids[5], changed)  # same name, other content
    codes = reextract(work, "grown")
    rc, out, err = cli(capsys, "index", "add", work / "index.bin", codes, "--on-existing", "error")
    assert rc == 2 and "already holds" in err
    rc, out, err = cli(capsys, "index", "add", work / "index.bin", codes, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["count"], doc["added"], doc["replaced"], doc["skipped"]) == (13, 1, 1, 11)
    h = api.open_index(work / "index.bin")
    assert len(set(h.paths)) == h.n == 13
    new_keys = dict(zip(h.paths, h.keys.tolist(), strict=True))
    assert new_keys[str(changed)] not in old_keys.values()  # a new key for the changed file
    assert all(new_keys[p] == k for p, k in old_keys.items() if p != str(changed))


def test_train_never_overwrites_a_model_and_force_keeps_the_old_one(work, capsys):
    sha = artifacts.sha256_file(work / "model.pt")
    rc, _, err = cli(capsys, "train", work / "feats.h5", "-o", work / "model.pt", "--preset", "demo", "--bits", 16,
                     "--epochs", 1, "--seed", 7, "--quiet")
    assert rc == 2 and "--force" in err and artifacts.sha256_file(work / "model.pt") == sha
    rc, _, err = cli(capsys, "train", work / "feats.h5", "-o", work / "model.pt", "--preset", "demo", "--bits", 16,
                     "--epochs", 1, "--seed", 7, "--quiet", "--force")
    assert rc == 0, err
    kept = work / f"model.pt.{sha[:12]}.kept"
    assert artifacts.sha256_file(kept) == sha and artifacts.sha256_file(work / "model.pt") != sha
    # the index built with the old model still answers clip queries: it finds the kept model by its sha256
    clip = sorted((work / "videos").rglob("*.mp4"))[3]
    rc, out, err = cli(capsys, "query", work / "index.bin", clip, "--radius", 0, "--json")
    assert rc == 0, err
    assert str(clip) in [r["path"] for r in json.loads(out)["queries"][0]["results"]]


# ----------------------------------------------------------------------------------------------------------
# sync
# ----------------------------------------------------------------------------------------------------------
def test_sync_of_an_unchanged_folder_writes_nothing(work, capsys):
    before = (work / "index.bin").read_bytes(), entries(work / "index.bin")
    mtime = (work / "index.bin.meta.h5").stat().st_mtime_ns
    rc, out, err = cli(capsys, "sync", work / "videos", work / "index.bin", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["unchanged"] == 12 and not doc["added"] and not doc["removed"] and not doc["replaced"]
    assert (work / "index.bin").read_bytes() == before[0] and same_entries(before[1], entries(work / "index.bin"))
    assert (work / "index.bin.meta.h5").stat().st_mtime_ns == mtime


def test_sync_adds_replaces_removes_and_refreshes(work, capsys):
    vids = sorted((work / "videos").rglob("*.mp4"))
    (work / "videos" / "sub").mkdir()
    make_copy(vids[0], work / "videos" / "sub" / "new.mp4")
    shutil.copy(vids[4], vids[2])  # changed content
    vids[3].unlink()  # gone
    os.utime(vids[6], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same content
    rc, out, err = cli(capsys, "sync", work / "videos", work / "index.bin", "--dry-run", "--json")
    assert rc == 0, err
    plan = json.loads(out)
    assert len(plan["added"]) == 1 and len(plan["replaced"]) == 1 and len(plan["removed"]) == 1
    assert api.open_index(work / "index.bin").n == 12  # a dry run changes nothing
    rc, out, err = cli(capsys, "sync", work / "videos", work / "index.bin", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["added"] == [str(work / "videos" / "sub" / "new.mp4")]
    assert doc["replaced"] == [str(vids[2])] and doc["removed"] == [str(vids[3])] and doc["refreshed"] == 1
    h = api.open_index(work / "index.bin")
    assert h.n == 12 and sorted(h.paths) == sorted(str(p) for p in (work / "videos").rglob("*.mp4"))
    row = h.paths.index(str(vids[6]))
    assert h.record(row)["file_mtime_ns"] == vids[6].stat().st_mtime_ns
    assert not (work / "index.bin.sync").exists()  # the work folder is gone after a finished sync
    rc, out, _ = cli(capsys, "sync", work / "videos", work / "index.bin", "--json")
    assert json.loads(out)["unchanged"] == 12  # and now it is in sync


def test_interrupted_sync_leaves_the_index_and_resumes_without_reextracting(work, capsys, monkeypatch):
    vids = sorted((work / "videos").rglob("*.mp4"))
    for i in (0, 1):
        make_copy(vids[i], work / "videos" / f"copy{i}.mp4")
    before = entries(work / "index.bin")
    real_merge = sync_mod.merge_codes

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sync_mod, "merge_codes", interrupted)
    rc, _, err = cli(capsys, "sync", work / "videos", work / "index.bin")
    assert rc == 130 and same_entries(before, entries(work / "index.bin"))
    assert list((work / "index.bin.sync").rglob("feats.h5"))  # the extraction survived
    monkeypatch.setattr(sync_mod, "merge_codes", real_merge)
    calls = []
    import s5vh_cli.extract as ex

    real_run = ex._run
    monkeypatch.setattr(ex, "_run", lambda j, todo, *a, **k: calls.append(len(todo)) or real_run(j, todo, *a, **k))
    rc, out, err = cli(capsys, "sync", work / "videos", work / "index.bin", "--json")
    assert rc == 0, err
    assert len(json.loads(out)["added"]) == 2 and calls in ([], [0])  # nothing decoded again


# ----------------------------------------------------------------------------------------------------------
# dedup
# ----------------------------------------------------------------------------------------------------------
def _library_with_copies(work: Path) -> tuple[Path, Path]:
    """Two byte-identical copies of one clip (distance 0) plus a lower-resolution re-encode of another."""
    vids = sorted((work / "videos").rglob("*.mp4"))
    a, b = vids[0], vids[7]
    shutil.copy(a, work / "videos" / "dup_of_a.mp4")
    shutil.copy(a, work / "videos" / "another_dup_of_a.mp4")
    run("sync", work / "videos", work / "index.bin")
    return a, b


def test_dedup_groups_keeper_and_formats(work, capsys):
    a, _ = _library_with_copies(work)
    os.utime(work / "videos" / "dup_of_a.mp4", ns=(1, 1))  # the oldest of three identical files
    run("sync", work / "videos", work / "index.bin")
    rc, out, err = cli(capsys, "dedup", work / "index.bin", "--radius", 0, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    group = next(g for g in doc["duplicate_groups"] if str(a) in [m["path"] for m in g["members"]])
    assert {m["path"] for m in group["members"]} >= {str(a), str(work / "videos" / "dup_of_a.mp4"),
                                                      str(work / "videos" / "another_dup_of_a.mp4")}
    # same resolution, bitrate and duration: the oldest file is the keeper
    assert group["keeper"] == str(work / "videos" / "dup_of_a.mp4") and group["members"][0]["keeper"]
    assert all(m["distance"] == 0 for m in group["members"])
    rc, out, _ = cli(capsys, "dedup", work / "index.bin", "--radius", 0, "--jsonl")
    lines = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and len(lines) == doc["groups"] and lines[0]["members"]
    rc, out, _ = cli(capsys, "dedup", work / "index.bin", "--radius", 0, "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and len(rows) == sum(g["size"] for g in doc["duplicate_groups"])
    assert {r["keeper"] for r in rows} == {"0", "1"}
    rc, out, err = cli(capsys, "dedup", work / "index.bin", "--radius", 0)
    assert rc == 0 and "keep" in out and max(len(x) for x in out.splitlines()) <= 80


def test_dedup_exit_code_when_nothing_is_duplicated(tmp_path, capsys):
    r = np.random.default_rng(0)
    codes = np.unique(r.integers(0, 256, size=(50, 8), dtype=np.uint8), axis=0)
    c = artifacts.Codes(path=None, codes=codes, ids=[f"v{i}" for i in range(len(codes))],
                        paths=[f"/lib/v{i}.mp4" for i in range(len(codes))], bits=64, model_sha256="m" * 64)
    artifacts.write_codes(tmp_path / "c.h5", c, artifacts.provenance("encode"))
    api.build(tmp_path / "c.h5", tmp_path / "i.bin")
    rc, out, err = cli(capsys, "dedup", tmp_path / "i.bin", "--radius", 0, "--json")
    assert rc == 1 and json.loads(out)["groups"] == 0


def test_keeper_rule_order():
    from s5vh_cli.search.dedup import Member, keeper_order

    def m(key, **rec):
        return Member(key=key, id=str(key), path=f"/v{key}", distance=0, record=rec)

    big = m(5, width=1920, height=1080, file_size=10, duration=10.0, file_mtime_ns=9)
    small = m(1, width=640, height=360, file_size=999, duration=99.0, file_mtime_ns=1)
    rich = m(6, width=1920, height=1080, file_size=20, duration=10.0, file_mtime_ns=9)
    longer = m(7, width=1920, height=1080, file_size=40, duration=20.0, file_mtime_ns=9)
    older = m(8, width=1920, height=1080, file_size=40, duration=20.0, file_mtime_ns=2)
    order = sorted([small, big, rich, longer, older], key=keeper_order)
    # resolution first; then bitrate (rich = longer = older: 16 b/s); then duration; then the oldest file
    assert [x.key for x in order] == [8, 7, 6, 5, 1]


def test_auto_radius_splits_copies_from_the_rest(tmp_path):
    from s5vh_cli.search.dedup import auto_radius

    r = np.random.default_rng(3)
    base = r.integers(0, 2, size=(200, 64), dtype=np.uint8)
    bits = [base]
    for i in range(40):  # 40 copies of the first 40 videos, 0-4 bits away
        c = base[i].copy()
        c[r.choice(64, size=int(r.integers(0, 5)), replace=False)] ^= 1
        bits.append(c[None, :])
    codes = np.packbits(np.concatenate(bits), axis=1)
    n = len(codes)
    c = artifacts.Codes(path=None, codes=codes, ids=[f"v{i}" for i in range(n)], paths=[f"/v{i}" for i in range(n)],
                        bits=64, model_sha256="m" * 64)
    artifacts.write_codes(tmp_path / "c.h5", c, artifacts.provenance("encode"))
    h = api.build(tmp_path / "c.h5", tmp_path / "i.bin")
    radius, rule = auto_radius(h)
    assert 4 <= radius <= 16 and rule["rule"] == "auto"
    res = api.dedup(h)
    assert res.radius == radius and len(res.groups) == 40 and all(len(g.members) == 2 for g in res.groups)


def test_move_to_and_undo(work, capsys):
    a, _ = _library_with_copies(work)
    before = sorted(str(p.relative_to(work)) for p in (work / "videos").rglob("*.mp4"))
    rc, out, err = cli(capsys, "dedup", work / "index.bin", "--radius", 0, "--move-to", work / "aside", "--json")
    assert rc == 0, err
    moves = json.loads(out)["moves"]
    assert len(moves["moved"]) >= 2 and all(Path(m["to"]).is_file() and not Path(m["from"]).exists()
                                            for m in moves["moved"])
    assert a.exists() or any(m["from"] == str(a) for m in moves["moved"])
    manifest = Path(moves["manifest"])
    rc, out, err = cli(capsys, "dedup", "--undo", manifest)
    assert rc == 0, err
    assert sorted(str(p.relative_to(work)) for p in (work / "videos").rglob("*.mp4")) == before
    assert not list((work / "aside").rglob("*.mp4")) and manifest.with_name(manifest.name + ".undone").exists()


def test_undo_after_an_interrupted_move(work, capsys, monkeypatch):
    _library_with_copies(work)
    from s5vh_cli.search import moves

    real = moves._move_file
    done = []

    def second_fails(src, dst):
        if done:
            raise KeyboardInterrupt  # killed after the intent of the second move reached the manifest
        real(src, dst)
        done.append(dst)

    monkeypatch.setattr(moves, "_move_file", second_fails)
    before = sorted(str(p) for p in (work / "videos").rglob("*.mp4"))
    rc, _, _ = cli(capsys, "dedup", work / "index.bin", "--radius", 0, "--move-to", work / "aside",
                   "--manifest", work / "m.jsonl")
    assert rc == 130
    monkeypatch.setattr(moves, "_move_file", real)
    rc, out, err = cli(capsys, "dedup", "--undo", work / "m.jsonl", "--json")
    assert rc == 0, err and len(json.loads(out)["moved"]) == 1
    assert sorted(str(p) for p in (work / "videos").rglob("*.mp4")) == before


def test_undo_refuses_what_is_not_a_manifest(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"hello": 1}\n')
    rc, _, err = cli(capsys, "dedup", "--undo", tmp_path / "m.jsonl")
    assert rc == 2 and "not a manifest" in err


def test_dedup_of_a_folder_indexes_it_then_syncs(work, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("S5VH_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copy(sorted((work / "videos").rglob("*.mp4"))[0], work / "videos" / "twin.mp4")
    rc, _, err = cli(capsys, "dedup", work / "videos", "--radius", 0)
    assert rc == 2 and "--model" in err  # the first time a folder needs the model that encodes it
    rc, out, err = cli(capsys, "dedup", work / "videos", "--model", work / "model.pt", "--radius", 0, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["videos"] == 13 and any(str(work / "videos" / "twin.mp4") in [m["path"] for m in g["members"]]
                                       for g in doc["duplicate_groups"])
    (work / "videos" / "twin.mp4").unlink()
    rc, out, err = cli(capsys, "dedup", work / "videos", "--radius", 0, "--json")  # synced: twin is gone
    assert json.loads(out)["videos"] == 12


def test_progress_without_a_terminal_is_plain_lines(lib, tmp_path):
    """stderr to a log file: no bar and no control codes, but a plain progress line every few seconds."""
    import subprocess
    import sys

    log = tmp_path / "extract.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "S5VH_PROGRESS_SECONDS": "0"}
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-m", "s5vh_cli", "extract", str(lib / "videos"), "-o",
                            str(tmp_path / "f.h5"), "--frames", "4", "--workers", "0", "--batch-size", "4"],
                           stdout=subprocess.DEVNULL, stderr=f, env=env, timeout=600)
    text = log.read_text()
    assert p.returncode == 0, text
    lines = [ln for ln in text.splitlines() if ln.startswith("extract: ")]
    assert len(lines) >= 3 and "/12" in lines[0] and "\x1b" not in text and "\r" not in text


def test_other_files_given_as_an_index_say_what_they_are(lib, capsys):
    for name, kind in (("codes.h5", "codes"), ("feats.h5", "features"), ("model.pt", "model")):
        rc, _, err = cli(capsys, "query", lib / name, lib / "codes.h5")
        assert rc == 2 and f"is a {kind}" in err and "not an index" in err, err


def test_auto_radius_finds_nothing_in_a_library_without_copies(tmp_path):
    """Unrelated codes have one mode of nearest-neighbour distances, which Otsu's split alone would cut in
    two; the shuffled-bits bound keeps the automatic radius below where unrelated videos meet."""
    r = np.random.default_rng(5)
    n = 3000
    c = artifacts.Codes(path=None, codes=r.integers(0, 256, size=(n, 8), dtype=np.uint8),
                        ids=[f"v{i}" for i in range(n)], paths=[f"/v{i}" for i in range(n)], bits=64,
                        model_sha256="m" * 64)
    artifacts.write_codes(tmp_path / "c.h5", c, artifacts.provenance("encode"))
    res = api.dedup(api.build(tmp_path / "c.h5", tmp_path / "i.bin"))
    assert res.radius_rule["otsu_split"] > res.radius and res.groups == []
