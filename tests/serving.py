"""Start `s5vh serve` in a child process on 127.0.0.1 and a free port, wait until it answers, stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    token: str = ""

    def client(self, token: str | None = None, timeout: float = 300.0) -> httpx.Client:
        tok = self.token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(index: Path, *args, token: str = "", log: Path, wait: float = 600.0) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.pop("S5VH_TOKEN", None)
    if token:
        env["S5VH_TOKEN"] = token
    env.setdefault("OMP_NUM_THREADS", "1")
    fh = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "s5vh_cli", "serve", str(index), "--host", "127.0.0.1",
                             "--port", str(port), *map(str, args)], stdout=fh, stderr=subprocess.STDOUT, env=env)
    srv = Server(f"http://127.0.0.1:{port}", proc, log, token)
    t0 = time.monotonic()
    with srv.client() as c:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}: {srv.output()}")
            try:
                if c.get("/api/health", timeout=5).status_code in (200, 401):
                    return srv
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > wait:
                stop(srv)
                raise AssertionError(f"server did not answer within {wait} s: {srv.output()}")
            time.sleep(0.2)


def stop(srv: Server) -> None:
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGINT)
        try:
            srv.proc.wait(20)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()


@contextlib.contextmanager
def serving(index: Path, *args, token: str = "", log: Path, wait: float = 600.0) -> Iterator[Server]:
    srv = start(index, *args, token=token, log=log, wait=wait)
    try:
        yield srv
    finally:
        stop(srv)
