"""The training control channel's protocol, used on both sides: signed requests, signed answers, JSON messages.

Every request to the driver's control server (its own scopes and the gloo rendezvous scopes alike) carries
`X-Pipeline-Nonce` (random, used once) and `X-Pipeline-Signature`, an HMAC-SHA256 with the launch's secret over
the method, path, nonce and the body's SHA-256, as Horovod's own driver and task services sign with a secret key.
The server refuses (403) unsigned, wrongly signed and replayed requests (a nonce it has seen before). Its answer is
signed over the request's nonce, the status and the body, so a client takes no answer the driver did not make for
that very request. The secret is made per training launch (`new_secret`); it reaches the tasks inside the task
closure and the training process in its private task file, never a command line, an environment variable or a
log. Nothing received is ever unpickled: control messages are JSON, checked against their scope's shape (`decode`).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.training.spec import ATTEMPT, ATTEMPT_NO, ERROR, PROGRESS, STARTED

NONCE = "X-Pipeline-Nonce"
SIGNATURE = "X-Pipeline-Signature"
MAX_BODY = 1 << 20  # bytes of one request: control messages and rendezvous values are far smaller
TIMEOUT_S = 30.0


class Refused(Exception):
    """A request or an answer without a valid signature; the message says why (never the secret)."""


def new_secret() -> bytes:
    """A fresh secret for one training launch."""
    return secrets.token_bytes(32)


def _mac(secret: bytes, *parts: str | bytes) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        mac.update(len(data).to_bytes(8, "big") + data)  # length-prefixed: no two part lists sign alike
    return mac.hexdigest()


def request_signature(secret: bytes, method: str, path: str, nonce: str, body: bytes) -> str:
    return _mac(secret, "request", method, path, nonce, hashlib.sha256(body).digest())


def answer_signature(secret: bytes, nonce: str, status: int, body: bytes) -> str:
    return _mac(secret, "answer", nonce, str(status), hashlib.sha256(body).digest())


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def signed_headers(secret: bytes, method: str, path: str, body: bytes) -> dict[str, str]:
    """The headers that authenticate one request (a fresh nonce and its signature)."""
    nonce = secrets.token_hex(16)
    return {NONCE: nonce, SIGNATURE: request_signature(secret, method, path, nonce, body)}


@dataclass
class Verifier:
    """The server's check of each request: a valid signature and a nonce not seen before. Nonces are remembered for
    the server's life (one training launch); only correctly signed requests add one."""

    secret: bytes = field(repr=False)
    _seen: set[str] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, method: str, path: str, nonce: str | None, signature: str | None, body: bytes) -> None:
        """Return if the request is authentic and new; raise Refused("unsigned" | "bad signature" | "replayed")."""
        if not nonce or not signature:
            raise Refused("unsigned")
        if not _same(signature, request_signature(self.secret, method, path, nonce, body)):
            raise Refused("bad signature")
        with self._lock:
            if nonce in self._seen:
                raise Refused("replayed")
            self._seen.add(nonce)

    def sign_answer(self, nonce: str, status: int, body: bytes) -> str:
        return answer_signature(self.secret, nonce, status, body)


def call(host: str, port: int, secret: bytes, method: str, path: str, body: bytes = b"",
         timeout: float = TIMEOUT_S) -> tuple[int, bytes]:
    """One signed request to the driver's control server; its answer (status, body) once the answer's signature
    checks. Raises Refused for an answer the driver did not sign, OSError when the server cannot be reached."""
    headers = signed_headers(secret, method, path, body)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
    finally:
        conn.close()
    signature = answer.getheader(SIGNATURE) or ""
    if not _same(signature, answer_signature(secret, headers[NONCE], answer.status, data)):
        raise Refused(f"the answer ({answer.status}) to {method} {path} is not signed by the driver")
    return answer.status, data


def _ints(value: dict[str, Any], *keys: str) -> bool:
    return all(type(value.get(k)) is int for k in keys)


def _number(value: Any) -> bool:
    return type(value) in (int, float)


_SHAPES: dict[str, Callable[[Any], bool]] = {
    ATTEMPT: lambda v: isinstance(v, dict) and isinstance(v.get("hosts"), list)
    and all(isinstance(h, str) for h in v["hosts"]),
    ATTEMPT_NO: lambda v: type(v) is int,
    STARTED: lambda v: isinstance(v, dict) and _ints(v, "attempt", "initial_epoch")
    and (v.get("checkpoint_epoch") is None or type(v["checkpoint_epoch"]) is int),
    PROGRESS: lambda v: isinstance(v, dict) and _ints(v, "epoch", "attempt") and all(map(_number, v.values())),
    ERROR: lambda v: isinstance(v, str),
}


def encode(value: Any) -> bytes:
    """A control message's body: JSON."""
    return json.dumps(value).encode()


def decode(scope: str, body: bytes) -> Any:
    """The control message of `scope` in `body`; ValueError when it is not JSON of that scope's shape."""
    value = json.loads(body)
    if not _SHAPES[scope](value):
        raise ValueError(f"not a {scope} message")
    return value
