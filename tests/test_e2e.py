"""The whole pipeline through the real console script, on a tiny generated corpus.

extract -> centers -> train -> encode -> index -> query, each as a subprocess, exactly as a user runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s5vh_cli.demo import make_copy, make_corpus

S5VH = [sys.executable, "-m", "s5vh_cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "S5VH_DEBUG": ""}


def run(*args, ok=(0,)):
    p = subprocess.run([*S5VH, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=900)
    if p.returncode not in ok:
        raise AssertionError(f"s5vh {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    made = make_corpus(out, per_class=6, queries_per_class=1)
    run("extract", out / "videos", "-o", out / "feats.h5", "--frames", 8, "--threads", 1, "--quiet")
    run("centers", out / "feats.h5", "-o", out / "centers.h5", "--clusters", 6, "--bits", 64, "--pca-dim", 32,
        "--quiet")
    run("train", out / "feats.h5", "--centers", out / "centers.h5", "-o", out / "model.pt", "--preset", "demo",
        "--bits", 64, "--epochs", 2, "--threads", 1, "--quiet")
    run("encode", out / "model.pt", out / "feats.h5", "-o", out / "codes.h5", "--quiet")
    run("index", out / "codes.h5", "-o", out / "index.bin")
    return out, made


def _results(stdout: str) -> list[dict]:
    doc = json.loads(stdout)
    queries = doc["queries"] if isinstance(doc, dict) and "queries" in doc else doc
    assert len(queries) == 1
    return queries[0]["results"]


def test_unmodified_clip_finds_itself_first(pipeline):
    out, made = pipeline
    clip = made["videos"][7]
    res = _results(run("query", out / "index.bin", clip, "--topk", 5, "--json").stdout)
    assert res[0]["distance"] == 0
    assert Path(res[0]["path"]).resolve() == clip.resolve()
    assert [r["rank"] for r in res] == [1, 2, 3, 4, 5]


def test_cropped_reencoded_copy_ranks_source_in_top5(pipeline):
    out, made = pipeline
    src = made["videos"][13]
    copy = out / "copy.mp4"
    make_copy(src, copy, crop=0.06, scale=0.8)
    res = _results(run("query", out / "index.bin", copy, "--topk", 5, "--json").stdout)
    assert src.resolve() in [Path(r["path"]).resolve() for r in res]


def test_query_by_features_and_codes_agree(pipeline):
    out, _ = pipeline
    a = json.loads(run("query", out / "index.bin", out / "codes.h5", "--topk", 3, "--json").stdout)
    b = json.loads(run("query", out / "index.bin", out / "feats.h5", "--topk", 3, "--json").stdout)
    assert len(a["queries"]) == 36
    for qa, qb in zip(a["queries"], b["queries"], strict=True):
        assert (qa["query_id"], qa["code"], qa["results"]) == (qb["query_id"], qb["code"], qb["results"])
        assert qa["results"][0]["distance"] == 0  # every indexed video finds a code identical to its own


@pytest.mark.parametrize("cmd", [
    ["centers", "{codes}", "-o", "{tmp}/c.h5"],
    ["train", "{codes}", "-o", "{tmp}/m.pt", "--epochs", "1"],
    ["encode", "{model}", "{codes}", "-o", "{tmp}/x.h5"],
    ["encode", "{feats}", "{feats}", "-o", "{tmp}/x.h5"],
    ["index", "{feats}", "-o", "{tmp}/i.bin"],
    ["query", "{codes}", "{feats}"],
    ["train", "{trunc}", "-o", "{tmp}/m.pt"],
    ["encode", "{model}", "{trunc}", "-o", "{tmp}/x.h5"],
])
def test_wrong_or_damaged_inputs_exit_2_with_one_line(pipeline, tmp_path, cmd):
    out, _ = pipeline
    trunc = tmp_path / "trunc.h5"
    data = (out / "feats.h5").read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    subst = {"codes": out / "codes.h5", "feats": out / "feats.h5", "model": out / "model.pt", "tmp": tmp_path,
             "trunc": trunc}
    args = [a.format(**subst) for a in cmd]
    p = run(*args, ok=(2,))
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert not any(Path(a).exists() for a in args if a.startswith(str(tmp_path)) and a != str(trunc))
