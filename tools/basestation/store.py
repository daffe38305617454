"""The base station's state in SQLite: requests, decisions, devices, sessions, settings.

No network, no broker: the server and the CLI (another process) share this file.

    store = Store("bs-state", create=True)
    rid = store.add_request("board-7", "Kitchen", "0.1.0", nonce_hex, "192.0.2.7", code, now)
    store.decide(str(rid), True, now, "cli")
"""

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
from pathlib import Path

RELEASE_WINDOW_S = 60        # credentials go to the board within this long after Allow
PENDING_TTL_S = 15 * 60      # an undecided request older than this is expired
SESSION_TTL_S = 12 * 3600
MAX_PENDING = 200            # anyone on the LAN may ask: bound what they can make us keep
# One address may not fill the global bound: a board asks once per boot (its newer request
# replaces its older one), so a few pending per address is already generous.
MAX_PENDING_PER_SOURCE = 4
# Decided requests nobody will ask about again (denied, expired) are kept this long for
# `list --all`, then deleted; released ones stay (the device row points at them).
DECIDED_RETENTION_S = 7 * 24 * 3600
# SQLite integers are signed 64-bit; a larger id from the wire is simply unknown.
MAX_ROW_ID = 2**63 - 1
EXIT_OK, EXIT_STATE, EXIT_USAGE = 0, 1, 2
DB_NAME = "basestation.sqlite"

_REQUEST_ID_RE = re.compile(r"[0-9]{1,12}\Z")

log = logging.getLogger("basestation")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL, name TEXT NOT NULL, firmware TEXT NOT NULL,
    nonce_sha256 TEXT NOT NULL, ip TEXT NOT NULL, asked_s REAL NOT NULL, code TEXT NOT NULL,
    status TEXT NOT NULL, decided_s REAL, decided_by TEXT);
CREATE INDEX IF NOT EXISTS requests_status_ip ON requests (status, ip);
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


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def comparison_code(nonce, cert_der):
    """The 6 digits the board prints and the page shows (same formula as provision.py).

        comparison_code(bytes(16), cert_der)   # -> e.g. "048213"
    """
    digest = hashlib.sha256(nonce + hashlib.sha256(cert_der).digest()).digest()
    return "%06d" % (int.from_bytes(digest, "big") % 10**6)


def hash_password(password, salt=None):
    """scrypt, salted: what the settings table keeps for the operator's password.

        hash_password("correct horse battery")   # -> "scrypt$16384$8$1$<salt>$<digest>"
    """
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return "scrypt$16384$8$1$%s$%s" % (base64.b64encode(salt).decode(),
                                       base64.b64encode(digest).decode())


def check_password(password, stored):
    """True if ``password`` matches a hash_password() result; each call costs 16 MiB.

        check_password("correct horse battery", store.setting("operator_password"))
    """
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
    ``create=False`` (the CLI's commands) refuses a directory that holds no state, so a
    mistyped ``--state`` is an error instead of a new empty base station.
    """

    def __init__(self, state_dir, create=True):
        self.dir = Path(state_dir)
        self.path = self.dir / DB_NAME
        if not create and not self.path.is_file():
            what = "does not exist" if not self.dir.exists() else "holds no %s" % DB_NAME
            raise BaseStationError("state directory %s %s (mistyped --state? "
                                   "`operator-password` makes a new one)" % (self.dir, what),
                                   EXIT_USAGE)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
            with self._db() as db:
                db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise BaseStationError("state directory %s: %s" % (self.dir, exc), EXIT_USAGE) \
                from None

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
                       (sha256_hex(token.encode()), csrf, now))
        return token, csrf

    def session_csrf(self, token, now):
        """The session's CSRF token if the cookie names a live session, else None."""
        if not token:
            return None
        with self._db() as db:
            row = db.execute("SELECT csrf, created_s FROM sessions WHERE token_sha256=?",
                             (sha256_hex(token.encode()),)).fetchone()
        if row is None or now - row["created_s"] > SESSION_TTL_S:
            return None
        return row["csrf"]

    def logout(self, token):
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE token_sha256=?", (sha256_hex(token.encode()),))

    # --- requests ---------------------------------------------------------------------
    def add_request(self, device_id, name, firmware, nonce_hex, ip, code, now):
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            # The same board asking again (new nonce) replaces its older pending request,
            # which is deleted (kept, 3,000 reboots were 4.8 MB); a lookalike from another
            # address does not replace it.
            db.execute("DELETE FROM requests WHERE device_id=? AND ip=? AND status='pending'",
                       (device_id, ip))
            db.execute("DELETE FROM requests WHERE status IN ('denied', 'expired', "
                       "'superseded') AND COALESCE(decided_s, asked_s) < ?",
                       (now - DECIDED_RETENTION_S,))
            live = now - PENDING_TTL_S
            from_ip = db.execute("SELECT COUNT(*) FROM requests WHERE status='pending' AND "
                                 "ip=? AND asked_s >= ?", (ip, live)).fetchone()[0]
            pending = db.execute("SELECT COUNT(*) FROM requests WHERE status='pending' AND "
                                 "asked_s >= ?", (live,)).fetchone()[0]
            if from_ip >= MAX_PENDING_PER_SOURCE or pending >= MAX_PENDING:
                db.execute("ROLLBACK")
                if from_ip >= MAX_PENDING_PER_SOURCE:
                    raise BaseStationError("%d requests from %s already wait for a decision"
                                           % (from_ip, ip))
                raise BaseStationError("%d requests already wait for a decision" % pending)
            cur = db.execute(
                "INSERT INTO requests (device_id, name, firmware, nonce_sha256, ip, asked_s, "
                "code, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                (device_id, name, firmware, sha256_hex(nonce_hex.encode()), ip, now, code))
            db.execute("COMMIT")
            return cur.lastrowid

    def requests(self, now=None, status=None):
        with self._db() as db:
            if now is not None:
                db.execute("UPDATE requests SET status='expired', decided_s=? WHERE "
                           "status='pending' AND asked_s < ?", (now, now - PENDING_TTL_S))
            if status:
                rows = db.execute("SELECT * FROM requests WHERE status=? ORDER BY id",
                                  (status,)).fetchall()
            else:
                rows = db.execute("SELECT * FROM requests ORDER BY id").fetchall()
        return [_public(dict(r)) for r in rows]

    def count_requests(self):
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def find_pending(self, ref):
        """A pending request by id, or by device id when exactly one is pending for it."""
        ref = str(ref)
        pending = self.requests(status="pending")
        if _REQUEST_ID_RE.match(ref):
            match = [r for r in pending if r["id"] == int(ref)]
            if not match:
                raise BaseStationError("request %s is not pending (see `list`)" % ref)
            return match[0]
        match = [r for r in pending if r["device_id"] == ref]
        if not match:
            raise BaseStationError("no pending request from device %s (see `list`)"
                                   % ref[:64])
        if len(match) > 1:
            raise BaseStationError(
                "%d pending requests claim device id %s (ids %s): compare the codes and "
                "approve one by its request id" % (len(match), ref,
                                                   ", ".join(str(r["id"]) for r in match)))
        return match[0]

    def enrolled(self, device_id):
        """The device's status if it holds credentials (provisioned, confirmed), else None."""
        with self._db() as db:
            row = db.execute("SELECT status FROM devices WHERE device_id=? AND status IN "
                             "('provisioned', 'confirmed')", (device_id,)).fetchone()
        return row["status"] if row else None

    def decide(self, ref, allow, now, by, reserved=(), replace=False):
        """Allow or deny a pending request; returns it.

        Allowing refuses a reserved id (one the broker's ACL names: it would read every
        reading) and, unless ``replace``, an id that already holds credentials (approving it
        would silently hand them to whoever asked).

            store.decide("3", True, now, "cli", reserved={"collector"}, replace=False)
        """
        request = self.find_pending(ref)
        device_id = request["device_id"]
        if allow and device_id in reserved:
            raise BaseStationError("device id %s is reserved (named in the broker's ACL): "
                                   "request %d cannot be approved" % (device_id, request["id"]))
        if allow and not replace and self.enrolled(device_id):
            raise BaseStationError("device %s already has credentials: approving request %d "
                                   "would replace them (use --replace to re-enrol it)"
                                   % (device_id, request["id"]))
        with self._db() as db:
            cur = db.execute("UPDATE requests SET status=?, decided_s=?, decided_by=? "
                             "WHERE id=? AND status='pending'",
                             ("approved" if allow else "denied", now, by, request["id"]))
            if cur.rowcount != 1:
                raise BaseStationError("request %d was decided meanwhile" % request["id"])
        log.info("request %d from %s (%s) %s by %s%s", request["id"], device_id,
                 request["ip"], "approved" if allow else "denied", by,
                 " (replacing its credentials)" if allow and replace else "")
        return request

    def release(self, request_id, device_id, nonce_hex, ip, now, issue):
        """The outcome for a poll: ("approved", password) once, else (status, None).

        Anything that does not match the request's device id, nonce and address is
        "unknown", so a stranger learns nothing. ``issue(device_id)`` creates the MQTT
        password; it runs inside the transaction, so two polls cannot both get one.
        """
        if not 0 < request_id <= MAX_ROW_ID:
            return "unknown", None
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
                if (row is None or row["device_id"] != device_id or row["ip"] != ip
                        or not hmac.compare_digest(row["nonce_sha256"],
                                                   sha256_hex(nonce_hex.encode()))):
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
                    db.execute("UPDATE requests SET status=?, decided_s=? WHERE id=?",
                               (status, now, request_id))
                db.execute("COMMIT")
                return status, None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def confirm(self, request_id, device_id, nonce_hex, now):
        if not 0 < request_id <= MAX_ROW_ID:
            return False
        with self._db() as db:
            row = db.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
            if (row is None or row["device_id"] != device_id or row["status"] != "released"
                    or not hmac.compare_digest(row["nonce_sha256"],
                                               sha256_hex(nonce_hex.encode()))):
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
