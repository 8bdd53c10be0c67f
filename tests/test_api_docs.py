"""The examples of docs/api.md run as written, in order, in a copy of a small real library."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_api_examples_run(work, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(work)
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, code in enumerate(blocks):
            try:
                exec(compile(code, f"docs/api.md block {i + 1}", "exec"), ns)
            except Exception as e:  # name the block that broke
                raise AssertionError(f"docs/api.md block {i + 1} failed: {type(e).__name__}: {e}\n{code}") from e
    text = out.getvalue()
    assert "videos/red_circle/clip_000.mp4" in text and "keep" in text
    assert ns["rep"].skipped == 12 and ns["h"].n == 11
