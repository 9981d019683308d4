"""The training control plane without Spark: request signing and its checks, the JSON control messages, the
driver's control server (a real one on loopback) with signed and forged requests, the rendezvous proxy's own-process
rule, and the tf-mwms bind shim. The real two-rank trainings under forged requests are in test_sockets.py."""

from __future__ import annotations

import http.client
import math
import pickle
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.training import control
from pipelines.training.driver import ControlChannel
from pipelines.training.remote.backends import BIND_ADDRESS_ENV, bind_shim
from pipelines.training.remote.proxy import SigningProxy, tcp_inode
from pipelines.training.spec import ABORT, ATTEMPT, ATTEMPT_NO, ERROR, PROGRESS, STARTED, WorkerSpec
from tests.support.logs import logged

SECRET = b"k" * 32


def test_a_signed_request_passes_once_and_forgeries_are_refused() -> None:
    verifier = control.Verifier(SECRET)
    body = b'{"epoch": 0, "attempt": 0}'
    headers = control.signed_headers(SECRET, "PUT", "/progress/0", body)
    nonce, signature = headers[control.NONCE], headers[control.SIGNATURE]
    verifier.check("PUT", "/progress/0", nonce, signature, body)

    def reason(method: str, path: str, nonce: str | None, signature: str | None, body: bytes) -> str:
        with pytest.raises(control.Refused) as refused:
            verifier.check(method, path, nonce, signature, body)
        return str(refused.value)

    assert reason("PUT", "/progress/0", nonce, signature, body) == "replayed"
    assert reason("PUT", "/progress/0", None, None, body) == "unsigned"
    assert reason("PUT", "/progress/0", nonce, None, body) == "unsigned"
    fresh = control.signed_headers(SECRET, "PUT", "/progress/0", body)
    n, s = fresh[control.NONCE], fresh[control.SIGNATURE]
    assert reason("PUT", "/progress/0", n, s, body + b" ") == "bad signature"  # body tampered
    assert reason("PUT", "/attempt/0", n, s, body) == "bad signature"  # another scope
    assert reason("GET", "/progress/0", n, s, body) == "bad signature"  # another method
    assert reason("PUT", "/progress/0", n, "ü" * 64, body) == "bad signature"  # not even hex
    other = control.signed_headers(b"o" * 32, "PUT", "/progress/0", body)  # another key
    assert reason("PUT", "/progress/0", other[control.NONCE], other[control.SIGNATURE], body) == "bad signature"
    verifier.check("PUT", "/progress/0", n, s, body)  # refusals did not use up the genuine request's nonce

    answer = control.answer_signature(SECRET, n, 200, b"1")
    assert answer != control.answer_signature(SECRET, n, 404, b"1")
    assert answer != control.answer_signature(SECRET, n, 200, b"2")
    assert answer != control.answer_signature(SECRET, nonce, 200, b"1")
    spec = WorkerSpec("horovod", {}, 1, 1, 1, None, None, None, "/tmp/c", None, secret=SECRET)
    for shown in (repr(verifier), repr(spec)):
        assert SECRET.decode() not in shown and SECRET.hex() not in shown


MESSAGES = [
    (ATTEMPT, {"hosts": ["127.0.0.1", "10.0.0.2"]}),
    (ATTEMPT_NO, 2),
    (ATTEMPT_NO, ABORT),
    (STARTED, {"attempt": 1, "initial_epoch": 2, "checkpoint_epoch": 1}),
    (STARTED, {"attempt": 0, "initial_epoch": 0, "checkpoint_epoch": None}),
    (PROGRESS, {"epoch": 3, "loss": 0.41, "auc": 0.8, "val_loss": 0.45, "val_auc": 0.79, "lr": 0.002,
                "epoch_train_seconds": 1.5, "attempt": 1}),
    (ERROR, "rank 1 (barrier task 1, attempt 0, host 127.0.0.1) failed with exit code 17:\nTraceback ..."),
]


@pytest.mark.parametrize(("scope", "message"), MESSAGES, ids=[f"{s}-{i}" for i, (s, _) in enumerate(MESSAGES)])
def test_every_control_message_round_trips_as_json(scope: str, message: object) -> None:
    body = control.encode(message)
    assert body.decode().isascii() or scope == ERROR
    assert control.decode(scope, body) == message


def test_control_messages_of_another_shape_or_not_json_are_refused() -> None:
    assert math.isnan(control.decode(PROGRESS, control.encode({"epoch": 0, "attempt": 0, "loss": math.nan}))["loss"])
    bad = [(PROGRESS, pickle.dumps({"epoch": 0, "attempt": 0})), (PROGRESS, b'{"attempt": 0}'),
           (PROGRESS, b'{"epoch": 0, "attempt": 0, "loss": "x"}'), (PROGRESS, b'{"epoch": true, "attempt": 0}'),
           (ATTEMPT, b'{"hosts": "127.0.0.1"}'), (ATTEMPT, b"[]"), (ATTEMPT_NO, b"true"), (ATTEMPT_NO, b'"1"'),
           (STARTED, b'{"attempt": 0, "initial_epoch": 0, "checkpoint_epoch": "0"}'), (ERROR, b"17"),
           (ERROR, b"\xff\xfe")]
    for scope, body in bad:
        with pytest.raises(ValueError):
            control.decode(scope, body)


@pytest.fixture
def channel() -> Iterator[tuple[ControlChannel, int]]:
    """The driver's control server on loopback (two workers, three epochs), as a launch starts it."""
    cancelled: list[str] = []
    chan = ControlChannel(2, 2, 3, True, cancelled.append)
    port = chan.start()
    yield chan, port
    chan.stop()


def _raw_status(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


def test_control_server_takes_signed_json_and_refuses_the_rest(channel: tuple[ControlChannel, int]) -> None:
    chan, port = channel

    def call(method: str, path: str, body: bytes = b"", secret: bytes | None = None) -> tuple[int, bytes]:
        return control.call("127.0.0.1", port, secret or chan.secret, method, path, body)

    assert call("PUT", "/attempt/7", control.encode({"hosts": ["127.0.0.1", "127.0.0.1"]}))[0] == 200
    status, body = call("GET", "/attempt-no/7")
    assert status == 200 and control.decode(ATTEMPT_NO, body) == 0
    progress = {"epoch": 0, "loss": 0.5, "attempt": 0}
    assert call("PUT", "/progress/0", control.encode(progress))[0] == 200 and chan.last_progress == progress
    assert call("PUT", "/global/0", b"\x00gloo\xff")[0] == 200  # a rendezvous value: opaque bytes, kept as sent
    assert call("GET", "/global/0") == (200, b"\x00gloo\xff")
    assert call("GET", "/global/1")[0] == 404
    assert call("DELETE", "/global/0")[0] == 200
    assert call("PUT", "/progress/0", b'{"epoch": "x"}')[0] == 400  # signed, but not a progress message

    with logged() as warnings:
        with pytest.raises(control.Refused, match="not signed by the driver"):  # 403, unsigned: not an answer to us
            call("PUT", "/progress/0", control.encode(progress), secret=b"x" * 32)
        assert _raw_status(port, "PUT", "/error/7-1", pickle.dumps("payload")) == 403
        assert _raw_status(port, "GET", "/attempt-no/7") == 403
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # too long: answered unread
            s.sendall(f"PUT /global/0 HTTP/1.1\r\nContent-Length: {control.MAX_BODY + 1}\r\n\r\n".encode())
            assert s.recv(64).split()[1] == b"413"
    assert chan.errors == [] and chan.last_progress == progress
    assert len(warnings) == 4 and all("control channel refused" in w and "127.0.0.1:" in w for w in warnings)
    assert ["bad signature" in w for w in warnings] == [True, False, False, False]
    assert "'/error/7-1'" in warnings[1] and "unsigned" in warnings[1]


def test_rendezvous_proxy_signs_for_its_own_process_only(channel: tuple[ControlChannel, int],
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    chan, port = channel
    proxy = SigningProxy("127.0.0.1", port, chan.secret)
    proxy_port = proxy.start()
    try:
        assert _raw_status(proxy_port, "PUT", "/global/0", b"rank 0's address") == 200  # as gloo's C++ client
        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
        conn.request("GET", "/global/0")
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, b"rank 0's address")
        conn.close()
        assert _raw_status(proxy_port, "GET", "/global/1") == 404

        other = ("import socket, sys\n"
                 "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
                 "s.sendall(b'PUT /global/1 HTTP/1.1\\r\\nContent-Length: 1\\r\\n\\r\\nx')\n"
                 "print(repr(s.recv(100)))\n")
        out = subprocess.run([sys.executable, "-c", other, str(proxy_port)], capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.strip() == "b''", out  # closed unanswered
        assert control.call("127.0.0.1", port, chan.secret, "GET", "/global/1")[0] == 404  # nothing was forwarded
    finally:
        proxy.stop()
    assert "refused a connection from 127.0.0.1:" in capfd.readouterr().out


def test_tcp_inode_reads_the_connecting_socket_row() -> None:
    table = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
             "   0: 0100007F:A2B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n"
             "   1: 0100007F:1F90 0100007F:A2B3 01 00000000:00000000 00:00000000 00000000     0        0 222 1\n"
             "   2: 0100007F:A2B3 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 333 1\n")
    assert tcp_inode(table, ("127.0.0.1", 0xA2B3), ("127.0.0.1", 0x1F90)) == 333  # the peer's side
    assert tcp_inode(table, ("127.0.0.1", 0x1F90), ("127.0.0.1", 0xA2B3)) == 222
    assert tcp_inode(table, ("127.0.0.2", 0xA2B3), ("127.0.0.1", 0x1F90)) is None


def test_bind_shim_moves_wildcard_binds_to_the_named_address() -> None:
    probe = ("import socket\n"
             "for family, address in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::'),"
             " (socket.AF_INET, '127.0.0.2')):\n"
             "    s = socket.socket(family)\n"
             "    try:\n"
             "        s.bind((address, 0)); print(s.getsockname()[0])\n"
             "    except OSError as e:\n"
             "        print(e.errno)\n")
    shim = bind_shim()

    def binds(address: str | None) -> list[str]:
        env = {"LD_PRELOAD": str(shim), **({BIND_ADDRESS_ENV: address} if address is not None else {})}
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True,
                              timeout=60).stdout.split()

    assert binds("127.0.0.1") == ["127.0.0.1", "::ffff:127.0.0.1", "127.0.0.2"]
    assert binds("::1") == [str(99), "::1", "127.0.0.2"]  # EADDRNOTAVAIL: an IPv4 socket cannot take ::1
    assert binds("not-an-address") == ["99", "99", "127.0.0.2"]
    assert binds(None) == ["0.0.0.0", "::", "127.0.0.2"]
    assert Path(shim).parent == Path(sys.prefix) / "lib"
    with socket.socket() as s:  # the shim is not in this process
        s.bind(("0.0.0.0", 0))
        assert s.getsockname()[0] == "0.0.0.0"
