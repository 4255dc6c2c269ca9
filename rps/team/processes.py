"""Which processes are a server's, and what holds a port, read from /proc (Linux).

``mlflow server`` starts uvicorn, which starts its workers; if the ``mlflow server`` process dies
alone, uvicorn and the workers keep serving on the port (MLflow 3.17.2 does not tie them to it).
So a server is known by a marker in the environment of every process it started
(``RPS_SERVER_STATE=<state dir>``, inherited by uvicorn and its workers), not by one pid, and a
port is known to be free only when nothing listens on it.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterable

MARKER = "RPS_SERVER_STATE"


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def command(pid: int) -> str:
    """The process's command line (100 characters at most), or "" if it is gone or hidden."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return text if len(text) <= 100 else text[:97] + "..."


def describe(pids: Iterable[int]) -> str:
    return ", ".join(f"pid {pid} ({command(pid) or '?'})" for pid in sorted(pids))


def marked(state: Path) -> list[int]:
    """The live processes started by the server whose state folder is ``state``."""
    needle = f"\0{MARKER}={state}\0".encode()
    found = []
    for pid in _pids():
        try:
            environ = b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
            if needle in environ and _state(pid) != "Z":
                found.append(pid)
        except OSError:  # gone, or another user's process
            continue
    return found


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def listeners(port: int) -> list[int]:
    """The processes listening on ``port`` that this user may see (all of them, as root)."""
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    holders = []
    for pid in _pids() if sockets else []:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                    holders.append(pid)
                    break
            except OSError:
                continue
    return holders


def port_taken(host: str, port: int) -> bool:
    """Whether something listens on ``port`` (any address), or ``host:port`` cannot be bound."""
    if _listening_inodes(port):
        return True
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def end(pids: list[int], timeout: float = 20.0) -> list[int]:
    """SIGTERM to each process group and process, SIGKILL to what is left after ``timeout``;
    returns the pids that still live (none, unless they are another user's)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            _signal(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (pids := [p for p in pids if _alive(p)]):
            time.sleep(0.1)
        if not pids:
            return []
    return pids


def _signal(pid: int, sig: int) -> None:
    """Signal the process's group (the server's own session: its leader may be dead), then the process."""
    try:
        group = os.getpgid(pid)
        if group != os.getpgrp():  # never the caller's own group
            os.killpg(group, sig)
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    return _state(pid) not in ("?", "Z")
