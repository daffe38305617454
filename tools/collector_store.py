"""The collector's store and its one gate: validate a message, store it once, or keep it as a
reject with the reason.

A message from the wire never stops storage. Whatever is wrong with it, a malformed number,
4 KB of nested arrays, a counter too large for a 64-bit column, or a failure nobody foresaw,
ends up in ``rejects`` with the reason, and the caller acknowledges it as handled. Only a
failure of the store itself (the database is gone) reaches the caller as ``StoreError``:
then nothing is acknowledged and the message comes back after a restart.

    store = Store("readings.db")
    handle_message(store, "mqtt", "devices/b1/readings", b'{"id":"b1","seq":1,...}')
"""

import json
import math
import threading
import time

MAX_PAYLOAD_BYTES = 4096
_INT64_LIMIT = 2 ** 63
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS readings (
        device_id TEXT NOT NULL, seq BIGINT NOT NULL, created_at BIGINT NOT NULL,
        saved_at DOUBLE PRECISION NOT NULL, voltage DOUBLE PRECISION NOT NULL,
        frequency DOUBLE PRECISION NOT NULL, status INTEGER NOT NULL,
        UNIQUE (device_id, seq))""",
    """CREATE TABLE IF NOT EXISTS devices (
        device_id TEXT PRIMARY KEY, duplicates BIGINT NOT NULL DEFAULT 0,
        dropped BIGINT NOT NULL DEFAULT 0, torn BIGINT NOT NULL DEFAULT 0,
        last_seen DOUBLE PRECISION, last_status TEXT)""",
    """CREATE TABLE IF NOT EXISTS rejects (
        received_at DOUBLE PRECISION NOT NULL, source TEXT NOT NULL, device_id TEXT,
        payload TEXT NOT NULL, reason TEXT NOT NULL)""",
]


# A batch goes in by binary COPY: half the server's and the client's work per row of an
# INSERT (measured: 2.5 against 4.8 us of server CPU per row). COPY has no ON CONFLICT, so a
# batch holding a reading that is already stored (a redelivery) fails on the unique key, is
# rolled back and goes in again by the INSERT below, which skips what is there.
_PG_COPY = ("COPY readings (device_id, seq, created_at, saved_at, voltage, frequency, status)"
            " FROM STDIN (FORMAT BINARY)")
_PG_COPY_TYPES = ("text", "int8", "int8", "float8", "float8", "float8", "int4")
_INT4_MAX = 2 ** 31 - 1     # the status column
# unnest keeps the arrays' order, so rows go in sorted by (device_id, seq) as on SQLite.
# %b: the arrays travel in binary, with no per-element quoting of text.
_PG_INSERT_MANY = (
    "INSERT INTO readings (device_id, seq, created_at, saved_at, voltage, frequency, status)"
    " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::float8[],"
    " %b::float8[], %b::float8[], %b::integer[])"
    " ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id")


# A batch's devices, in sorted order (the order unnest keeps): each row is locked once.
_PG_DEVICES = (
    "INSERT INTO devices (device_id, last_seen, duplicates)"
    " SELECT * FROM unnest(%b::text[], %b::float8[], %b::bigint[])"
    " ON CONFLICT (device_id) DO UPDATE SET last_seen = EXCLUDED.last_seen,"
    " duplicates = devices.duplicates + EXCLUDED.duplicates")


_DECODER = json.JSONDecoder()
_JSON_SPACE = " \t\n\r"


def _json(payload):
    """json.loads for UTF-8 bytes (RFC 8259 8.1), at half its cost per reading.

    json.loads(bytes) guesses the encoding and runs a regex over the whitespace around the
    value: 2.4 us of the collector's ~8 us per reading. raw_decode skips both; the same
    errors are raised by hand.

    >>> _json(b' {"a": 1} ')
    {'a': 1}
    """
    text = payload.decode()
    value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip(_JSON_SPACE)))
    if end != len(text):
        end = len(text) - len(text[end:].lstrip(_JSON_SPACE))
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return value


class CollectorError(Exception):
    """A problem the user can act on (bad --db, unreachable broker): printed, exit 2."""


class StoreError(Exception):
    """The database failed (not the message): nothing may be acknowledged."""


class Rejected(Exception):
    """A payload that is not a valid reading; str(e) is the reason stored with it."""


def _load_object(payload):
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected("payload of %d bytes exceeds %d" % (len(payload), MAX_PAYLOAD_BYTES))
    try:
        r = _json(payload)
    except ValueError as exc:   # UnicodeDecodeError included
        raise Rejected("not JSON: %s" % exc) from None
    except RecursionError:
        # json's C parser recurses once per nesting level: 4 KB of "[" is deep enough.
        raise Rejected("not JSON: nested too deeply") from None
    if not isinstance(r, dict):
        raise Rejected("not a JSON object")
    return r


def _counter(r, name):
    """A non-negative integer that fits the database's 64-bit columns, else Rejected."""
    v = r.get(name)
    if type(v) is not int or not 0 <= v < _INT64_LIMIT:
        raise Rejected("%s must be an integer from 0 to 2**63-1, got %.40r" % (name, v))
    return v


def validate(device_id, payload):
    """The reading in payload as a dict, or Rejected(reason).

    >>> validate("b1", b'{"id":"b1","seq":1,"timestamp":5,"status":0,"voltage":230.0,"freq":50.0}')["seq"]
    1
    """
    r = _load_object(payload)
    if r.get("id") != device_id:
        raise Rejected("id %.80r does not match the sender %r" % (r.get("id"), device_id))
    for name in ("seq", "timestamp", "status"):
        _counter(r, name)
    if r["seq"] < 1:
        raise Rejected("seq must be >= 1")
    for name in ("voltage", "freq"):
        v = r.get(name)
        if type(v) not in (int, float):
            raise Rejected("%s must be a finite number, got %.40r" % (name, v))
        try:
            r[name] = float(v)  # a 400-digit integer raises OverflowError here
        except OverflowError:
            raise Rejected("%s must be a finite number, got an integer of %d digits"
                           % (name, len(str(abs(v))))) from None
        if not math.isfinite(r[name]):
            raise Rejected("%s must be a finite number, got %r" % (name, v))
    return r


def validate_status(payload):
    """A status as a dict; dropped/torn, if present, must fit the 64-bit counters.

    >>> validate_status(b'{"status":"online","dropped":4}')["dropped"]
    4
    """
    s = _load_object(payload)
    for name in ("dropped", "torn"):
        if name in s:
            _counter(s, name)
    return s


def is_device_id(text):
    return 1 <= len(text) <= 64 and set(text) <= _ID_CHARS


def _printable(payload):
    # PostgreSQL text cannot hold NUL; keep every other byte readable and reversible.
    return payload[:MAX_PAYLOAD_BYTES].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class Store:
    """readings / devices / rejects in SQLite (WAL) or PostgreSQL; thread-safe by one lock."""

    def __init__(self, url, create=True):
        self.url = url
        self.lock = threading.Lock()
        self.copy_retries = 0       # PostgreSQL batches COPY refused for a stored reading
        if url.startswith(("postgresql://", "postgres://")):
            import logging

            import psycopg
            # executemany runs in pipeline mode; when the server is gone psycopg also logs
            # "error ignored terminating Pipeline" on stderr. The failure itself reaches
            # the caller as StoreError: keep stderr to that one line.
            logging.getLogger("psycopg").addHandler(logging.NullHandler())
            try:
                self.db = psycopg.connect(url, autocommit=False, connect_timeout=10)
            except psycopg.Error as exc:
                raise CollectorError("cannot connect to PostgreSQL: %s"
                                     % str(exc).strip().splitlines()[0]) from None
            self.kind = "postgresql"
            self.mark = "%s"
            self._db_errors = (psycopg.Error,)
            self._data_errors = (psycopg.DataError, psycopg.IntegrityError)
            self._already_stored = psycopg.errors.UniqueViolation
        else:
            import os
            import sqlite3
            path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
            if not create and not os.path.isfile(path):
                raise CollectorError("--db %s: no such database file" % path)
            try:
                self.db = sqlite3.connect(path, check_same_thread=False, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise CollectorError("--db %s: %s" % (path, exc)) from None
            self.kind = "sqlite"
            self.mark = "?"
            self._db_errors = (sqlite3.Error,)
            # sqlite3 raises the builtin OverflowError for an integer beyond 64 bits.
            self._data_errors = (OverflowError, sqlite3.DataError, sqlite3.IntegrityError)
        try:
            self._write(lambda cur: [cur.execute(statement) for statement in SCHEMA])
        except StoreError as exc:
            raise CollectorError("--db %s: %s" % (url, exc)) from None

    def _sql(self, text):
        return text.replace("?", self.mark)

    def _write(self, work):
        """Run work(cursor) in one transaction.

        A value the database cannot hold is the message's fault: Rejected. Any other
        database failure is the store's: StoreError, and nothing may be acknowledged.
        """
        with self.lock:
            try:
                result = work(self.db.cursor())
                self.db.commit()
                return result
            except BaseException as exc:
                # Whatever failed (a value psycopg cannot even encode, too), the next
                # transaction must not start inside this one's wreckage.
                try:
                    self.db.rollback()
                except self._db_errors:
                    pass
                if not isinstance(exc, self._data_errors + self._db_errors):
                    raise
                text = "%s: %s" % (type(exc).__name__, (str(exc).strip().splitlines() or [""])[0])
                if isinstance(exc, self._data_errors):
                    raise Rejected("the database refused it: %s" % text) from None
                raise StoreError(text) from None

    def _device(self, cur, device_id):
        cur.execute(self._sql("INSERT INTO devices (device_id) VALUES (?) "
                              "ON CONFLICT (device_id) DO NOTHING"), (device_id,))

    def add_reading(self, device_id, r):
        """Store a validated r; True if new, False if (device_id, seq) was already there."""
        def work(cur):
            now = time.time()
            cur.execute(self._sql(
                "INSERT INTO readings (device_id, seq, created_at, saved_at, voltage, frequency,"
                " status) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING"),
                (device_id, r["seq"], r["timestamp"], now, r["voltage"], r["freq"], r["status"]))
            new = cur.rowcount == 1
            self._device(cur, device_id)
            cur.execute(self._sql("UPDATE devices SET last_seen = ?, duplicates = duplicates + ?"
                                  " WHERE device_id = ?"), (now, 0 if new else 1, device_id))
            return new
        return self._write(work)

    def add_status(self, device_id, payload, status):
        """Keep the board's latest status; dropped/torn are totals since its outbox began."""
        def work(cur):
            self._device(cur, device_id)
            self._status(cur, device_id, payload, status, time.time())
        self._write(work)

    def _status(self, cur, device_id, payload, status, now):
        dropped, torn = status.get("dropped", 0), status.get("torn", 0)
        cur.execute(self._sql(
            "UPDATE devices SET last_status = ?, last_seen = ?, "
            "dropped = CASE WHEN ? > dropped THEN ? ELSE dropped END, "
            "torn = CASE WHEN ? > torn THEN ? ELSE torn END WHERE device_id = ?"),
            (_printable(payload)[:1000], now, dropped, dropped, torn, torn, device_id))

    def add_reject(self, source, device_id, payload, reason):
        self._write(lambda cur: self._reject(cur, source, device_id, payload, reason,
                                             time.time()))

    def _reject(self, cur, source, device_id, payload, reason, now):
        cur.execute(self._sql(
            "INSERT INTO rejects (received_at, source, device_id, payload, reason)"
            " VALUES (?, ?, ?, ?, ?)"),
            (now, source, device_id, _printable(payload), reason[:500]))

    def add_batch(self, source, routed):
        """Store many routed messages in one transaction; counts by outcome.

        routed is [((kind, device_id, value), payload)] from route(). All or nothing: a
        value the database refuses raises Rejected for the whole batch (the caller then
        retries one message at a time), a database failure raises StoreError. PostgreSQL
        takes the readings by COPY, or by INSERT ... ON CONFLICT DO NOTHING when the batch
        holds one already stored.

        Devices are visited in sorted order and each device's readings by seq, so two
        collectors writing overlapping batches into one PostgreSQL take row and index
        locks in the same order and cannot deadlock.
        """
        by_device = {}
        rejects = []
        for (kind, device_id, value), payload in routed:
            if kind == "reject":
                rejects.append((device_id, payload, value))
            else:
                by_device.setdefault(device_id, ([], []))[kind == "status"].append(
                    (value, payload))
        counts = {"stored": 0, "duplicate": 0, "status": 0, "rejected": len(rejects)}
        insert = self._sql(
            "INSERT INTO readings (device_id, seq, created_at, saved_at, voltage, frequency,"
            " status) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING")
        touch = self._sql("UPDATE devices SET last_seen = ?, duplicates = duplicates + ?"
                          " WHERE device_id = ?")

        def work(cur):
            now = time.time()
            devices = sorted(by_device)
            rows = sorted((device_id, r["seq"], r["timestamp"], now, r["voltage"], r["freq"],
                           r["status"]) for device_id in devices
                          for r, _ in by_device[device_id][0])
            new = dict.fromkeys(devices, 0)
            if rows and self.kind == "postgresql":
                self._pg_readings(cur, rows, new)
            elif rows:
                for device_id in devices:
                    mine = [row for row in rows if row[0] == device_id]
                    if mine:
                        cur.executemany(insert, mine)
                        new[device_id] = cur.rowcount   # summed over the rows by sqlite3
            for device_id in devices:
                readings, statuses = by_device[device_id]
                counts["stored"] += new[device_id]
                counts["duplicate"] += len(readings) - new[device_id]
                counts["status"] += len(statuses)
            if self.kind == "postgresql":
                # Every device in one statement, statuses, rejects and the COMMIT in one
                # round trip (pipeline mode): the writer thread waits for the server, then
                # for the GIL, once per round trip (14 times a batch before, now 5).
                # _write's own commit() then finds no transaction open and sends nothing.
                with self.db.pipeline():
                    if devices:
                        cur.execute(_PG_DEVICES, [devices, [now] * len(devices), [
                            len(by_device[d][0]) - new[d] for d in devices]])
                    self._statuses_and_rejects(cur, source, by_device, devices, rejects, now)
                    self.db.commit()
            else:
                for device_id in devices:
                    self._device(cur, device_id)
                    cur.execute(touch, (now, len(by_device[device_id][0]) - new[device_id],
                                        device_id))
                self._statuses_and_rejects(cur, source, by_device, devices, rejects, now)
            return counts
        return self._write(work)

    def _statuses_and_rejects(self, cur, source, by_device, devices, rejects, now):
        for device_id in devices:
            for status, payload in by_device[device_id][1]:
                self._status(cur, device_id, payload, status, now)
        for device_id, payload, reason in rejects:
            self._reject(cur, source, device_id, payload, reason, now)

    def _pg_readings(self, cur, rows, new):
        """Insert sorted rows, adding each device's new readings to new[device_id]."""
        # psycopg 3.3.9's binary COPY wraps an int beyond int4 silently (2**40 arrives as
        # 0, measured): a status that does not fit goes by the INSERT, which the server
        # refuses, so the reading becomes a reject as on every other path.
        if max(row[6] for row in rows) <= _INT4_MAX:
            try:
                with cur.copy(_PG_COPY) as copy:
                    copy.set_types(_PG_COPY_TYPES)
                    for row in rows:
                        copy.write_row(row)
            except self._already_stored:
                self.db.rollback()      # nothing else is in this transaction yet
                self.copy_retries += 1
            else:
                for row in rows:
                    new[row[0]] += 1
                return
        # One statement for the whole batch: the server plans it once (one INSERT per row,
        # even pipelined, cost it more than everything else).
        cur.execute(_PG_INSERT_MANY, [list(column) for column in zip(*rows)])
        for (device_id,) in cur.fetchall():
            new[device_id] += 1

    def report(self):
        """Per device: stored, duplicates, gaps [(first, last)], dropped, torn, last_seen."""
        def work(cur):
            cur.execute("SELECT device_id, duplicates, dropped, torn, last_seen, last_status "
                        "FROM devices ORDER BY device_id")
            out = []
            for device_id, duplicates, dropped, torn, last_seen, last_status in cur.fetchall():
                cur.execute(self._sql("SELECT seq FROM readings WHERE device_id = ? "
                                      "ORDER BY seq"), (device_id,))
                seqs = [row[0] for row in cur.fetchall()]
                out.append({"device_id": device_id, "stored": len(seqs),
                            "first_seq": seqs[0] if seqs else None,
                            "last_seq": seqs[-1] if seqs else None,
                            "duplicates": duplicates, "gaps": gaps(seqs), "dropped": dropped,
                            "torn": torn, "last_seen": last_seen, "last_status": last_status})
            cur.execute("SELECT COUNT(*) FROM rejects")
            return {"devices": out, "rejects": cur.fetchone()[0]}
        return self._write(work)

    def rejects(self):
        """[(source, device_id, payload, reason)] in arrival order."""
        def work(cur):
            cur.execute("SELECT source, device_id, payload, reason FROM rejects "
                        "ORDER BY received_at")
            return [tuple(row) for row in cur.fetchall()]
        return self._write(work)

    def seqs(self, device_id):
        def work(cur):
            cur.execute(self._sql("SELECT seq FROM readings WHERE device_id = ? ORDER BY seq"),
                        (device_id,))
            return [r[0] for r in cur.fetchall()]
        return self._write(work)

    def close(self):
        with self.lock:
            self.db.close()


def gaps(seqs):
    """Missing ranges in a sorted seq list, from 1.

    >>> gaps([1, 2, 5, 6, 9])
    [[3, 4], [7, 8]]
    """
    out = []
    expect = 1
    for s in seqs:
        if s > expect:
            out.append([expect, s - 1])
        expect = s + 1
    return out


def route(topic, payload):
    """Validate one message without touching the store: (kind, device_id, value).

    kind is "reading" (value: the reading), "status" (value: the status) or "reject"
    (value: the reason; device_id None if the topic names no device).

    >>> route("devices/b1/readings", b"[1]")
    ('reject', 'b1', 'not a JSON object')
    """
    device_id = None
    try:
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "devices" or not is_device_id(parts[1]):
            raise Rejected("unexpected topic %.100r" % topic)
        device_id, kind = parts[1], parts[2]
        if kind == "status":
            return "status", device_id, validate_status(payload)
        if kind != "readings":
            raise Rejected("unexpected topic %.100r" % topic)
        return "reading", device_id, validate(device_id, payload)
    except Rejected as exc:
        return "reject", device_id, str(exc)
    except Exception as exc:  # noqa: BLE001 - a message must never stop storage
        return "reject", device_id, "unexpected %s: %.200s" % (type(exc).__name__, exc)


def handle_message(store, source, topic, payload):
    """Route one message: "stored", "duplicate", "status" or "rejected".

    Every failure caused by the message is kept in ``rejects`` with its reason, so the
    caller may acknowledge it; only StoreError (the database itself) propagates.

    >>> store = Store(":memory:")
    >>> handle_message(store, "mqtt", "devices/b1/readings", b"[[[")
    'rejected'
    >>> store.rejects()[0][3]
    'not JSON: Expecting value: line 1 column 4 (char 3)'
    """
    return _store_one(store, source, route(topic, payload), payload)


def _store_one(store, source, routed, payload):
    kind, device_id, value = routed
    try:
        if kind == "status":
            store.add_status(device_id, payload, value)
            return "status"
        if kind == "reading":
            return "stored" if store.add_reading(device_id, value) else "duplicate"
        reason = value
    except Rejected as exc:
        reason = str(exc)
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - a message must never stop storage
        reason = "unexpected %s: %.200s" % (type(exc).__name__, exc)
    store.add_reject(source, device_id, payload, reason)
    return "rejected"


def handle_batch(store, source, messages):
    """Store [(topic, payload)] in one transaction; counts by outcome.

    The same outcomes as handle_message for each message, one commit for all. If the
    database refuses one value (or anything unforeseen fails), the batch is rolled back
    and taken one message at a time, so only the culprit becomes a reject. Only
    StoreError (the database itself) propagates: then nothing of the batch is stored.

    >>> store = Store(":memory:")
    >>> good = b'{"id":"b1","seq":1,"timestamp":5,"status":0,"voltage":230.0,"freq":50.0}'
    >>> sorted(handle_batch(store, "mqtt", [("devices/b1/readings", good)] * 2
    ...                     + [("devices/b1/readings", b"[")]).items())
    [('duplicate', 1), ('rejected', 1), ('status', 0), ('stored', 1)]
    """
    return store_routed(store, source, [(route(topic, payload), payload)
                                        for topic, payload in messages])


def store_routed(store, source, routed):
    """handle_batch for messages already routed: [(route(topic, payload), payload)].

    The MQTT consumer routes each message as it arrives (on its reading thread) and hands
    the batch to its writing thread; the payload may then be cut to MAX_PAYLOAD_BYTES,
    all that a reject keeps.
    """
    try:
        return store.add_batch(source, routed)
    except StoreError:
        raise
    except Exception:  # noqa: BLE001 - Rejected or a bug: find the culprit one by one
        counts = {"stored": 0, "duplicate": 0, "status": 0, "rejected": 0}
        for one, payload in routed:
            counts[_store_one(store, source, one, payload)] += 1
        return counts
