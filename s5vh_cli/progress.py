"""Progress reporting without printing: the core calls these methods; the CLI renders them with rich."""

from __future__ import annotations

from typing import Any


class Progress:
    """No-op progress sink. Subclass (the CLI does) to show bars and messages."""

    def start(self, task: str, total: int | None = None) -> None:
        """Begin a phase named ``task`` with ``total`` steps (None if unknown)."""

    def advance(self, n: int = 1, **info: Any) -> None:
        """``n`` more steps done; ``info`` holds live figures (loss terms, failures, frames/s...)."""

    def log(self, message: str) -> None:
        """A line the user should see (which backend was chosen, a skipped file, a summary)."""

    def finish(self) -> None:
        """End the current phase."""


NULL = Progress()


class Recorder(Progress):
    """Collects every event; handy in tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def start(self, task: str, total: int | None = None) -> None:
        self.events.append(("start", (task, total)))

    def advance(self, n: int = 1, **info: Any) -> None:
        self.events.append(("advance", (n, info)))

    def log(self, message: str) -> None:
        self.events.append(("log", message))

    def finish(self) -> None:
        self.events.append(("finish", None))

    @property
    def messages(self) -> list[str]:
        return [m for k, m in self.events if k == "log"]
