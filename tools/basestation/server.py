"""The base station's HTTPS service (device API + operator page) and its UDP beacon.

Connections are the front end's job (frontend.py: caps, handshake timeout, whole-request
deadline, no thread for a client until its request is complete); password guessing is
login.py's. Here: the device API, the operator page's routes, and the beacon.

    with BaseStation(state_dir, chain_pem, key_pem, ca_der, mqtt=("127.0.0.1", 8884,
                     "localhost"), passwords=MosquittoPasswords(path, pid)) as bs:
        bs.port      # HTTPS on 127.0.0.1
"""

import hmac
import http.server
import io
import json
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

from . import page
from .frontend import Frontend, Limits
from .login import LoginGuard
from .store import (RELEASE_WINDOW_S, SESSION_TTL_S, BaseStationError, Store, comparison_code,
                    sha256_hex)

MAX_BODY_BYTES = 4096
BEACON_SERVICE = "securenode-base"
SESSION_COOKIE = "bs_session"

_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_NONCE_RE = re.compile(r"[0-9a-f]{32}\Z")
_PRINTABLE_RE = re.compile(r"[\x20-\x7e]{1,64}\Z")
_LENGTH_RE = re.compile(r"[0-9]{1,9}\Z")
_POLL_PATH_RE = re.compile(r"/v1/auth/request/([0-9]{1,12})\Z")

log = logging.getLogger("basestation")


def _first_cert_der(chain_pem):
    text = Path(chain_pem).read_text()
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----"):end])


class BaseStation:
    """The HTTPS service (device API + operator page) and the UDP beacon."""

    def __init__(self, state_dir, chain_pem, key_pem, ca_der, mqtt, passwords,
                 bind="127.0.0.1", port=0, clock=time.time, beacon=None, beacon_interval_s=1.0,
                 limits=None):
        self.store = Store(state_dir)
        self.cert_der = _first_cert_der(chain_pem)
        self.ca_sha256 = sha256_hex(Path(ca_der).read_bytes())
        self.mqtt_host, self.mqtt_port, self.mqtt_server_hostname = mqtt
        self.passwords = passwords
        self.clock = clock
        self.beacon = beacon
        self.beacon_interval_s = beacon_interval_s
        self.limits = limits or Limits()
        self.limits.max_body_bytes = MAX_BODY_BYTES    # the front end reads no more than this
        self.login_guard = LoginGuard(self.limits.login_concurrency, self.limits.login_delay_s)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(chain_pem), str(key_pem))
        self.server = Frontend((bind, port), self.ctx, self.limits,
                               lambda request, addr: _Handler(request, addr, self))
        self.port = self.server.server_address[1]
        self._threads = []
        self._stop = threading.Event()
        if passwords is not None:
            # The CLI (another process) finds the broker's files here.
            self.store.set_setting("password_file", passwords.password_file)
            self.store.set_setting("mosquitto_pid", str(passwords.mosquitto_pid or ""))
            self.store.set_setting("mosquitto_pid_file", passwords.pid_file or "")
            self.store.set_setting("acl_file", passwords.acl_file or "")

    def start(self):
        serve = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                 name="basestation-accept", daemon=True)
        serve.start()
        self._threads.append(serve)
        if self.beacon:
            beacon = threading.Thread(target=self._beacon_loop, name="basestation-beacon",
                                      daemon=True)
            beacon.start()
            self._threads.append(beacon)
        log.info("listening on https://%s:%d", *self.server.server_address[:2])
        return self

    def beacon_payload(self):
        return json.dumps({"service": BEACON_SERVICE, "port": self.port,
                           "ca_sha256": self.ca_sha256}).encode()

    def _beacon_loop(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            while not self._stop.is_set():
                try:
                    udp.sendto(self.beacon_payload(), self.beacon)
                except OSError as exc:
                    log.warning("beacon to %s:%d failed: %s", self.beacon[0], self.beacon[1], exc)
                self._stop.wait(self.beacon_interval_s)

    def stop(self):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.login_guard.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- decisions (the page and the CLI) ---------------------------------------------
    def reserved_ids(self):
        return self.passwords.reserved_ids() if self.passwords is not None else set()

    def decide(self, ref, allow, by, replace=False):
        return self.store.decide(ref, allow, self.clock(), by, reserved=self.reserved_ids(),
                                 replace=replace)

    # --- device API -------------------------------------------------------------------
    def api_request(self, doc, ip):
        device_id, name, firmware, nonce = (doc.get(k) for k in ("device_id", "name",
                                                                   "firmware", "nonce"))
        if not (isinstance(device_id, str) and _DEVICE_ID_RE.match(device_id)):
            return 400, {"status": "invalid", "error": "device_id"}
        if not (isinstance(name, str) and _PRINTABLE_RE.match(name)):
            return 400, {"status": "invalid", "error": "name"}
        if not (isinstance(firmware, str) and _PRINTABLE_RE.match(firmware)):
            return 400, {"status": "invalid", "error": "firmware"}
        if not (isinstance(nonce, str) and _NONCE_RE.match(nonce)):
            return 400, {"status": "invalid", "error": "nonce"}
        code = comparison_code(bytes.fromhex(nonce), self.cert_der)
        try:
            rid = self.store.add_request(device_id, name, firmware, nonce, ip, code,
                                         self.clock())
        except BaseStationError as exc:
            log.warning("request from %s refused: %s", ip, exc)
            return 429, {"status": "busy"}
        log.info("request %d: device %s (%r) at %s asks; code %s", rid, device_id, name, ip, code)
        return 202, {"status": "pending", "request_id": rid}

    def api_poll(self, request_id, doc, ip):
        device_id, nonce = doc.get("device_id"), doc.get("nonce")
        if not (isinstance(device_id, str) and isinstance(nonce, str)):
            return 400, {"status": "invalid"}
        try:
            status, password = self.store.release(request_id, device_id, nonce, ip,
                                                  self.clock(), self.passwords.add)
        except BaseStationError as exc:
            # The approval stays; the board's next poll (or request) tries again.
            log.error("could not create credentials for %s: %s", device_id, exc)
            return 503, {"status": "unavailable"}
        if password is None:
            return {"unknown": 404, "gone": 410}.get(status, 200), {"status": status}
        return 200, {"status": "approved", "mqtt": {
            "host": self.mqtt_host, "port": self.mqtt_port, "user": device_id,
            "password": password, "server_hostname": self.mqtt_server_hostname}}

    def api_confirm(self, doc):
        request_id = doc.get("request_id")
        ok = (type(request_id) is int and isinstance(doc.get("device_id"), str)
              and isinstance(doc.get("nonce"), str)
              and self.store.confirm(request_id, doc["device_id"], doc["nonce"], self.clock()))
        return (200, {"status": "confirmed"}) if ok else (404, {"status": "unknown"})


class _SendAll:
    """The handler's wfile: each write goes out whole (sendall), within the socket timeout."""

    def __init__(self, sock):
        self.sock, self.closed = sock, False

    def write(self, data):
        self.sock.sendall(data)
        return len(data)

    def flush(self):
        pass

    def close(self):
        self.closed = True


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "securenode-basestation"
    sys_version = ""

    def log_message(self, fmt, *args):
        # Paths carry no secrets (devices POST theirs in the body); keep them at debug.
        log.debug("%s %s", self.client_address[0], fmt % args)

    @property
    def station(self):
        return self.server

    def setup(self):
        # The front end has read the whole request already; only the answer goes out.
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.data)
        self.wfile = _SendAll(self.connection)

    # --- plumbing ---------------------------------------------------------------------
    def _body(self):
        length = self.headers.get("Content-Length", "0")
        if not _LENGTH_RE.match(length) or int(length) > MAX_BODY_BYTES:
            return None
        return self.rfile.read(int(length))

    def _send(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "same-origin")
        self.send_header("Content-Security-Policy", page.CSP)
        self.send_header("Connection", "close")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status, doc):
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _html(self, status, text, headers=()):
        self._send(status, text.encode(), "text/html; charset=utf-8", headers)

    def _redirect(self, where, headers=()):
        self._send(303, b"", "text/plain", [("Location", where)] + list(headers))

    def _cookie(self):
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE:
                return value
        return None

    def _same_origin(self):
        # A browser always sends Origin on a cross-site POST; ours must name this very
        # host. With no Origin at all (old browsers), fall back to the Referer.
        expected = "https://%s" % self.headers.get("Host", "")
        origin = self.headers.get("Origin")
        if origin is not None:
            return origin == expected
        referer = self.headers.get("Referer", "")
        return referer == expected or referer.startswith(expected + "/")

    # --- routes -----------------------------------------------------------------------
    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/login":
            return self._html(200, page.login_page())
        if path == "/":
            csrf = self.station.store.session_csrf(self._cookie(), self.station.clock())
            if csrf is None:
                return self._redirect("/login")
            store, now = self.station.store, self.station.clock()
            try:
                reserved = self.station.reserved_ids()
            except BaseStationError as exc:
                log.error("%s", exc)
                reserved = set()
            return self._html(200, page.operator_page(
                csrf, store.requests(now=now, status="pending"), store.devices(), reserved))
        self._json(404, {"status": "not_found"})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        body = self._body()
        if body is None:
            return self._json(413, {"status": "too_large"})
        if path.startswith("/v1/"):
            return self._api(path, body)
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        field = lambda name: (form.get(name) or [""])[0]  # noqa: E731
        if not self._same_origin():
            log.warning("refused a cross-site %s from %s (Origin %r)", path,
                        self.client_address[0], self.headers.get("Origin"))
            return self._html(403, "<p>Forbidden: cross-site request.</p>")
        store, now = self.station.store, self.station.clock()
        if path == "/login":
            return self._login(field("password"))
        csrf = store.session_csrf(self._cookie(), now)
        if csrf is None:
            return self._html(403, "<p>Forbidden: log in first.</p>")
        if not hmac.compare_digest(field("csrf").encode(), csrf.encode()):
            log.warning("refused %s from %s: bad CSRF token", path, self.client_address[0])
            return self._html(403, "<p>Forbidden: stale or forged form.</p>")
        if path == "/logout":
            store.logout(self._cookie())
            return self._redirect("/login", [("Set-Cookie", "%s=; Path=/; HttpOnly; Secure; "
                                              "SameSite=Strict; Max-Age=0" % SESSION_COOKIE)])
        action = field("action")
        if path == "/decide" and action in ("allow", "replace", "deny"):
            try:
                self.station.decide(field("request"), action != "deny", "web",
                                    replace=action == "replace")
            except BaseStationError as exc:
                return self._html(409, page.message_page(str(exc)))
            return self._redirect("/")
        self._json(404, {"status": "not_found"})

    def _login(self, password):
        ip, guard = self.client_address[0], self.station.login_guard
        wait_s = guard.begin(ip)
        if wait_s is not None:
            log.warning("operator login from %s refused: wait %.0f s after a wrong password",
                        ip, wait_s)
            return self._html(429, page.login_page(
                "Too many attempts: wait %d s before trying again." % max(1, round(wait_s))),
                [("Retry-After", str(max(1, round(wait_s))))])
        checked, session = False, None
        try:
            session = guard.check(self.station.store.login, password, self.station.clock())
            checked = True
        except TimeoutError:
            log.warning("operator login from %s refused: password checks busy", ip)
            return self._html(503, page.login_page("Busy: try again in a moment."),
                              [("Retry-After", "1")])
        finally:
            guard.end(ip, session is not None, checked)
        if session is None:
            log.warning("failed operator login from %s", ip)
            return self._html(401, page.login_page("Wrong password."))
        cookie = ("%s=%s; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=%d"
                  % (SESSION_COOKIE, session[0], SESSION_TTL_S))
        return self._redirect("/", [("Set-Cookie", cookie)])

    def _api(self, path, body):
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            # RecursionError: a few KB of nested brackets; the body bound keeps it cheap.
            doc = None
        if not isinstance(doc, dict):
            return self._json(400, {"status": "invalid", "error": "body must be a JSON object"})
        ip = self.client_address[0]
        if path == "/v1/auth/request":
            return self._json(*self.station.api_request(doc, ip))
        if path == "/v1/auth/confirm":
            return self._json(*self.station.api_confirm(doc))
        match = _POLL_PATH_RE.match(path)
        if match:
            return self._json(*self.station.api_poll(int(match.group(1)), doc, ip))
        self._json(404, {"status": "not_found"})


__all__ = ["BaseStation", "Limits", "MAX_BODY_BYTES", "RELEASE_WINDOW_S"]
