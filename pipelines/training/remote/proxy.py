"""A loopback signing proxy for Horovod's gloo rendezvous, inside the training process.

Horovod's C++ HTTPStore (in hvd.init() and hvd.shutdown()) sends plain GET/PUT/DELETE requests to
HOROVOD_GLOO_RENDEZVOUS_ADDR:PORT and cannot sign them. So the training process starts this proxy on 127.0.0.1 (a
port the OS picks) and points those two variables at it just before hvd.init(): the proxy signs each request with
the launch's secret (pipelines.training.control), forwards it to the driver's control server and relays the
driver's answer once its signature checks. Any local user can connect to a loopback port, so the proxy serves only
connections its own process made: the connecting socket's inode (its row in /proc/net/tcp) must be one of this
process's sockets (/proc/self/fd). It closes others unanswered and says so in the process's log.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipelines.training import control

LOOPBACK = "127.0.0.1"


def _hex_address(address: tuple[str, int]) -> str:
    """An IPv4 address as /proc/net/tcp writes it: the address's 32 bits in host order, then the port, in hex."""
    return f"{struct.unpack('=I', socket.inet_aton(address[0]))[0]:08X}:{address[1]:04X}"


def tcp_inode(table: str, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the socket whose row of a /proc/net/tcp table connects `local` to `remote`, or None."""
    want = (_hex_address(local), _hex_address(remote))
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and (fields[1].upper(), fields[2].upper()) == want and fields[9] != "0":
            return int(fields[9])
    return None


def socket_inodes(fd_dir: str = "/proc/self/fd") -> set[int]:
    """Inodes of the sockets this process holds open."""
    out = set()
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            out.add(int(target[len("socket:["):-1]))
    return out


def own_connection(peer: tuple[str, int], listening: tuple[str, int]) -> bool:
    """Whether the TCP connection from `peer` to our `listening` address was made by a socket of this process."""
    try:
        table = Path("/proc/net/tcp").read_text()
    except OSError:  # no /proc (not Linux): the peer cannot be told apart, so it is not served
        return False
    inode = tcp_inode(table, peer, listening)
    return inode is not None and inode in socket_inodes()


class _Forward(BaseHTTPRequestHandler):
    server: SigningProxy
    timeout = 30

    def do_GET(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, data = self.server.forward(self.command, self.path, body)
        except (OSError, control.Refused) as e:
            print(f"rendezvous proxy: {self.command} {self.path} failed: {e}", flush=True)
            status, data = 502, b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one line per rendezvous request would flood the process's log."""


class SigningProxy(ThreadingHTTPServer):
    """The proxy: `start()` returns its loopback port; `stop()` closes it."""

    daemon_threads = True

    def __init__(self, driver_host: str, driver_port: int, secret: bytes) -> None:
        super().__init__((LOOPBACK, 0), _Forward)
        self.driver = (driver_host, driver_port)
        self._secret = secret
        self._thread: threading.Thread | None = None

    def forward(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Sign the request, send it to the driver, return its verified answer."""
        return control.call(self.driver[0], self.driver[1], self._secret, method, path, body)

    def verify_request(self, request: object, client_address: tuple[str, int]) -> bool:  # type: ignore[override]
        if own_connection(client_address, self.server_address[:2]):
            return True
        print(f"rendezvous proxy: refused a connection from {client_address[0]}:{client_address[1]} "
              "(not made by this process)", flush=True)
        return False

    def start(self) -> int:
        self._thread = threading.Thread(target=self.serve_forever, name="rendezvous-proxy", daemon=True)
        self._thread.start()
        return int(self.server_address[1])

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()
