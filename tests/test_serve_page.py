"""The served page in a real headless browser: upload a clip, see the CLI's top result with its keyframes,
browse the duplicate groups; a screenshot of each is checked."""

from __future__ import annotations

import json
import shutil
import time

from browser import browser, png_is_not_blank
from library import cli, copy_library, run
from serving import serving


def _wait(d, script: str, timeout: float = 300.0):
    t0 = time.monotonic()
    while True:
        v = d.execute_script(script)
        if v:
            return v
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for: {script}\n{d.execute_script('return document.body.innerText')}")
        time.sleep(0.2)


def test_page_uploads_a_clip_and_browses_duplicates(lib, tmp_path, capsys):
    root = copy_library(lib, tmp_path / "lib")
    vids = sorted((root / "videos").rglob("*.mp4"))
    shutil.copy(vids[0], root / "videos" / "dup_a.mp4")
    shutil.copy(vids[4], root / "videos" / "dup_b.mp4")
    run("sync", root / "videos", root / "index.bin")
    clip = vids[7]
    rc, out, err = cli(capsys, "query", root / "index.bin", clip, "-k", "10", "--json")
    assert rc == 0, err
    want = json.loads(out)["queries"][0]["results"]
    with serving(root / "index.bin", "--root", root, token="page-token", log=tmp_path / "log") as srv, \
            browser(tmp_path) as d:
        d.get(srv.url + "/#token=page-token")
        _wait(d, "return document.getElementById('sub').textContent.includes('14 videos')")
        assert "page-token" not in d.current_url  # the token leaves the address bar
        d.find_element("id", "file").send_keys(str(clip))
        _wait(d, "return document.querySelectorAll('.result').length")
        rows = d.execute_script("return [...document.querySelectorAll('.result')].map(r => "
                                "[Number(r.dataset.rank), Number(r.dataset.key), r.querySelector('.dist').textContent])")
        assert [(r[0], r[1]) for r in rows] == [(h["rank"], h["key"]) for h in want]
        assert rows[0][2] == f"{want[0]['distance']} bits"
        text = d.execute_script("return document.getElementById('results').innerText")
        assert want[0]["path"] in text
        # the top result's keyframes are real decoded images
        _wait(d, "const r = document.querySelector('.result'); const im = r && r.querySelectorAll('img.thumb');"
                 "return im && im.length === 3 && [...im].every(i => i.complete && i.naturalWidth > 0)")
        shot = tmp_path / "search.png"
        d.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and png_is_not_blank(shot)
        shutil.copy(shot, tmp_path.parent / "serve_search.png")  # kept beside the test's folder to look at

        d.find_element("id", "tab-dups").click()
        frame = _wait(d, "const f = document.getElementById('dups-frame'); return f.srcdoc.length > 1000 && f")
        d.switch_to.frame(frame)
        groups = _wait(d, "return document.querySelectorAll('section.group').length")
        imgs = d.execute_script("return [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert groups >= 2 and len(imgs) >= 4 * 4 and all(imgs)
        assert "dup_b.mp4" in d.execute_script("return document.body.innerText")
        d.switch_to.default_content()
        shot = tmp_path / "dups.png"
        d.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and png_is_not_blank(shot)
        shutil.copy(shot, tmp_path.parent / "serve_dups.png")
