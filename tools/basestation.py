"""SecureNode base station: a person approves a board, the board gets its MQTT credentials.

A board with only WiFi credentials asks over HTTPS (certificate from tools/certs.py, which
the board checks against its pinned CA); the operator sees the request, compares the
6-digit code the board shows with the one on the page, and allows or denies it, from the
command line or from the web page. On Allow, when the board next asks (from the same
address, with the same nonce, within 60 s), the base station creates a per-device password
in Mosquitto's password file (hashed by ``mosquitto_passwd``, reloaded with SIGHUP) and
hands it out once. No password is stored in plain text anywhere; none is logged.

    python tools/basestation.py --state bs serve --cert certs/basestation-chain.pem \\
        --key certs/basestation.key --ca certs/ca.der --mqtt-port 8884 \\
        --password-file /etc/mosquitto/passwd --mosquitto-pid 1234
    python tools/basestation.py --state bs operator-password < pw.txt
    python tools/basestation.py --state bs list
    python tools/basestation.py --state bs approve 3        # request id, or a device id
    python tools/basestation.py --state bs deny 4
    python tools/basestation.py --state bs revoke board-7

Exit status: 0 done; 1 the request or device is not in a state for that (unknown, not
pending, already decided, nothing to revoke); 2 a mistake in the command or its input
(bad arguments, a too short operator password, no password file known for `revoke`).

Host code and tests use the same pieces::

    with BaseStation(state_dir, chain_pem, key_pem, ca_der, mqtt=("127.0.0.1", 8884,
                     "localhost"), passwords=MosquittoPasswords(path, pid)) as bs:
        bs.port      # HTTPS on 127.0.0.1
"""

import argparse
import base64
import hashlib
import hmac
import html
import http.server
import json
import logging
import os
import re
import secrets
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

RELEASE_WINDOW_S = 60        # credentials go to the board within this long after Allow
PENDING_TTL_S = 15 * 60      # an undecided request older than this is expired
SESSION_TTL_S = 12 * 3600
MAX_PENDING = 200            # anyone on the LAN may ask: bound what they can make us keep
MAX_BODY_BYTES = 4096
BEACON_SERVICE = "securenode-base"
SESSION_COOKIE = "bs_session"
EXIT_OK, EXIT_STATE, EXIT_USAGE = 0, 1, 2

_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_NONCE_RE = re.compile(r"[0-9a-f]{32}\Z")
_PRINTABLE_RE = re.compile(r"[\x20-\x7e]{1,64}\Z")

log = logging.getLogger("basestation")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL, name TEXT NOT NULL, firmware TEXT NOT NULL,
    nonce_sha256 TEXT NOT NULL, ip TEXT NOT NULL, asked_s REAL NOT NULL, code TEXT NOT NULL,
    status TEXT NOT NULL, decided_s REAL, decided_by TEXT);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, status TEXT NOT NULL, request_id INTEGER,
    updated_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY, csrf TEXT NOT NULL, created_s REAL NOT NULL);
"""


class BaseStationError(Exception):
    """A command or request the base station refuses; ``exit_code`` for the CLI."""

    def __init__(self, message, exit_code=EXIT_STATE):
        super().__init__(message)
        self.exit_code = exit_code


def _sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def comparison_code(nonce, cert_der):
    """The 6 digits the board prints and the page shows (same formula as provision.py)."""
    digest = hashlib.sha256(nonce + hashlib.sha256(cert_der).digest()).digest()
    return "%06d" % (int.from_bytes(digest, "big") % 10**6)


def hash_password(password, salt=None):
    """scrypt, salted: what the settings table keeps for the operator's password."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return "scrypt$16384$8$1$%s$%s" % (base64.b64encode(salt).decode(),
                                       base64.b64encode(digest).decode())


def check_password(password, stored):
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(got, base64.b64decode(digest))


class Store:
    """The base station's state in SQLite: requests, decisions, devices, sessions.

    One connection per operation, so the service's threads and the CLI (another process)
    can share the file; a release runs in one IMMEDIATE transaction, so it happens once.
    """

    def __init__(self, state_dir):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.path = self.dir / "basestation.sqlite"
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self):
        db = sqlite3.connect(str(self.path), timeout=10, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        return _Closing(db)

    # --- settings and sessions --------------------------------------------------------
    def setting(self, key, default=None):
        with self._db() as db:
            row = db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return row["value"] if row else default

    def set_setting(self, key, value):
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    def set_operator_password(self, password):
        if len(password) < 8:
            raise BaseStationError("the operator password needs at least 8 characters",
                                   EXIT_USAGE)
        self.set_setting("operator_password", hash_password(password))

    def login(self, password, now):
        """A new session (token, csrf) for the right password, else None."""
        stored = self.setting("operator_password")
        if stored is None or not check_password(password, stored):
            return None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE created_s < ?", (now - SESSION_TTL_S,))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?)",
                       (_sha256_hex(token.encode()), csrf, now))
        return token, csrf

    def session_csrf(self, token, now):
        """The session's CSRF token if the cookie names a live session, else None."""
        if not token:
            return None
        with self._db() as db:
            row = db.execute("SELECT csrf, created_s FROM sessions WHERE token_sha256=?",
                             (_sha256_hex(token.encode()),)).fetchone()
        if row is None or now - row["created_s"] > SESSION_TTL_S:
            return None
        return row["csrf"]

    def logout(self, token):
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE token_sha256=?", (_sha256_hex(token.encode()),))

    # --- requests ---------------------------------------------------------------------
    def add_request(self, device_id, name, firmware, nonce_hex, ip, code, now):
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            pending = db.execute("SELECT COUNT(*) FROM requests WHERE status='pending' AND "
                                 "asked_s >= ?", (now - PENDING_TTL_S,)).fetchone()[0]
            if pending >= MAX_PENDING:
                db.execute("ROLLBACK")
                raise BaseStationError("%d requests already wait for a decision" % pending)
            # The same board asking again (new nonce) replaces its older pending request;
            # a lookalike from another address does not.
            db.execute("UPDATE requests SET status='superseded' WHERE device_id=? AND ip=? "
                       "AND status='pending'", (device_id, ip))
            cur = db.execute(
                "INSERT INTO requests (device_id, name, firmware, nonce_sha256, ip, asked_s, "
                "code, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                (device_id, name, firmware, _sha256_hex(nonce_hex.encode()), ip, now, code))
            db.execute("COMMIT")
            return cur.lastrowid

    def requests(self, now=None, status=None):
        with self._db() as db:
            if now is not None:
                db.execute("UPDATE requests SET status='expired' WHERE status='pending' "
                           "AND asked_s < ?", (now - PENDING_TTL_S,))
            if status:
                rows = db.execute("SELECT * FROM requests WHERE status=? ORDER BY id",
                                  (status,)).fetchall()
            else:
                rows = db.execute("SELECT * FROM requests ORDER BY id").fetchall()
        return [_public(dict(r)) for r in rows]

    def find_pending(self, ref):
        """A pending request by id, or by device id when exactly one is pending for it."""
        pending = self.requests(status="pending")
        if ref.isdigit():
            match = [r for r in pending if r["id"] == int(ref)]
            if not match:
                raise BaseStationError("request %s is not pending (see `list`)" % ref)
            return match[0]
        match = [r for r in pending if r["device_id"] == ref]
        if not match:
            raise BaseStationError("no pending request from device %s (see `list`)" % ref)
        if len(match) > 1:
            raise BaseStationError(
                "%d pending requests claim device id %s (ids %s): compare the codes and "
                "approve one by its request id" % (len(match), ref,
                                                   ", ".join(str(r["id"]) for r in match)))
        return match[0]

    def decide(self, ref, allow, now, by):
        request = self.find_pending(str(ref))
        with self._db() as db:
            cur = db.execute("UPDATE requests SET status=?, decided_s=?, decided_by=? "
                             "WHERE id=? AND status='pending'",
                             ("approved" if allow else "denied", now, by, request["id"]))
            if cur.rowcount != 1:
                raise BaseStationError("request %d was decided meanwhile" % request["id"])
        log.info("request %d from %s (%s) %s by %s", request["id"], request["device_id"],
                 request["ip"], "approved" if allow else "denied", by)
        return request

    def release(self, request_id, device_id, nonce_hex, ip, now, issue):
        """The outcome for a poll: ("approved", password) once, else (status, None).

        Anything that does not match the request's device id, nonce and address is
        "unknown", so a stranger learns nothing. ``issue(device_id)`` creates the MQTT
        password; it runs inside the transaction, so two polls cannot both get one.
        """
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
                if (row is None or row["device_id"] != device_id or row["ip"] != ip
                        or not hmac.compare_digest(row["nonce_sha256"],
                                                   _sha256_hex(nonce_hex.encode()))):
                    db.execute("ROLLBACK")
                    return "unknown", None
                status = row["status"]
                if status == "pending" and now - row["asked_s"] > PENDING_TTL_S:
                    status = "expired"
                elif status == "approved" and now - row["decided_s"] > RELEASE_WINDOW_S:
                    status = "expired"
                elif status == "approved":
                    password = issue(device_id)
                    db.execute("UPDATE requests SET status='released' WHERE id=?",
                               (request_id,))
                    db.execute("INSERT OR REPLACE INTO devices VALUES (?, 'provisioned', ?, ?)",
                               (device_id, request_id, now))
                    db.execute("COMMIT")
                    log.info("credentials for %s released to %s (request %d)", device_id, ip,
                             request_id)
                    return "approved", password
                elif status == "released":
                    status = "gone"
                if status != row["status"] and status != "gone":
                    db.execute("UPDATE requests SET status=? WHERE id=?", (status, request_id))
                db.execute("COMMIT")
                return status, None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def confirm(self, request_id, device_id, nonce_hex, now):
        with self._db() as db:
            row = db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
            if (row is None or row["device_id"] != device_id or row["status"] != "released"
                    or not hmac.compare_digest(row["nonce_sha256"],
                                               _sha256_hex(nonce_hex.encode()))):
                return False
            cur = db.execute("UPDATE devices SET status='confirmed', updated_s=? "
                             "WHERE device_id=? AND request_id=? AND status IN "
                             "('provisioned', 'confirmed')", (now, device_id, request_id))
        if cur.rowcount == 1:
            log.info("device %s confirmed its credentials work", device_id)
        return cur.rowcount == 1

    def devices(self):
        with self._db() as db:
            return [dict(r) for r in db.execute("SELECT * FROM devices ORDER BY device_id")]

    def mark_revoked(self, device_id, now):
        with self._db() as db:
            cur = db.execute("UPDATE devices SET status='revoked', updated_s=? WHERE device_id=? "
                             "AND status != 'revoked'", (now, device_id))
        if cur.rowcount != 1:
            raise BaseStationError("device %s has no credentials to revoke" % device_id)


class _Closing:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        return self.db

    def __exit__(self, *exc):
        self.db.close()


def _public(row):
    row.pop("nonce_sha256", None)
    return row


class MosquittoPasswords:
    """Per-device passwords in Mosquitto's password file, via Debian's ``mosquitto_passwd``.

    The password goes to mosquitto_passwd on stdin (never on a command line, where ``ps``
    shows it); the file keeps only its salted PBKDF2-SHA512 hash. SIGHUP makes the broker
    re-read the file.
    """

    def __init__(self, password_file, mosquitto_pid=None, tool="mosquitto_passwd"):
        self.password_file = str(password_file)
        self.mosquitto_pid = mosquitto_pid
        self.tool = tool

    def add(self, user):
        password = secrets.token_urlsafe(24)
        self._run([self.tool, self.password_file, user], "%s\n%s\n" % (password, password))
        self.reload()
        return password

    def remove(self, user):
        self._run([self.tool, "-D", self.password_file, user], "")
        self.reload()

    def reload(self):
        if self.mosquitto_pid:
            os.kill(int(self.mosquitto_pid), signal.SIGHUP)

    def _run(self, argv, stdin):
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            # mosquitto_passwd never echoes the password; its message is safe to show.
            raise BaseStationError("%s failed (%d): %s" % (argv[0], proc.returncode,
                                                           proc.stderr.strip()[-200:]))


def revoke(store, passwords, device_id, now):
    """Remove the device's MQTT credentials; its next connection is refused."""
    devices = {d["device_id"]: d for d in store.devices()}
    if device_id not in devices or devices[device_id]["status"] == "revoked":
        raise BaseStationError("device %s has no credentials to revoke" % device_id)
    passwords.remove(device_id)
    store.mark_revoked(device_id, now)
    log.info("device %s revoked", device_id)


def _first_cert_der(chain_pem):
    text = Path(chain_pem).read_text()
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----"):end])


class BaseStation:
    """The HTTPS service (device API + operator page) and the UDP beacon."""

    def __init__(self, state_dir, chain_pem, key_pem, ca_der, mqtt, passwords,
                 bind="127.0.0.1", port=0, clock=time.time, beacon=None, beacon_interval_s=1.0):
        self.store = Store(state_dir)
        self.cert_der = _first_cert_der(chain_pem)
        self.ca_sha256 = _sha256_hex(Path(ca_der).read_bytes())
        self.mqtt_host, self.mqtt_port, self.mqtt_server_hostname = mqtt
        self.passwords = passwords
        self.clock = clock
        self.beacon = beacon
        self.beacon_interval_s = beacon_interval_s
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(chain_pem), str(key_pem))
        self.server = _Server((bind, port), _Handler, self)
        self.port = self.server.server_address[1]
        self._threads = []
        self._stop = threading.Event()
        if passwords is not None:
            # The CLI's `revoke` (another process) finds the broker's files here.
            self.store.set_setting("password_file", passwords.password_file)
            self.store.set_setting("mosquitto_pid", str(passwords.mosquitto_pid or ""))

    def start(self):
        serve = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                 daemon=True)
        serve.start()
        self._threads.append(serve)
        if self.beacon:
            beacon = threading.Thread(target=self._beacon_loop, daemon=True)
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
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

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
        ok = (isinstance(request_id, int) and isinstance(doc.get("device_id"), str)
              and isinstance(doc.get("nonce"), str)
              and self.store.confirm(request_id, doc["device_id"], doc["nonce"], self.clock()))
        return (200, {"status": "confirmed"}) if ok else (404, {"status": "unknown"})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, station):
        self.station = station
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        # TLS per connection, in the connection's own thread: a client that stalls in the
        # handshake holds up nobody else.
        request.settimeout(10)
        try:
            tls = self.station.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "securenode-basestation"
    sys_version = ""

    def log_message(self, fmt, *args):
        # Paths carry no secrets (devices POST theirs in the body); keep them at debug.
        log.debug("%s %s", self.client_address[0], fmt % args)

    @property
    def station(self):
        return self.server.station

    # --- plumbing ---------------------------------------------------------------------
    def _body(self):
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
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
        self.send_header("Content-Security-Policy", _CSP)
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
            return self._html(200, _login_page())
        if path == "/":
            csrf = self.station.store.session_csrf(self._cookie(), self.station.clock())
            if csrf is None:
                return self._redirect("/login")
            return self._html(200, self._operator_page(csrf))
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
            session = store.login(field("password"), now)
            if session is None:
                log.warning("failed operator login from %s", self.client_address[0])
                return self._html(401, _login_page("Wrong password."))
            cookie = ("%s=%s; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=%d"
                      % (SESSION_COOKIE, session[0], SESSION_TTL_S))
            return self._redirect("/", [("Set-Cookie", cookie)])
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
        if path == "/decide" and field("action") in ("allow", "deny"):
            try:
                store.decide(field("request"), field("action") == "allow", now, "web")
            except BaseStationError as exc:
                return self._html(409, "<p>%s</p><p><a href='/'>Back</a></p>"
                                  % html.escape(str(exc)))
            return self._redirect("/")
        self._json(404, {"status": "not_found"})

    def _api(self, path, body):
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return self._json(400, {"status": "invalid", "error": "body must be a JSON object"})
        ip = self.client_address[0]
        if path == "/v1/auth/request":
            return self._json(*self.station.api_request(doc, ip))
        if path == "/v1/auth/confirm":
            return self._json(*self.station.api_confirm(doc))
        match = re.fullmatch(r"/v1/auth/request/([0-9]{1,12})", path)
        if match:
            return self._json(*self.station.api_poll(int(match.group(1)), doc, ip))
        self._json(404, {"status": "not_found"})

    def _operator_page(self, csrf):
        e = html.escape
        store, now = self.station.store, self.station.clock()
        rows = []
        for r in store.requests(now=now, status="pending"):
            buttons = "".join(
                "<form method='post' action='/decide'><input type='hidden' name='csrf' "
                "value='%s'><input type='hidden' name='request' value='%d'><button name="
                "'action' value='%s' id='%s-%d'>%s</button></form>"
                % (e(csrf), r["id"], action, action, r["id"], label)
                for action, label in (("allow", "Allow"), ("deny", "Deny")))
            rows.append("<tr class='pending' data-device='%s'><td>%d</td><td>%s</td><td>%s</td>"
                        "<td>%s</td><td>%s</td><td class='code'>%s</td><td>%s</td></tr>"
                        % (e(r["device_id"]), r["id"], e(r["device_id"]), e(r["name"]),
                           e(r["ip"]), _utc(r["asked_s"]), e(r["code"]), buttons))
        devices = "".join("<tr class='device' data-device='%s'><td>%s</td><td class='status'>"
                          "%s</td><td>%s</td></tr>" % (e(d["device_id"]), e(d["device_id"]),
                                                      e(d["status"]), _utc(d["updated_s"]))
                          for d in store.devices())
        return _PAGE % {
            "title": "Base station",
            "body": "<h1>Devices asking to connect</h1><p>Allow a device only if the code on "
                    "its console matches the code here.</p><table id='pending'><tr><th>#</th>"
                    "<th>device id</th><th>name</th><th>IP</th><th>asked (UTC)</th><th>code</th>"
                    "<th></th></tr>%s</table><h1>Devices</h1><table id='devices'><tr><th>"
                    "device id</th><th>status</th><th>since (UTC)</th></tr>%s</table>"
                    "<form method='post' action='/logout'><input type='hidden' name='csrf' "
                    "value='%s'><button>Log out</button></form>"
                    % ("".join(rows) or "<tr><td colspan='7'>none</td></tr>", devices, e(csrf))}


_PAGE = ("<!doctype html><html><head><meta charset='utf-8'><title>%(title)s</title>"
         "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;"
         "text-align:left}.code{font-family:monospace;font-size:1.4em}form{display:inline}"
         "</style></head><body>%(body)s</body></html>")


def _login_page(message=""):
    return _PAGE % {"title": "Base station login", "body": (
        "<h1>Operator login</h1>%s<form method='post' action='/login'><label>Password "
        "<input type='password' name='password' id='password' autocomplete='current-password'>"
        "</label> <button id='login'>Log in</button></form>"
        % ("<p class='error'>%s</p>" % html.escape(message) if message else ""))}


def _utc(unix_s):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix_s))


# --- command line ---------------------------------------------------------------------------
def cmd_serve(args, store):
    passwords = MosquittoPasswords(args.password_file, args.mosquitto_pid)
    beacon = (args.beacon_addr, args.beacon_port) if args.beacon_port else None
    station = BaseStation(args.state, args.cert, args.key, args.ca,
                          (args.mqtt_host, args.mqtt_port, args.mqtt_server_hostname or
                           args.mqtt_host), passwords, bind=args.bind, port=args.port,
                          beacon=beacon, beacon_interval_s=args.beacon_interval)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with station:
        print("basestation: https://%s:%d (state %s)" % (args.bind, station.port, args.state),
              flush=True)
        stop.wait()
    return EXIT_OK


def cmd_list(args, store):
    requests = store.requests(now=time.time())
    if not args.all:
        requests = [r for r in requests if r["status"] in ("pending", "approved")]
    devices = store.devices()
    if args.json:
        print(json.dumps({"requests": requests, "devices": devices}, indent=2))
        return EXIT_OK
    print("%-5s %-20s %-20s %-15s %-19s %-6s %s" % ("id", "device", "name", "ip", "asked (UTC)",
                                                   "code", "status"))
    for r in requests:
        print("%-5d %-20s %-20s %-15s %-19s %-6s %s" % (r["id"], r["device_id"], r["name"][:20],
                                                       r["ip"], _utc(r["asked_s"]), r["code"],
                                                       r["status"]))
    if devices:
        print("\n%-20s %-12s %s" % ("device", "status", "since (UTC)"))
        for d in devices:
            print("%-20s %-12s %s" % (d["device_id"], d["status"], _utc(d["updated_s"])))
    return EXIT_OK


def cmd_approve(args, store):
    r = store.decide(args.ref, True, time.time(), "cli")
    print("approved request %d (%s at %s, code %s): it has %d s to collect its credentials"
          % (r["id"], r["device_id"], r["ip"], r["code"], RELEASE_WINDOW_S))
    return EXIT_OK


def cmd_deny(args, store):
    r = store.decide(args.ref, False, time.time(), "cli")
    print("denied request %d (%s at %s)" % (r["id"], r["device_id"], r["ip"]))
    return EXIT_OK


def cmd_revoke(args, store):
    path = store.setting("password_file")
    if not path:
        raise BaseStationError("no password file known: run `serve` once with --password-file",
                               EXIT_USAGE)
    revoke(store, MosquittoPasswords(path, store.setting("mosquitto_pid") or None),
           args.device_id, time.time())
    print("revoked %s: its next MQTT connection is refused" % args.device_id)
    return EXIT_OK


def cmd_operator_password(args, store):
    password = sys.stdin.readline().rstrip("\r\n")
    store.set_operator_password(password)
    print("operator password set (stored as a salted scrypt hash)")
    return EXIT_OK


COMMANDS = {"serve": cmd_serve, "list": cmd_list, "approve": cmd_approve, "deny": cmd_deny,
            "revoke": cmd_revoke, "operator-password": cmd_operator_password}


def build_parser():
    p = argparse.ArgumentParser(prog="basestation", description=__doc__.split("\n\n")[0])
    p.add_argument("--state", default=os.environ.get("BASESTATION_STATE", "basestation-state"),
                   help="directory of the SQLite state (default $BASESTATION_STATE or "
                        "./basestation-state)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every HTTP request")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTPS service and the UDP beacon")
    s.add_argument("--cert", required=True, help="server certificate chain (PEM, leaf first)")
    s.add_argument("--key", required=True, help="server private key (PEM)")
    s.add_argument("--ca", required=True, help="the CA boards pin (DER), for the beacon")
    s.add_argument("--bind", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8443)
    s.add_argument("--mqtt-host", default="127.0.0.1", help="broker host given to devices")
    s.add_argument("--mqtt-port", type=int, required=True,
                   help="the broker's user name + password TLS listener")
    s.add_argument("--mqtt-server-hostname", help="name in the broker's certificate "
                                                  "(default --mqtt-host)")
    s.add_argument("--password-file", required=True, help="Mosquitto's password_file")
    s.add_argument("--mosquitto-pid", type=int, help="broker to SIGHUP after a change")
    s.add_argument("--beacon-port", type=int, default=0, help="UDP beacon port (0: off)")
    s.add_argument("--beacon-addr", default="255.255.255.255")
    s.add_argument("--beacon-interval", type=float, default=5.0, help="seconds")
    ls = sub.add_parser("list", help="requests waiting for a decision, and devices")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="also decided and expired requests")
    for name, text in (("approve", "allow a pending request"), ("deny", "deny a pending request")):
        d = sub.add_parser(name, help=text)
        d.add_argument("ref", metavar="ID", help="request id, or a device id with one pending "
                                                 "request")
    r = sub.add_parser("revoke", help="remove a device's MQTT credentials")
    r.add_argument("device_id", metavar="ID")
    sub.add_parser("operator-password", help="set the web page's password (read from stdin)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s basestation %(levelname)s %(message)s")
    try:
        return COMMANDS[args.command](args, Store(args.state))
    except BaseStationError as exc:
        print("basestation: %s" % exc, file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
