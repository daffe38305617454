"""Store every reading the boards deliver, exactly once, and say what is missing.

Two ways in, one store:
- MQTTS: subscribes to ``devices/+/readings`` and ``devices/+/status`` with its own client
  certificate (paho-mqtt), QoS 1, a persistent session (clean_session false, fixed client id)
  and manual acknowledgement: the PUBACK for a reading goes to the broker only after the
  reading is committed, so a collector killed mid-stream loses nothing the broker handed it.
- JSON lines over TLS (``--jsonl-port``): one reading per line, answered ``{"ack": seq}``
  (or ``{"nack": seq, "reason": ...}`` when it is refused and kept as a reject); a status
  line (no "seq") is answered ``{"ack": "status"}``, ``{"ping": 1}`` with ``{"pong": 1}``. Boards must
  present a certificate from the CA; its CN must be the reading's device id.

Storage: SQLite in WAL mode by default, PostgreSQL with ``--db postgresql://...`` (psycopg 3).
(device_id, seq) is unique: QoS 1 resends are absorbed and counted, never stored twice.
Storage dedupes by (device, seq), never by packet id (a resend may carry a new packet id).
A payload that is not JSON or fails validation goes to ``rejects`` with the reason.

    python tools/collector.py serve --broker 127.0.0.1:8883 --ca certs/ca.pem \\
        --cert certs/collector.crt.pem --key certs/collector.key.pem --db readings.db
    python tools/collector.py report --db readings.db
"""

import argparse
import json
import math
import signal
import socketserver
import ssl
import sys
import threading
import time

_MAX_LINE_BYTES = 4096
_MAX_PAYLOAD_BYTES = 4096
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")

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


class CollectorError(Exception):
    """A problem the user can act on (bad --db, unreachable broker): printed, exit 2."""


class Rejected(Exception):
    """A payload that is not a valid reading; str(e) is the reason stored with it."""


def validate(device_id, payload):
    """The reading in payload as a dict, or Rejected(reason).

    >>> validate("b1", b'{"id":"b1","seq":1,"timestamp":5,"status":0,"voltage":230.0,"freq":50.0}')["seq"]
    1
    """
    if len(payload) > _MAX_PAYLOAD_BYTES:
        raise Rejected("payload of %d bytes exceeds %d" % (len(payload), _MAX_PAYLOAD_BYTES))
    try:
        r = json.loads(payload)
    except ValueError as exc:
        raise Rejected("not JSON: %s" % exc) from None
    if not isinstance(r, dict):
        raise Rejected("not a JSON object")
    if r.get("id") != device_id:
        raise Rejected("id %r does not match the sender %r" % (r.get("id"), device_id))
    for name in ("seq", "timestamp", "status"):
        v = r.get(name)
        if type(v) is not int or v < 0 or v >= 2 ** 63:
            raise Rejected("%s must be a non-negative integer, got %r" % (name, v))
    if r["seq"] < 1:
        raise Rejected("seq must be >= 1")
    for name in ("voltage", "freq"):
        v = r.get(name)
        if type(v) not in (int, float) or not math.isfinite(v):
            raise Rejected("%s must be a finite number, got %r" % (name, v))
    return r


def _is_device_id(text):
    return 1 <= len(text) <= 64 and set(text) <= _ID_CHARS


class Store:
    """readings / devices / rejects in SQLite (WAL) or PostgreSQL; thread-safe by one lock."""

    def __init__(self, url):
        self.url = url
        self.lock = threading.Lock()
        if url.startswith(("postgresql://", "postgres://")):
            import psycopg
            try:
                self.db = psycopg.connect(url, autocommit=False)
            except psycopg.Error as exc:
                raise CollectorError("cannot connect to PostgreSQL: %s" % exc) from None
            self.kind = "postgresql"
            self.mark = "%s"
        else:
            import sqlite3
            path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
            self.db = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.kind = "sqlite"
            self.mark = "?"
        with self.lock:
            cur = self.db.cursor()
            for statement in SCHEMA:
                cur.execute(statement)
            self.db.commit()

    def _sql(self, text):
        return text.replace("?", self.mark)

    def _device(self, cur, device_id):
        cur.execute(self._sql("INSERT INTO devices (device_id) VALUES (?) "
                              "ON CONFLICT (device_id) DO NOTHING"), (device_id,))

    def add_reading(self, device_id, r):
        """Store r; True if new, False if (device_id, seq) was already there (counted)."""
        with self.lock:
            cur = self.db.cursor()
            now = time.time()
            cur.execute(self._sql(
                "INSERT INTO readings (device_id, seq, created_at, saved_at, voltage, frequency,"
                " status) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING"),
                (device_id, r["seq"], r["timestamp"], now, float(r["voltage"]),
                 float(r["freq"]), r["status"]))
            new = cur.rowcount == 1
            self._device(cur, device_id)
            cur.execute(self._sql("UPDATE devices SET last_seen = ?, duplicates = duplicates + ?"
                                  " WHERE device_id = ?"), (now, 0 if new else 1, device_id))
            self.db.commit()
            return new

    def add_status(self, device_id, payload):
        """Keep the board's latest status; dropped/torn are totals since its outbox began."""
        with self.lock:
            cur = self.db.cursor()
            self._device(cur, device_id)
            text = payload.decode("utf-8", "replace")[:1000]
            try:
                s = json.loads(payload)
            except ValueError:
                s = {}
            dropped = s.get("dropped") if isinstance(s, dict) else None
            torn = s.get("torn") if isinstance(s, dict) else None
            cur.execute(self._sql(
                "UPDATE devices SET last_status = ?, last_seen = ?, "
                "dropped = CASE WHEN ? > dropped THEN ? ELSE dropped END, "
                "torn = CASE WHEN ? > torn THEN ? ELSE torn END WHERE device_id = ?"),
                (text, time.time(), *(2 * [dropped if type(dropped) is int else 0]),
                 *(2 * [torn if type(torn) is int else 0]), device_id))
            self.db.commit()

    def add_reject(self, source, device_id, payload, reason):
        with self.lock:
            cur = self.db.cursor()
            cur.execute(self._sql("INSERT INTO rejects (received_at, source, device_id, payload,"
                                  " reason) VALUES (?, ?, ?, ?, ?)"),
                        (time.time(), source, device_id,
                         payload[:_MAX_PAYLOAD_BYTES].decode("utf-8", "replace"), reason))
            self.db.commit()

    def report(self):
        """Per device: stored, duplicates, gaps [(first, last)], dropped, torn, last_seen."""
        with self.lock:
            cur = self.db.cursor()
            cur.execute("SELECT device_id, duplicates, dropped, torn, last_seen, last_status "
                        "FROM devices ORDER BY device_id")
            devices = cur.fetchall()
            out = []
            for device_id, duplicates, dropped, torn, last_seen, last_status in devices:
                cur.execute(self._sql("SELECT seq FROM readings WHERE device_id = ? "
                                      "ORDER BY seq"), (device_id,))
                seqs = [row[0] for row in cur.fetchall()]
                out.append({"device_id": device_id, "stored": len(seqs),
                            "first_seq": seqs[0] if seqs else None,
                            "last_seq": seqs[-1] if seqs else None,
                            "duplicates": duplicates, "gaps": gaps(seqs), "dropped": dropped,
                            "torn": torn, "last_seen": last_seen, "last_status": last_status})
            cur.execute("SELECT COUNT(*) FROM rejects")
            rejects = cur.fetchone()[0]
            self.db.commit()
        return {"devices": out, "rejects": rejects}

    def seqs(self, device_id):
        with self.lock:
            cur = self.db.cursor()
            cur.execute(self._sql("SELECT seq FROM readings WHERE device_id = ? ORDER BY seq"),
                        (device_id,))
            rows = [r[0] for r in cur.fetchall()]
            self.db.commit()
            return rows

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


def handle_message(store, source, topic, payload):
    """Route one message: reading, status, or reject. Returns "stored", "duplicate", ..."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "devices" or not _is_device_id(parts[1]):
        store.add_reject(source, None, payload, "unexpected topic %r" % topic[:100])
        return "rejected"
    device_id, kind = parts[1], parts[2]
    if kind == "status":
        store.add_status(device_id, payload)
        return "status"
    if kind != "readings":
        store.add_reject(source, device_id, payload, "unexpected topic %r" % topic[:100])
        return "rejected"
    try:
        reading = validate(device_id, payload)
    except Rejected as exc:
        store.add_reject(source, device_id, payload, str(exc))
        return "rejected"
    return "stored" if store.add_reading(device_id, reading) else "duplicate"


class MqttIngest:
    """paho-mqtt client: persistent session, QoS 1, PUBACK only after the commit."""

    def __init__(self, store, host, port, ca, cert, key, client_id="collector"):
        import paho.mqtt.client as mqtt
        self.store = store
        self.connected = threading.Event()
        self.counts = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.reconnect_delay_set(0.1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def start(self, timeout_s=10):
        self.client.connect_async(self.host, self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout_s):
            self.stop()
            raise CollectorError("could not connect to the broker at %s:%d"
                                 % (self.host, self.port))
        return self

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason == 0:
            client.subscribe([("devices/+/readings", 1), ("devices/+/status", 1)])
            self.connected.set()

    def _on_message(self, client, userdata, msg):
        result = handle_message(self.store, "mqtt", msg.topic, msg.payload)
        self.counts[result] = self.counts.get(result, 0) + 1
        client.ack(msg.mid, msg.qos)  # committed: now the broker may forget it

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


class JsonlServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The JSON-line protocol over TLS with client certificates (CN = device id)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store, host, port, ca, cert, key):
        self.store = store
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.context.load_verify_locations(str(ca))
        self.context.verify_mode = ssl.CERT_REQUIRED
        super().__init__((host, port), _JsonlHandler)
        self.port = self.server_address[1]

    def start(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.shutdown()
        self.server_close()


class _JsonlHandler(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            conn = self.server.context.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        conn.settimeout(300)
        cn = dict(x[0] for x in conn.getpeercert()["subject"]).get("commonName", "")
        stream = conn.makefile("rwb")
        try:
            while True:
                line = stream.readline(_MAX_LINE_BYTES + 1)
                if not line:
                    return
                if len(line) > _MAX_LINE_BYTES:
                    self.server.store.add_reject("jsonl", cn, line, "line longer than %d bytes"
                                                 % _MAX_LINE_BYTES)
                    return
                stream.write(json.dumps(self._answer(cn, line.strip())).encode() + b"\n")
                stream.flush()
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def _answer(self, cn, line):
        store = self.server.store
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if isinstance(message, dict) and "ping" in message:
            return {"pong": 1}
        if isinstance(message, dict) and "status" in message and "seq" not in message:
            store.add_status(cn, line)
            return {"ack": "status"}
        seq = message.get("seq") if isinstance(message, dict) else None
        result = handle_message(store, "jsonl", "devices/%s/readings" % cn, line)
        if result == "rejected":
            return {"nack": seq, "reason": "rejected"}
        return {"ack": seq}


# --- command line -------------------------------------------------------------------------

def _host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return host, int(port)


def cmd_serve(args):
    store = Store(args.db)
    parts = []
    try:
        if args.broker:
            parts.append(MqttIngest(store, args.broker[0], args.broker[1], args.ca, args.cert,
                                    args.key, args.client_id).start())
        if args.jsonl_port is not None:
            server = JsonlServer(store, "127.0.0.1" if args.jsonl_host is None else args.jsonl_host,
                                 args.jsonl_port, args.ca, args.server_cert or args.cert,
                                 args.server_key or args.key).start()
            parts.append(server)
            print(json.dumps({"event": "jsonl_listening", "port": server.port}), flush=True)
        if not parts:
            raise CollectorError("nothing to do: give --broker and/or --jsonl-port")
        print(json.dumps({"event": "collector_ready", "db": store.kind}), flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        stop.wait()
    finally:
        for part in parts:
            part.stop()
        store.close()
    return 0


def cmd_report(args):
    store = Store(args.db)
    report = store.report()
    store.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("device            stored  duplicates  dropped  torn  gaps                 last seen")
    for d in report["devices"]:
        gap_text = ",".join("%d-%d" % tuple(g) if g[0] != g[1] else str(g[0])
                            for g in d["gaps"]) or "-"
        seen = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["last_seen"]))
                if d["last_seen"] else "-")
        print("%-16s  %6d  %10d  %7d  %4d  %-20s %s" % (
            d["device_id"], d["stored"], d["duplicates"], d["dropped"], d["torn"],
            gap_text[:20], seen))
    print("rejects: %d" % report["rejects"])
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="collector", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="receive readings (MQTTS and/or JSON lines) and store them")
    s.add_argument("--db", default="readings.db",
                   help="SQLite file (default readings.db) or postgresql://user@host:port/db")
    s.add_argument("--broker", type=_host_port, help="MQTTS broker HOST:PORT")
    s.add_argument("--ca", required=True, help="CA certificate (PEM) boards and broker chain to")
    s.add_argument("--cert", required=True, help="the collector's client certificate (PEM)")
    s.add_argument("--key", required=True, help="its private key (PEM)")
    s.add_argument("--client-id", default="collector",
                   help="MQTT client id; keep it fixed: the persistent session is keyed by it")
    s.add_argument("--jsonl-port", type=int, help="also serve JSON lines over TLS here (0: any)")
    s.add_argument("--jsonl-host", help="address for the JSON-line listener (default 127.0.0.1)")
    s.add_argument("--server-cert", help="server certificate for the JSON-line listener")
    s.add_argument("--server-key", help="its private key")
    s.set_defaults(func=cmd_serve)
    r = sub.add_parser("report", help="per device: stored, duplicates, gaps, dropped, last seen")
    r.add_argument("--db", default="readings.db", help="as for serve")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(func=cmd_report)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CollectorError as exc:
        print("collector: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
