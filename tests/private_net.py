"""Run a test's servers where nothing outside can reach them.

Ray's daemons and torchrun's rendezvous store listen on every interface whatever address they are given, so
the tests that start them run their command inside a new user and network namespace (``unshare -rn``) in
which only the loopback interface exists. Where user namespaces are not allowed the tests are skipped with
the reason, never run with open ports.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest


@functools.lru_cache(maxsize=1)
def _prefix() -> tuple[str, ...] | None:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return None
    probe = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=30)
    if probe.returncode:
        return None
    return ("unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh")


def private_net(cmd: list[str]) -> list[str]:
    """``cmd`` run in a private network namespace with only loopback up (skips the test where impossible)."""
    prefix = _prefix()
    if prefix is None:
        pytest.skip("cannot make a private network namespace (unshare -rn); the test would open ports on "
                    "every interface")
    return [*prefix, *cmd]


def marked_processes(mark: str) -> list[int]:
    """Processes whose environment holds S5VH_TEST_MARK=<mark>: what a test started and must have stopped."""
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if f"S5VH_TEST_MARK={mark}".encode() in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def processes_left(mark: str, seconds: float = 20.0) -> list[int]:
    """``marked_processes(mark)`` after waiting up to ``seconds`` for them to exit (daemons stop a moment after
    the command that started them)."""
    import time

    for _ in range(int(seconds / 0.2)):
        left = marked_processes(mark)
        if not left:
            return left
        time.sleep(0.2)
    return marked_processes(mark)
