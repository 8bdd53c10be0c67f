"""The duplicate report: one self-contained HTML file (inline CSS, script and JPEG thumbnails; no network).

Each group shows, per video, a strip of keyframes with its size, duration, resolution, bitrate and path, the
suggested keeper first. A slider regroups at another Hamming threshold in the browser: the report carries
every pair within a few bits beyond the chosen radius and each video's rank as a keeper, so the page computes
the connected components itself.
"""

from __future__ import annotations

import base64
import html
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import artifacts
from .errors import S5VHError
from .progress import NULL, Progress
from .search.dedup import DedupResult, Member, keeper_order


def _thumbs(path: str, count: int) -> list[str]:
    from .video import thumbnails

    try:
        return [base64.b64encode(b).decode("ascii") for b in thumbnails(path, count=count)]
    except S5VHError:
        return []


def report_data(result: DedupResult, thumbs: int = 4, progress: Progress = NULL) -> dict[str, Any]:
    """What the page renders: the videos that have a neighbour within the edge radius, and those edges."""
    members: dict[int, Member] = {}
    for g in result.groups:
        for m in g.members:
            members[m.key] = m
    # videos that only join a group at a larger threshold than the chosen one: fetch their records too
    from .search.index import open_index

    h = open_index(result.index)
    row = h.row_of()
    linked = {k for a, b, _ in result.edges for k in (a, b)} - set(members)
    for k in sorted(linked):
        i = row[k]
        members[k] = Member(key=k, id=h.ids[i], path=h.paths[i], distance=0, record=h.record(i))
    ranked = sorted(members.values(), key=keeper_order)
    progress.start("thumbnails", total=len(ranked))
    videos = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as ex:
            strips = ex.map(lambda m: _thumbs(m.path, thumbs) if m.path else [], ranked)
            for rank, (m, strip) in enumerate(zip(ranked, strips, strict=True)):
                d = m.as_dict(keeper=False)
                d.pop("keeper"), d.pop("distance")
                d["rank"] = rank
                d["name"] = os.path.basename(d["path"]) or d["id"]
                d["thumbs"] = strip
                d["code"] = h.codes[row[m.key]].tobytes().hex()
                videos.append(d)
                progress.advance(1)
    finally:
        progress.finish()
    return {"index": artifacts.display_path(result.index), "videos_in_index": result.videos, "bits": result.bits,
            "radius": result.radius, "radius_rule": {k: v for k, v in result.radius_rule.items()
                                                     if k != "nearest_distance_histogram"},
            "histogram": result.radius_rule.get("nearest_distance_histogram"),
            "edge_radius": result.edge_radius, "videos": videos,
            "edges": [[a, b, d] for a, b, d in result.edges]}


def render_html(result: DedupResult, thumbs: int = 4, progress: Progress = NULL) -> str:
    """The report page as one string (`s5vh dedup --html` writes it; `s5vh serve` serves it)."""
    data = report_data(result, thumbs=thumbs, progress=progress)
    # "</" cannot end the script element early once escaped; the JSON stays valid
    blob = json.dumps(data, ensure_ascii=True).replace("</", "<\\/")
    return _PAGE.replace("%TITLE%", html.escape(f"s5vh duplicates: {data['index']}")).replace("%DATA%", blob)


def write_html(result: DedupResult, out: str | os.PathLike, thumbs: int = 4, progress: Progress = NULL) -> Path:
    """Write the report atomically; returns its path."""
    page = render_html(result, thumbs=thumbs, progress=progress)
    out = Path(out)
    with artifacts.atomic_output(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
 body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2329}
 header{background:#1d2329;color:#fff;padding:14px 22px}
 header h1{font-size:18px;margin:0 0 4px}
 header .sub{color:#b8c0c8;font-size:13px;word-break:break-all}
 .bar{display:flex;gap:22px;align-items:center;flex-wrap:wrap;padding:12px 22px;background:#fff;
      border-bottom:1px solid #dde1e5;position:sticky;top:0;z-index:2}
 .bar b{font-size:18px}
 .bar input[type=range]{width:220px;vertical-align:middle}
 main{padding:16px 22px}
 .group{background:#fff;border:1px solid #dde1e5;border-radius:8px;margin:0 0 16px;padding:10px 14px}
 .group h2{font-size:15px;margin:2px 0 8px}
 .video{display:flex;gap:12px;align-items:center;padding:8px 0;border-top:1px solid #eef0f2}
 .video:first-of-type{border-top:0}
 .strip{display:flex;gap:3px;flex:none}
 .strip img{height:68px;border-radius:3px;background:#ccd}
 .noimg{width:120px;height:68px;display:flex;align-items:center;justify-content:center;background:#e8eaee;
        color:#778;font-size:12px;border-radius:3px}
 .meta{min-width:0}
 .path{font-family:ui-monospace,monospace;font-size:12px;color:#445;word-break:break-all}
 .facts{color:#556;font-size:13px}
 .badge{display:inline-block;font-size:11px;font-weight:600;border-radius:10px;padding:1px 8px;margin-right:6px}
 .keep{background:#d7f5df;color:#11602a}
 .dup{background:#fde2e1;color:#8a1c16}
 .empty{color:#667;padding:30px;text-align:center}
</style></head>
<body>
<header><h1>Duplicate videos</h1><div class="sub" id="sub"></div></header>
<div class="bar">
 <span><b id="ngroups">0</b> groups</span>
 <span><b id="ndups">0</b> duplicates to review</span>
 <label>threshold <input id="radius" type="range" min="0" step="1"> <b id="rval"></b> bits</label>
 <span id="rule" class="facts"></span>
</div>
<main id="groups"></main>
<script id="data" type="application/json">%DATA%</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const byKey = new Map(D.videos.map(v => [v.key, v]));
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; };
function fmtBytes(b) { if (b == null) return "?"; const u = ["B","KB","MB","GB","TB"]; let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; } return b.toFixed(i ? 1 : 0) + " " + u[i]; }
function fmtDur(s) { if (s == null) return "?"; const m = Math.floor(s / 60), r = Math.round(s % 60);
  return m + ":" + String(r).padStart(2, "0"); }
const POP = Array.from({length: 256}, (_, i) => { let n = 0; for (let x = i; x; x >>= 1) n += x & 1; return n; });
function hamming(a, b) { let d = 0; for (let i = 0; i < a.length; i += 2)
  d += POP[parseInt(a.substr(i, 2), 16) ^ parseInt(b.substr(i, 2), 16)]; return d; }
function groupsAt(r) {
  const parent = new Map();
  const find = x => { while (parent.get(x) !== x) { parent.set(x, parent.get(parent.get(x))); x = parent.get(x); }
                      return x; };
  for (const v of D.videos) parent.set(v.key, v.key);
  for (const [a, b, d] of D.edges) if (d <= r) { const ra = find(a), rb = find(b);
    if (ra !== rb) parent.set(Math.max(ra, rb), Math.min(ra, rb)); }
  const comps = new Map();
  for (const v of D.videos) { const root = find(v.key); if (!comps.has(root)) comps.set(root, []);
                              comps.get(root).push(v); }
  const out = [...comps.values()].filter(c => c.length > 1);
  for (const c of out) c.sort((x, y) => x.rank - y.rank);
  out.sort((x, y) => y.length - x.length || x[0].rank - y[0].rank);
  return out;
}
function render(r) {
  document.getElementById("rval").textContent = r;
  const groups = groupsAt(r), main = document.getElementById("groups");
  main.replaceChildren();
  document.getElementById("ngroups").textContent = groups.length;
  document.getElementById("ndups").textContent = groups.reduce((n, g) => n + g.length - 1, 0);
  if (!groups.length) main.append(el("div", "empty", "No duplicates within " + r + " bits."));
  groups.forEach((g, i) => {
    const box = el("section", "group"); box.dataset.group = i + 1;
    box.append(el("h2", null, "Group " + (i + 1) + ": " + g.length + " videos"));
    g.forEach((v, j) => {
      const row = el("div", "video"), strip = el("div", "strip");
      if (v.thumbs.length) for (const t of v.thumbs) { const img = el("img"); img.alt = v.name;
        img.src = "data:image/jpeg;base64," + t; strip.append(img); }
      else strip.append(el("div", "noimg", "no preview"));
      const meta = el("div", "meta"), top = el("div");
      top.append(el("span", "badge " + (j ? "dup" : "keep"), j ? "duplicate" : "keep"), el("b", null, v.name));
      const res = v.width && v.height ? v.width + "x" + v.height : "?";
      const rate = v.bitrate ? Math.round(v.bitrate / 1000) + " kb/s" : "?";
      const dist = j ? " \u00b7 " + hamming(v.code, g[0].code) + " bits from the keeper" : "";
      meta.append(top, el("div", "facts", fmtBytes(v.size) + " \u00b7 " + fmtDur(v.duration) + " \u00b7 " + res +
                           " \u00b7 " + rate + dist), el("div", "path", v.path));
      row.append(strip, meta); box.append(row);
    });
    main.append(box);
  });
}
document.getElementById("sub").textContent = D.index + " \u00b7 " + D.videos_in_index + " videos, " + D.bits +
  "-bit codes";
document.getElementById("rule").textContent = D.radius_rule.rule === "auto" ?
  "(automatic choice: " + D.radius + ")" : "";
const slider = document.getElementById("radius");
slider.max = D.edge_radius; slider.value = D.radius;
slider.addEventListener("input", () => render(Number(slider.value)));
render(D.radius);
</script>
</body></html>
"""
