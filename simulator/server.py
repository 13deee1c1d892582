"""The simulator over real HTTP on 127.0.0.1, speaking the Anthropic API's wire format.

`SimulatorServer` runs it in a background thread (for `--simulate` and tests);
`longbatch simulator` runs it in the foreground.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from simulator.engine import ApiError, SimConfig, Simulator
from simulator.requests import echo_headers

log = logging.getLogger(__name__)

_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/v1/messages/batches$"), "create"),
    ("GET", re.compile(r"^/v1/messages/batches$"), "list"),
    ("GET", re.compile(r"^/v1/messages/batches/(?P<id>[^/]+)$"), "retrieve"),
    ("POST", re.compile(r"^/v1/messages/batches/(?P<id>[^/]+)/cancel$"), "cancel"),
    ("DELETE", re.compile(r"^/v1/messages/batches/(?P<id>[^/]+)$"), "delete"),
    ("GET", re.compile(r"^/v1/messages/batches/(?P<id>[^/]+)/results$"), "results"),
    ("POST", re.compile(r"^/v1/messages/count_tokens$"), "count_tokens"),
    ("GET", re.compile(r"^/v1/models$"), "models"),
    ("GET", re.compile(r"^/v1/models/(?P<id>[^/]+)$"), "model"),
]
_CHUNK = 1 << 20


def _throttled_piece(bytes_per_second: float) -> int:
    """Bytes to move between pauses on a throttled link: a tenth of a second's worth."""
    return min(_CHUNK, max(1024, int(bytes_per_second / 10)))


class _ClientGone(Exception):
    """The client closed the connection before its request body was whole."""


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Only the request line reaches the log; headers (and so the API key) never do.
        log.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        try:
            body = self._read_body()
            if not self._api_key():
                raise ApiError(401, "authentication_error", "x-api-key header is required")
            required = self.server.sim.config.require_api_key
            if required is not None and self._api_key() != required:
                raise ApiError(401, "authentication_error", "invalid x-api-key")
            for verb, pattern, name in _ROUTES:
                m = pattern.match(url.path)
                if m and verb == method:
                    fault = self.server.sim.injected_fault(name)
                    if fault is not None:
                        raise fault
                    self._handle(name, m.groupdict(), parse_qs(url.query), body)
                    return
            raise ApiError(404, "not_found_error", f"no route for {method} {url.path}")
        except _ClientGone as exc:
            # The client hung up mid-body: there is no request, so no batch and no answer.
            log.info("%s %s: %s", method, url.path, exc)
            self.close_connection = True
        except ApiError as exc:
            extra = {"retry-after": "0"} if exc.status == 429 else {}
            message = exc.message
            if self.server.sim.config.echo_key_in_errors:
                message += echo_headers(self._api_key())
            self._send_json(exc.status, {"type": "error", "error": {"type": exc.error_type, "message": message},
                                         "request_id": None}, extra)

    def _api_key(self) -> str:
        key = self.headers.get("x-api-key") or self.headers.get("authorization") or ""
        return key.removeprefix("Bearer ").strip()

    def _read_body(self) -> Any:
        length = int(self.headers.get("content-length") or 0)
        if length > self.server.sim.config.max_body_bytes:
            # Drain what the client sends so it reads our answer rather than a reset socket.
            left = length
            while left > 0:
                chunk = self.rfile.read(min(_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
            raise ApiError(413, "request_too_large",
                           f"request body is {length:,} bytes; the limit is {self.server.sim.config.max_body_bytes:,}")
        if not length:
            return None
        # Into one buffer (read(length) joins chunks: twice the body), decoded, then let go
        # before parsing: a 256 MB body costs its text and its objects, not four copies.
        raw = bytearray(length)
        view, got = memoryview(raw), 0
        throttle = self.server.sim.config.upload_bytes_per_second
        step = _throttled_piece(throttle) if throttle else length
        while got < length:
            n = self.rfile.readinto(view[got: got + step])
            if not n:
                break
            got += n
            if throttle:
                time.sleep(n / throttle)
        del view
        if got < length:
            raise _ClientGone(f"body ended after {got:,} of {length:,} bytes")
        try:
            text = raw.decode("utf-8")
            del raw
            return json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, "invalid_request_error", f"body is not valid JSON: {exc}") from None

    def _handle(self, name: str, path: dict[str, str], query: dict[str, list[str]], body: Any) -> None:
        sim = self.server.sim
        betas = tuple(b.strip() for b in (self.headers.get("anthropic-beta") or "").split(",") if b.strip())
        if name == "create":
            created = sim.create(body, betas, self._api_key())
            if sim.drop_after_create():
                # The batch exists now, but the client never hears so: the case exactly-once must survive.
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if sim.config.bogus_create_body == "json":  # the batch exists; the answer does not say so
                self._send_json(200, {"ok": True, "note": "not a message batch"})
            elif sim.config.bogus_create_body == "html":
                self._send_bytes(200, b"<html><body>Gateway welcome page</body></html>", "text/html")
            else:
                self._send_json(200, self._absolute(created))
        elif name == "list":
            def q(key: str) -> str | None:
                return query.get(key, [None])[0]
            page = sim.list(int(q("limit") or 20), q("after_id"), q("before_id"))
            page["data"] = [self._absolute(b) for b in page["data"]]
            self._send_json(200, page)
        elif name == "retrieve":
            self._send_json(200, self._absolute(sim.retrieve(path["id"])))
        elif name == "cancel":
            self._send_json(200, self._absolute(sim.cancel(path["id"])))
        elif name == "delete":
            self._send_json(200, sim.delete(path["id"]))
        elif name == "results":
            self._send_bytes(200, sim.results(path["id"]), "application/binary",
                             throttle=sim.config.results_bytes_per_second)
        elif name == "count_tokens":
            self._send_json(200, sim.count_tokens(body))
        elif name == "models":
            self._send_json(200, sim.models())
        elif name == "model":
            self._send_json(200, sim.model(path["id"]))

    def _absolute(self, batch: dict[str, Any]) -> dict[str, Any]:
        if batch.get("results_url"):
            batch["results_url"] = f"http://{self.headers.get('host')}{batch['results_url']}"
        return batch

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode("utf-8"), "application/json", headers=headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str, throttle: float = 0.0,
                    headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_sim")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        view = memoryview(data)
        chunk = _throttled_piece(throttle) if throttle else _CHUNK
        for start in range(0, len(data), chunk):
            self.wfile.write(view[start: start + chunk])
            if throttle:
                time.sleep(chunk / throttle)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        super().__init__(address, _Handler)
        self.sim = sim


class SimulatorServer:
    """The simulator on 127.0.0.1 in a background thread. Use as a context manager."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = Simulator(config)
        self._server = _Server((host, port), self.sim)
        self._thread = threading.Thread(target=self._server.serve_forever, name="longbatch-simulator", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "SimulatorServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def __enter__(self) -> "SimulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
