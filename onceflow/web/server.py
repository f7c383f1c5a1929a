"""The dashboard: a small HTTP server in a daemon thread of the driver.

Routes (every one token-checked when a token is configured):

    GET  /                  the page (static/index.html); ``/?token=T`` sets a cookie and
                            redirects to ``/``, so the token leaves the address bar
    GET  /static/<file>     the page's script and style (package data, no build step)
    GET  /api/job           JobStatus.snapshot() as JSON (the page polls it)
    POST /api/savepoint     {"directory": str | null, "stop": bool} -> {"path": ...}; only
                            when the driver has a savepoint control

**Binding.** The default is 127.0.0.1. Any other address serves the job's data to the
network, so it needs an access token: the server refuses to start without one. A token
may be sent as ``Authorization: Bearer T``, as the ``onceflow_token`` cookie the page
sets, or as ``?token=T``; it is compared in constant time.

**Local pages.** Without a token, the server still refuses requests whose ``Host`` is not
a loopback name (DNS rebinding), and a POST must be ``application/json`` from the same
origin (so another web site open in the same browser cannot trigger a savepoint).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
from collections.abc import Callable
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson

from onceflow.errors import ConfigurationError, OnceflowError
from onceflow.runtime.status import JobStatus

log = logging.getLogger("onceflow.web")

COOKIE = "onceflow_token"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_MAX_BODY = 64 * 1024


def parse_address(spec: str | int, what: str = "dashboard") -> tuple[str, int]:
    """``"PORT"``, ``"HOST:PORT"`` or ``"[V6]:PORT"`` -> (host, port); host defaults to
    127.0.0.1. Port 0 picks a free port."""
    text = str(spec).strip()
    host = "127.0.0.1"
    port_text = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ConfigurationError(f"{what}: {spec!r} is not [HOST:]PORT")
        host, port_text = text[1:end], text[end + 2:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if not host:
            raise ConfigurationError(f"{what}: {spec!r} has an empty host; use PORT alone "
                                     "for 127.0.0.1")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigurationError(f"{what}: {spec!r} is not [HOST:]PORT (the port must be a "
                                 "number)") from None
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"{what}: port {port} is outside 0..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """The token rule: any address but loopback needs an access token."""
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ConfigurationError("dashboard_token must be a string of at least 8 characters")
    if not is_loopback(host) and token is None:
        raise ConfigurationError(
            f"dashboard: binding to {host} serves the job's data beyond this machine; set an "
            "access token (dashboard_token=..., or ONCEFLOW_DASHBOARD_TOKEN for `onceflow "
            "run`) or bind to 127.0.0.1")


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


class HttpService:
    """An HTTP server in a daemon thread: binds when built (a port in use fails the job
    before any worker starts, naming ``what``), serves after :meth:`start`."""

    httpd: ThreadingHTTPServer
    port: int

    def _bind(self, what: str, host: str, port: int,
              make: Callable[[tuple[str, int]], ThreadingHTTPServer], thread: str) -> None:
        try:
            self.httpd = make((host, port))
        except OSError as e:
            raise ConfigurationError(f"{what}: cannot listen on {host}:{port}: "
                                     f"{e.strerror or e}") from e
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=thread,
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class DashboardServer(HttpService):
    """Serves one job's dashboard until :meth:`close`. ``control`` returns the driver's
    savepoint control (or None while there is none)."""

    def __init__(self, status: JobStatus, host: str, port: int, token: str | None = None,
                 control: Callable[[], Any] = lambda: None) -> None:
        check_binding(host, token)
        self.status = status
        self.token = token
        self.control = control
        self.host = host
        self.static = _load_static()
        handler = type("_BoundHandler", (_Handler,), {"app": self})
        server_cls = _server_class(host)
        self._bind("dashboard", host, port, lambda addr: server_cls(addr, handler),
                   "onceflow-web")
        self.url = url_for(host, self.port)

    # --- request logic (the handler calls these) -----------------------------------------
    def authorized(self, supplied: str | None) -> bool:
        if self.token is None:
            return True
        if not supplied:
            return False
        return hmac.compare_digest(supplied.encode(), self.token.encode())

    def host_allowed(self, host_header: str | None) -> bool:
        if self.token is not None or not is_loopback(self.host):
            return True  # reachable from elsewhere; the token protects it
        if not host_header:
            return False
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        return name.strip("[]") in ("127.0.0.1", "localhost", "::1") or \
            is_loopback(name.strip("[]"))


def _server_class(host: str) -> type[ThreadingHTTPServer]:
    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    if ":" in host:
        import socket

        _Server.address_family = socket.AF_INET6
    return _Server


def _load_static() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    root = resources.files("onceflow.web") / "static"
    for entry in root.iterdir():
        if entry.is_file() and any(entry.name.endswith(s) for s in _STATIC_TYPES):
            out[entry.name] = entry.read_bytes()
    if "index.html" not in out:
        raise ConfigurationError("dashboard: onceflow/web/static/index.html is missing from "
                                 "the installation (package data not installed)")
    return out


class _Handler(BaseHTTPRequestHandler):
    app: DashboardServer
    server_version = "onceflow"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # --- helpers -------------------------------------------------------------------------
    def _send(self, code: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS),
                   "application/json")

    def _supplied_token(self, query: dict[str, list[str]]) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[7:].strip()
        if "token" in query:
            return query["token"][0]
        raw = self.headers.get("Cookie")
        if raw:
            jar = cookies.SimpleCookie()
            try:
                jar.load(raw)
            except cookies.CookieError:
                return None
            if COOKIE in jar:
                return jar[COOKIE].value
        return None

    def _gate(self) -> tuple[str, dict[str, list[str]]] | None:
        """Common checks; returns (path, query) or None after answering."""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if not self.app.host_allowed(self.headers.get("Host")):
            self._json(403, {"error": "this dashboard answers only to a loopback Host"})
            return None
        if not self.app.authorized(self._supplied_token(query)):
            self._send(401, b"onceflow dashboard: access token required (open "
                       b"/?token=<token>, or send Authorization: Bearer <token>)\n",
                       "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})
            return None
        return parts.path, query

    # --- verbs ---------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        gate = self._gate()
        if gate is None:
            return
        path, query = gate
        static = self.app.static
        if path == "/" and "token" in query and self.app.token is not None:
            morsel = f"{COOKIE}={query['token'][0]}; Path=/; HttpOnly; SameSite=Strict"
            self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": morsel})
        elif path in ("/", "/index.html"):
            self._send(200, static["index.html"], _STATIC_TYPES[".html"])
        elif path.startswith("/static/") and path[8:] in static:
            name = path[8:]
            self._send(200, static[name], _STATIC_TYPES["." + name.rsplit(".", 1)[-1]])
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif path == "/api/job":
            self._json(200, self.app.status.snapshot())
        else:
            self._json(404, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:
        gate = self._gate()
        if gate is None:
            return
        path, _ = gate
        if path != "/api/savepoint":
            self._json(404, {"error": f"no such endpoint: {path}"})
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self._json(415, {"error": "send the request body as application/json"})
            return
        origin = self.headers.get("Origin")
        if origin and origin != f"http://{self.headers.get('Host', '')}":
            self._json(403, {"error": f"cross-origin request from {origin} refused"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._json(413, {"error": "request body too large"})
            return
        try:
            body = orjson.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            directory = body.get("directory")
            stop = body.get("stop", False)
            timeout = body.get("timeout")
            if directory is not None and not isinstance(directory, str):
                raise ValueError("'directory' must be a string or null")
            if not isinstance(stop, bool):
                raise ValueError("'stop' must be true or false")
            if timeout is not None and not isinstance(timeout, int | float):
                raise ValueError("'timeout' must be a number of seconds or null")
        except ValueError as e:  # orjson.JSONDecodeError is a ValueError
            self._json(400, {"error": f"bad request: {e}"})
            return
        control = self.app.control()
        if control is None:
            self._json(501, {"error": "this job cannot take savepoints (no savepoint control "
                             "in this onceflow version, or the job is not running)"})
            return
        try:
            where = control.savepoint(directory, stop=stop, timeout=timeout)
        except OnceflowError as e:
            self._json(409, {"error": str(e)})
            return
        self._json(200, {"path": where, "stopped": stop})
