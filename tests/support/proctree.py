"""Watch a process tree from the outside with psutil: every process seen under a root pid (so orphans can be
found after the root exits) and every TCP socket any of them listens on."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field

import psutil

from pipelines.training.remote.task import WORKER_MODULE


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1, how the JVM's dual-stack sockets show)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def other_ipv4() -> str | None:
    """An IPv4 address of this host beyond loopback (what an edge node may export as SPARK_LOCAL_IP); None when
    there is none."""
    return next((a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                 if a.family == socket.AF_INET and not is_loopback(a.address)), None)


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket: who owns it and where it binds."""

    pid: int
    cmdline: str
    ip: str
    port: int


def tree(root: int) -> list[psutil.Process]:
    """The root process and all its descendants (empty once the root is gone)."""
    try:
        proc = psutil.Process(root)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rank_processes(root: int) -> dict[int, psutil.Process]:
    """The training processes (python -m pipelines.training.remote.worker <workdir>) under `root`, by rank; the
    rank is in the work folder's name the barrier task gives it (train-rank<N>-...)."""
    out: dict[int, psutil.Process] = {}
    for p in tree(root):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if WORKER_MODULE in cmd:
            name = cmd[-1].rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("train-rank"):
                out[int(name[len("train-rank"):].split("-", 1)[0])] = p
    return out


@dataclass
class TreeWatcher:
    """Samples the tree under `root` every `interval` seconds in a thread: processes (pid, create time, command
    line) and listening sockets."""

    root: int
    interval: float = 0.25
    seen: dict[tuple[int, float], str] = field(default_factory=dict)
    last_seen: dict[tuple[int, float], float] = field(default_factory=dict)  # epoch seconds of the last sample
    listeners: set[Listener] = field(default_factory=set)
    tcp_pids: set[int] = field(default_factory=set)  # processes seen holding any TCP socket
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeWatcher:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        for p in tree(self.root):
            try:
                cmd = " ".join(p.cmdline())
                key = (p.pid, p.create_time())
                self.seen[key] = cmd or self.seen.get(key, "")  # a zombie's command line reads empty
                self.last_seen[key] = time.time()
                conns = p.net_connections(kind="tcp")
            except psutil.Error:
                continue
            if conns:
                self.tcp_pids.add(p.pid)
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    self.listeners.add(Listener(p.pid, cmd[:160], c.laddr.ip, c.laddr.port))

    def alive(self) -> list[str]:
        """Processes seen under the root that still run (same pid and start time), with their command lines."""
        out = []
        for (pid, created), cmd in self.seen.items():
            try:
                if psutil.Process(pid).create_time() == created:
                    out.append(f"{pid} {cmd[:200]}")
            except psutil.NoSuchProcess:
                continue
        return out

    def wait_gone(self, timeout: float) -> list[str]:
        """Wait up to `timeout` s for every process seen to exit; the ones still alive."""
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left
