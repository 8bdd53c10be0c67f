"""A private Milvus standalone server for the tests and the benchmark (the PyPI wheel `milvus==2.3.5`).

Milvus listens on nine ports on every interface, so the server runs inside its own network, PID and mount
namespaces (`unshare`): its ports exist only there, and every process it starts dies with the namespace. The
one way in is a TCP port on 127.0.0.1 of the caller's namespace: the caller opens the listening socket, the
namespace's first process inherits it and relays each connection to Milvus's gRPC port inside.

The first process also takes commands on its stdin, one per line: ``kill`` (SIGKILL Milvus, as a crash),
``start`` (start it again on the same data folder), ``rss`` (Milvus's resident memory in bytes), ``stop``
(SIGINT, which Milvus handles as a clean shutdown; SIGTERM to the wrapper would leave the server running).
End of input means ``stop``.

    with PrivateMilvus(tmp_dir) as m:        # or m = PrivateMilvus(d); m.start(); ...; m.stop()
        client = MilvusClient(uri=m.uri)

`.ci/run` sets S5VH_REQUIRE_MILVUS=1, so in CI a server that cannot start fails the tests instead of skipping
them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# Milvus's proxy (gRPC) port inside the namespace: 19530, unless a restart finds it still held and the wrapper
# picks the next free one; updated after every start
_UPSTREAM = [19530]
START_TIMEOUT_S = 240
SESSION_TTL_S = 10
GRACEFUL_STOP_S = 3


def _unshare_cmd() -> list[str]:
    cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if os.geteuid() != 0:  # an unprivileged user gets the namespaces through a user namespace
        cmd[1:1] = ["--user", "--map-root-user"]
    return cmd


def why_unavailable() -> str | None:
    """Why a private server cannot run here (None when it can)."""
    for mod, pkg in (("milvus", "milvus==2.3.5 (the server)"), ("pymilvus", "pymilvus")):
        try:
            __import__(mod)
        except ImportError:
            return f"{pkg} is not installed (pip install -e '.[test,milvus]')"
    if not sys.platform.startswith("linux"):
        return "private Milvus servers need Linux namespaces"
    if not shutil.which("unshare"):
        return "unshare (util-linux) not found"
    try:
        r = subprocess.run([*_unshare_cmd(), "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if r.returncode != 0:
        return f"cannot create namespaces here: {r.stderr.strip()[:200]}"
    return None


class PrivateMilvus:
    """A Milvus standalone server in private namespaces, reachable only at ``uri`` (127.0.0.1)."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = Path(data_dir)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.start_seconds = 0.0  # launch to ready, once ready
        self._t0 = 0.0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the server without waiting for it (``wait_ready`` waits)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        log = open(self.data_dir / "private-milvus.log", "ab")  # noqa: SIM115 - kept open for the child
        self._t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [*_unshare_cmd(), sys.executable, os.path.abspath(__file__), "--inner", str(self.data_dir),
                 str(listener.fileno())],
                pass_fds=(listener.fileno(),), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                bufsize=1, start_new_session=True)
        finally:
            listener.close()  # the child holds its own copy
            log.close()

    def wait_ready(self) -> str:
        if not self.start_seconds:
            self._expect("ready", START_TIMEOUT_S)
            self.start_seconds = time.monotonic() - self._t0
        return self.uri

    def _send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _expect(self, word: str, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = box[0].strip() if box else ""
        if not line.startswith(word):
            self.kill()
            raise RuntimeError(f"private Milvus: expected {word!r}, got {line or 'nothing'!r} "
                               f"(log: {self.data_dir / 'private-milvus.log'}, "
                               f"{self.data_dir / 'logs' / 'milvus-stdout.log'})")
        return line

    def crash(self) -> None:
        """SIGKILL the server process, as a crash or an OOM kill would."""
        self._send("kill")
        self._expect("killed", 60)

    def restart(self) -> None:
        self._send("start")
        self._expect("ready", START_TIMEOUT_S)

    def rss_bytes(self) -> int:
        self._send("rss")
        return int(self._expect("rss", 30).split()[1])

    def stop(self, timeout: float = 90) -> None:
        """SIGINT to Milvus and wait for its clean exit; past ``timeout`` everything in the namespace is killed."""
        if self.proc is None:
            return
        try:
            self._send("stop")
            self.proc.wait(timeout=timeout)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the unshare process: --kill-child then kills the namespace's first process, and with it every
        process of the namespace."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        self.proc = None

    def __enter__(self) -> PrivateMilvus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------------------
# inside the namespace
# ----------------------------------------------------------------------------------------------------------
def _loopback_up() -> None:
    """`ip link set lo up` without needing iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP."""
    import fcntl
    import struct

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, req))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 0x1, b""))
    finally:
        s.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (dst, src):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _serve_connection(client: socket.socket) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", _UPSTREAM[0]), timeout=10)
        upstream.settimeout(None)
    except OSError:
        client.close()
        return
    for s in (client, upstream):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _relay(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve_connection, args=(conn,), daemon=True).start()


def _inner(data_dir: str, fd: int) -> None:
    from milvus import MilvusServer

    # PID 1 of a namespace ignores signals it has no handler for; the parent talks through stdin instead
    _loopback_up()
    listener = socket.socket(fileno=fd)
    threading.Thread(target=_relay, args=(listener,), daemon=True).start()
    server = MilvusServer()
    server.set_base_dir(data_dir)
    # After a crash the restarted coordinators wait for the dead process's etcd sessions to expire (30 s each
    # by default); 10 s keeps a crash-and-restart test short without expiring live sessions on a busy machine.
    server.config.set("common.session.ttl", SESSION_TTL_S)
    # On SIGINT a standalone query node waits to hand its segments to another node, which never comes, until
    # common.gracefulStopTimeout (1800 s by default) forces the exit; everything acknowledged is in the WAL
    server.config.set("common.gracefulStopTimeout", GRACEFUL_STOP_S)

    def start() -> None:
        t0 = time.monotonic()
        server.start()
        _UPSTREAM[0] = server.listen_port
        print(f"ready {time.monotonic() - t0:.2f}", flush=True)

    def halt(sig: int) -> None:
        proc = server.server_proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.server_proc = None
        for f in server.proc_fds.values():
            f.close()
        server.proc_fds.clear()

    start()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "kill":
            halt(signal.SIGKILL)
            print("killed", flush=True)
        elif cmd == "start":
            start()
        elif cmd == "rss":
            pid = server.server_proc.pid if server.server_proc else None
            rss = 0
            if pid:
                for row in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if row.startswith("VmRSS:"):
                        rss = int(row.split()[1]) * 1024
            print(f"rss {rss}", flush=True)
        elif cmd == "stop":
            break
    halt(signal.SIGINT)
    print("stopped", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--inner":
        _inner(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: python tests/milvus_server.py --inner DATA_DIR FD   (used by PrivateMilvus)")
