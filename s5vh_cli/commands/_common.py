"""What every subcommand shares: consoles, the rich progress sink, JSON output."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from ..progress import Progress

console = Console()
err_console = Console(stderr=True)


class RichProgressSink(Progress):
    """Renders core progress on stderr so that stdout stays clean for tables and JSON."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bar: RichProgress | None = None
        self._task = None
        self._t0 = 0.0

    def start(self, task: str, total: int | None = None) -> None:
        self.finish()
        self._t0 = time.perf_counter()
        if self.quiet:
            return
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=err_console, transient=False, disable=not err_console.is_terminal and False,
        )
        self._bar.start()
        self._task = self._bar.add_task(task, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._bar is None:
            return
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        self._bar.update(self._task, advance=n, info=text)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        (self._bar.console if self._bar else err_console).print(message, highlight=False, markup=False)

    def finish(self) -> None:
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
