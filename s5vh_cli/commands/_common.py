"""What every subcommand shares: consoles, the rich progress sink, JSON output."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console

from ..progress import Progress

console = Console()
err_console = Console(stderr=True)


class RichProgressSink(Progress):
    """Renders core progress on stderr so that stdout stays clean for tables and JSON.

    On a terminal: a rich progress bar. Anywhere else (a log file, a pipe, CI): one plain line every
    ``PLAIN_EVERY`` seconds and one when the phase ends, so a log shows progress without control codes.
    """

    PLAIN_EVERY = 5.0

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
        self._task = self._bar.add_task(task, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        if self._plain is not None:
            p = self._plain
            p["done"] += n
            p["info"] = text or p["info"]
            now = time.perf_counter()
            if now - p["last"] >= self.PLAIN_EVERY:
                p["last"] = now
                self._plain_line()
            return
        if self._bar is None:
            return
        self._bar.update(self._task, advance=n, info=text)

    def _plain_line(self, final: bool = False) -> None:
        p = self._plain
        of = f"/{p['total']}" if p["total"] else ""
        took = time.perf_counter() - self._t0
        end = " done" if final else ""
        err_console.print(f"{p['task']}: {p['done']}{of}{end} ({took:.0f} s) {p['info']}".rstrip(), highlight=False,
                          markup=False, soft_wrap=True)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        (self._bar.console if self._bar else err_console).print(message, highlight=False, markup=False)

    def finish(self) -> None:
        if self._plain is not None:
            if time.perf_counter() - self._t0 >= 1.0:  # short phases stay silent in logs
                self._plain_line(final=True)
            self._plain = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def show_path(p: str) -> str:
    """A path for people: relative to the working folder when that is shorter, printable whatever its bytes."""
    import os

    from ..artifacts import display_path

    if not p:
        return p
    try:
        rel = os.path.relpath(p)
    except ValueError:
        rel = p
    return display_path(rel if len(rel) < len(p) else p)


def video_label(vid: str, path: str) -> str:
    """One name for a video in a table: its path (shortened), with the id only when the path does not end in it."""
    if not path:
        return vid
    shown = show_path(path)
    return shown if not vid or path.replace("\\", "/").endswith(vid) else f"{shown} (id {vid})"
