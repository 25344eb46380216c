"""A fault-injecting HTTP proxy on loopback, in front of the S3 test endpoint (moto's server).

Clients are pointed at the proxy as their S3 endpoint (path-style addressing: `/bucket/key`). For a
configurable share of requests it answers with a transient fault instead of forwarding:

* ``500``       500 InternalError
* ``503``       503 ServiceUnavailable
* ``slowdown``  503 SlowDown (S3's throttling answer)
* ``drop``      the connection is closed without any response
* ``truncate``  (GET only) the upstream answer's headers and half of its body, then the connection
                is closed: the client must notice the short body, not take it as the object

and for chosen keys a permanent answer: 403 AccessDenied or 404 NoSuchKey on every GET/HEAD.

`refuse_multipart=True` makes the store refuse every multipart upload the way moto 5.2.1 (the
machine's system-wide moto) does: its CompleteMultipartUpload answer is a 200 whose root element
is `CompleteMultipartUploadResponse` instead of S3's `CompleteMultipartUploadResult`; the AWS SDK
inside pyarrow reads that as an error embedded in a 200 (`AWS Error INTERNAL_FAILURE during
CompleteMultipartUpload`), and pyarrow writes every object as a multipart upload. The proxy
rewrites upstream's answer to exactly those bytes, so the refusal is the real one on the wire.

Everything else is forwarded unchanged. Counters say what was injected, per kind and per key, and
which access key ids signed the requests (SigV4 `Authorization: ... Credential=<id>/...`).

Why hand-written: the faults must be real HTTP on a real socket between the real S3 client (the AWS
SDK inside pyarrow, botocore) and a real S3 server; moto's fault hooks act inside the server and
cannot drop or cut a connection. A small threaded `http.server` does exactly this.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import random
import re
import socket
import threading
import urllib.parse

TRANSIENT_KINDS = ("500", "503", "slowdown", "drop", "truncate")

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    403: (403, "AccessDenied", "Access Denied"),
    404: (404, "NoSuchKey", "The specified key does not exist."),
}
_SIGNER = re.compile(r"Credential=([^/,\s]+)/")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


@dataclasses.dataclass
class FaultPlan:
    transient_rate: float = 0.0  # share of requests answered with a transient fault
    kinds: tuple[str, ...] = TRANSIENT_KINDS
    permanent: dict[str, int] = dataclasses.field(default_factory=dict)  # "bucket/key" -> 403 | 404
    seed: int = 0
    refuse_multipart: bool = False  # answer CompleteMultipartUpload as moto 5.2.1 does


class FaultProxy:
    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.plan = plan or FaultPlan()
        self._rng = random.Random(self.plan.seed)
        self._lock = threading.Lock()
        self.injected: collections.Counter = collections.Counter()  # fault kind -> count
        self.permanent_served: collections.Counter = collections.Counter()  # key -> count
        self.access_keys: collections.Counter = collections.Counter()  # access key id -> requests signed
        self.requests = 0
        self.forwarded = 0
        self.multipart_refused = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)

    @property
    def transient_injected(self) -> int:
        return sum(self.injected.values())

    # -- decisions ------------------------------------------------------------------------------
    def decide(self, method: str, path: str, authorization: str = "") -> tuple[str, object]:
        key = urllib.parse.unquote(path.split("?", 1)[0]).lstrip("/")
        signer = _SIGNER.search(authorization)
        with self._lock:
            self.requests += 1
            if signer:
                self.access_keys[signer[1]] += 1
            status = self.plan.permanent.get(key)
            if status is not None and method in ("GET", "HEAD"):
                self.permanent_served[key] += 1
                return "permanent", status
            if self._rng.random() < self.plan.transient_rate:
                kinds = [k for k in self.plan.kinds if k != "truncate" or method == "GET"]
                kind = self._rng.choice(kinds)
                self.injected[kind] += 1
                return "transient", kind
            self.forwarded += 1
            return "forward", None


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

    def log_message(self, *args):  # quiet: the test output stays readable
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _error(self, status: int, code: str, message: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                f"</Message><RequestId>faultproxy</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()

    def _handle(self) -> None:
        body = self._read_body()
        action, detail = self.owner.decide(self.command, self.path, self.headers.get("Authorization") or "")
        if action == "permanent":
            self._error(*_ERRORS[detail])
            return
        if action == "transient" and detail == "drop":
            self._drop()
            return
        if action == "transient" and detail != "truncate":
            self._error(*_ERRORS[detail])
            return
        status, headers, data = self._forward(body)
        if (self.owner.plan.refuse_multipart and self.command == "POST" and "uploadId=" in self.path
                and b"CompleteMultipartUploadResult" in data):
            data = data.replace(b"CompleteMultipartUploadResult", b"CompleteMultipartUploadResponse")
            with self.owner._lock:
                self.owner.multipart_refused += 1
        cut = action == "transient" and detail == "truncate"
        self.send_response(status)
        for name, value in headers:
            # A HEAD answer keeps the upstream Content-Length: it is the object's size.
            if name.lower() not in _HOP_BY_HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(name, value)
        if self.command == "HEAD":
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if cut:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
