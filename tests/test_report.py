"""The duplicate report, rendered in a real headless browser: groups and thumbnails visible, slider regroups."""

from __future__ import annotations

import shutil
import time

from browser import browser, png_is_not_blank
from library import cli, run

from s5vh_cli import api


def test_html_report_in_a_browser(work, tmp_path, capsys):
    vids = sorted((work / "videos").rglob("*.mp4"))
    shutil.copy(vids[0], work / "videos" / "dup_a.mp4")
    shutil.copy(vids[4], work / "videos" / "dup_b.mp4")
    shutil.copy(vids[4], work / "videos" / "dup_b2.mp4")
    run("sync", work / "videos", work / "index.bin")
    report = tmp_path / "report.html"
    rc, out, err = cli(capsys, "dedup", work / "index.bin", "--radius", 0, "--html", report, "--json")
    assert rc == 0, err
    n_groups = len(api.dedup(work / "index.bin", radius=0).groups)
    assert n_groups >= 2
    shot = tmp_path / "report.png"
    with browser(tmp_path) as d:
        d.get(report.as_uri())
        time.sleep(0.3)
        groups = d.execute_script("return document.querySelectorAll('section.group').length")
        imgs = d.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        keep = d.execute_script("return document.querySelectorAll('.badge.keep').length")
        assert groups == n_groups and keep == n_groups
        assert len(imgs) >= 4 * 5 and all(imgs)  # a strip of keyframes for every video shown
        assert d.execute_script("return document.getElementById('ngroups').textContent") == str(n_groups)
        text = d.execute_script("return document.body.innerText")
        assert "dup_b2.mp4" in text and "keep" in text
        # the slider regroups in the page: at the largest threshold there are never more groups
        d.execute_script("const s = document.getElementById('radius'); s.value = s.max;"
                         "s.dispatchEvent(new Event('input'))")
        assert d.execute_script("return document.querySelectorAll('section.group').length") <= groups
        d.execute_script("const s = document.getElementById('radius'); s.value = 0;"
                         "s.dispatchEvent(new Event('input'))")
        d.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000 and png_is_not_blank(shot)
