"""What every subcommand shares: consoles, the rich progress sink, JSON output, and ``printable``, which every
printer uses for text that came from outside (ids, paths, file names, error messages)."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from typing import Any

from rich.console import Console

from ..progress import Progress

console = Console()
err_console = Console(stderr=True)


# C0 and C1 controls, DEL, and the invisible bidirectional / line-separator marks that reorder or hide text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\x1b": "\\e"}


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def printable(text: Any, keep_newlines: bool = False) -> str:
    """``text`` made safe for a terminal: control characters (clear screen, OSC 8 links, window titles, bare
    ESC/CSI, C1 controls) and bidi overrides become visible escapes (``\\e[2J``, ``\\x9b``, ``\\u202e``); bytes of
    a name that are not UTF-8 (surrogate escapes) become ``\\xNN``. Newlines are kept only when asked."""
    s = str(text)
    if any("\ud800" <= ch <= "\udfff" for ch in s):
        s = "".join(f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else
                    ("\ufffd" if "\ud800" <= ch <= "\udfff" else ch) for ch in s)
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(lambda m: _escape_char(m.group()), line) for line in s.split("\n"))
    return _UNSAFE.sub(lambda m: _escape_char(m.group()), s)


def markup_safe(text: Any) -> str:
    """``printable`` text that rich will not read as markup (for table titles and markup-enabled prints)."""
    from rich.markup import escape

    return escape(printable(text))


class RichProgressSink(Progress):
    """Renders core progress on stderr so that stdout stays clean for tables and JSON.

    On a terminal: a rich progress bar. Anywhere else (a log file, a pipe, CI): one plain line every
    ``PLAIN_EVERY`` seconds and one when the phase ends, so a log shows progress without control codes.
    """

    PLAIN_EVERY = 5.0  # seconds; S5VH_PROGRESS_SECONDS overrides

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bar: Any = None  # a rich.progress.Progress while a bar is shown
        self._task = None
        self._t0 = 0.0
        self._plain: dict[str, Any] | None = None

    def start(self, task: str, total: int | None = None) -> None:
        self.finish()
        self._t0 = time.perf_counter()
        if self.quiet:
            return
        if not err_console.is_terminal:
            self._plain = {"task": task, "total": total, "done": 0, "info": "", "last": self._t0}
            return
        # imported here, not at start-up: every command line (and --help) would pay for it
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=err_console, transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(markup_safe(task), total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        if self._plain is not None:
            p = self._plain
            p["done"] += n
            p["info"] = text or p["info"]
            now = time.perf_counter()
            if now - p["last"] >= _plain_every(self.PLAIN_EVERY):
                p["last"] = now
                self._plain_line()
            return
        if self._bar is None:
            return
        self._bar.update(self._task, advance=n, info=markup_safe(text))

    def _plain_line(self, final: bool = False) -> None:
        p = self._plain
        of = f"/{p['total']}" if p["total"] else ""
        took = time.perf_counter() - self._t0
        end = " done" if final else ""
        err_console.print(printable(f"{p['task']}: {p['done']}{of}{end} ({took:.0f} s) {p['info']}".rstrip()),
                          highlight=False, markup=False, soft_wrap=True)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        (self._bar.console if self._bar else err_console).print(printable(message), highlight=False, markup=False)

    def finish(self) -> None:
        if self._plain is not None:
            if time.perf_counter() - self._t0 >= min(1.0, _plain_every(self.PLAIN_EVERY)):  # short phases: silent
                self._plain_line(final=True)
            self._plain = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _plain_every(default: float) -> float:
    import os

    try:
        return max(0.0, float(os.environ.get("S5VH_PROGRESS_SECONDS", default)))
    except ValueError:
        return default


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def json_safe(obj: Any) -> Any:
    """``obj`` with every string valid Unicode (bytes of names that are not UTF-8, carried as surrogate escapes,
    become U+FFFD as in artifacts.display_path) and non-finite floats as null, so that any JSON parser takes it."""
    if isinstance(obj, str):
        return _valid_unicode(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_valid_unicode(str(k)): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalars
        return json_safe(obj.item())
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    return _valid_unicode(str(obj))


def _valid_unicode(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape" if _only_escapes(s) else "surrogatepass").decode("utf-8", "replace")


def _only_escapes(s: str) -> bool:
    return all(not "\ud800" <= ch <= "\udfff" or "\udc80" <= ch <= "\udcff" for ch in s)


def print_json(obj: Any) -> None:
    """One JSON document on one line of stdout, always UTF-8 and always parseable (see json_safe)."""
    text = json.dumps(json_safe(obj), ensure_ascii=False) + "\n"
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (redirect_stdout to StringIO)
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8"))  # JSON is UTF-8 (RFC 8259), whatever the locale says
    buffer.flush()




def show_path(p: str) -> str:
    """A path for people: relative to the working folder when that is shorter, printable whatever its bytes."""
    import os

    if not p:
        return p
    try:
        rel = os.path.relpath(p)
    except ValueError:
        rel = p
    return printable(rel if len(rel) < len(p) else p)


def video_label(vid: str, path: str) -> str:
    """One name for a video in a table: its path (shortened), with the id only when the path does not end in it."""
    if not path:
        return printable(vid)
    shown = show_path(path)
    return shown if not vid or path.replace("\\", "/").endswith(vid) else f"{shown} (id {printable(vid)})"
