"""Store every reading the boards deliver, exactly once, and say what is missing.

Two ways in, one store:
- MQTTS (tools/collector_mqtt.py): subscribes to ``devices/+/readings`` and
  ``devices/+/status`` with its own client certificate, QoS 1, a persistent session
  (clean_session false; the broker keys it by the certificate's CN), batches of up to
  ``--batch-max`` messages in one transaction, and PUBACKs only after that commit, so a
  collector killed mid-stream loses nothing the broker handed it. ``--share-group`` lets
  several collectors (each with its own certificate) split one stream.
- JSON lines over TLS (``--jsonl-port``, tools/collector_jsonl.py: one asyncio loop, a
  connection cap, handshake/line/idle deadlines): one reading per line, answered ``{"ack": seq}``
  (or ``{"nack": seq, "reason": ...}`` when it is refused and kept as a reject); a status
  line (no "seq") is answered ``{"ack": "status"}``, ``{"ping": 1}`` with ``{"pong": 1}``. Boards must
  present a certificate from the CA; its CN must be the reading's device id.

Storage: SQLite in WAL mode by default, PostgreSQL with ``--db postgresql://...`` (psycopg 3).
(device_id, seq) is unique: QoS 1 resends are absorbed and counted, never stored twice.
Storage dedupes by (device, seq), never by packet id (a resend may carry a new packet id).
A payload that is not JSON or fails validation, or fails in any way nobody foresaw, goes to
``rejects`` with the reason and is acknowledged (tools/collector_store.py). If the database
itself fails, or a consumer dies, the process exits 1 with one line saying why: a supervisor
restarts it and the broker resends what was not acknowledged.

    python tools/collector.py serve --broker 127.0.0.1:8883 --ca certs/ca.pem \\
        --cert certs/collector.crt.pem --key certs/collector.key.pem --db readings.db
    python tools/collector.py report --db readings.db
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

if __package__ in (None, ""):  # run as `python tools/collector.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.cli_args import non_negative, positive  # noqa: E402
from tools.collector_store import (  # noqa: E402  (re-exported: the collector's API)
    MAX_PAYLOAD_BYTES, CollectorError, Rejected, Store, StoreError, gaps, handle_message,
    validate, validate_status)

__all__ = ["CollectorError", "MAX_PAYLOAD_BYTES", "Rejected", "Store", "StoreError", "gaps",
           "handle_message", "main", "validate", "validate_status"]


class PartDied(Exception):
    """A consumer or listener died at run time (not a usage mistake): exit 1."""


# --- command line -------------------------------------------------------------------------

def _host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return host, int(port)


def _existing_file(flag, path):
    if path is None:
        return None
    if not os.path.isfile(path):
        raise CollectorError("%s %s: no such file" % (flag, path))
    return path


def cmd_serve(args):
    from tools.collector_jsonl import JsonlServer
    from tools.collector_mqtt import MqttIngest

    if not args.broker and args.jsonl_port is None:
        raise CollectorError("nothing to do: give --broker and/or --jsonl-port")
    if args.ca is None:
        raise CollectorError("--ca is required: the CA certificate (PEM) boards and the "
                             "broker chain to")
    if args.broker and (args.cert is None or args.key is None):
        raise CollectorError("--broker needs --cert and --key: the collector's client "
                             "certificate and its key")
    if args.jsonl_port is not None and (args.server_cert or args.cert) is None:
        raise CollectorError("--jsonl-port needs --server-cert and --server-key (or --cert "
                             "and --key)")
    for flag in ("ca", "cert", "key", "server_cert", "server_key"):
        _existing_file("--" + flag.replace("_", "-"), getattr(args, flag))
    store = Store(args.db)
    # The MQTT consumer's writer thread waits for PostgreSQL a few times a batch and then
    # for the GIL, which the reader (decoding messages in pure Python) yields every switch
    # interval: at the default 5 ms that wait, not the database, set the pace. A backlog
    # into PostgreSQL, 5 runs each alternating, load 8-12: median 0.61x of mosquitto_sub's
    # rate at 5 ms, 0.83x at 1 ms, 0.62x at 0.5 ms (the reader then loses too much).
    sys.setswitchinterval(0.001)
    parts = []
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    try:
        if args.broker:
            parts.append(MqttIngest(store, args.broker[0], args.broker[1], args.ca, args.cert,
                                    args.key, args.client_id, batch_max=args.batch_max,
                                    batch_wait_ms=args.batch_wait_ms,
                                    group=args.share_group).start())
        if args.jsonl_port is not None:
            server = JsonlServer(
                store, "127.0.0.1" if args.jsonl_host is None else args.jsonl_host,
                args.jsonl_port, args.ca, args.server_cert or args.cert,
                args.server_key or args.key, max_clients=args.jsonl_max_clients,
                max_per_address=args.jsonl_max_per_address,
                handshake_s=args.jsonl_handshake_s, line_s=args.jsonl_line_s,
                idle_s=args.jsonl_idle_s).start()
            parts.append(server)
            print(json.dumps({"event": "jsonl_listening", "port": server.port}), flush=True)
        print(json.dumps({"event": "collector_ready", "db": store.kind}), flush=True)
        # Sleep until a signal or until a part dies: never run on as a silent zombie.
        while not stop.wait(0.5):
            dead = [part for part in parts if part.failed.is_set()]
            if dead:
                raise PartDied(dead[0].failure)
    finally:
        stuck = False
        for part in parts:
            if part.stop() is False:
                stuck = True
            if hasattr(part, "batches"):   # the MQTT consumer: what it took, in how many
                print(json.dumps({"event": "mqtt_stopped", "counts": part.counts,
                                  "batches": part.batches, "held_max": part.held_max}),
                      flush=True)
        if stuck:
            # Its writer is inside a database call that does not return: closing the store
            # would wait on it for ever. Nothing it holds was acknowledged (PUBACK only after
            # the commit), so the broker keeps it for the next collector.
            print("collector: stopped while the %s database was not answering; readings "
                  "not yet committed stay with the broker" % store.kind, file=sys.stderr,
                  flush=True)
            os._exit(1)
        store.close()
    return 0


def _share_group(text):
    # MQTT 5 4.8.2: a share name holds no "/", "+" or "#".
    if not text or any(c in text for c in "/+#"):
        raise argparse.ArgumentTypeError("a share group is a non-empty name without / + #, "
                                         "got %r" % text)
    return text


def cmd_report(args):
    store = Store(args.db, create=False)
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
    s.add_argument("--ca", help="CA certificate (PEM) boards and broker chain to (required)")
    s.add_argument("--cert", help="the collector's client certificate (PEM), for --broker")
    s.add_argument("--key", help="its private key (PEM)")
    s.add_argument("--client-id", default="collector",
                   help="MQTT client id; brokers that bind ids to certificates (ours) key the "
                        "persistent session by the certificate's CN instead")
    s.add_argument("--batch-max", type=positive(int), default=500,
                   help="MQTT: messages stored in one transaction at most, then each one "
                        "acknowledged (500)")
    s.add_argument("--batch-wait-ms", type=non_negative(float), default=0.0,
                   help="MQTT: how long a batch may wait for more messages; 0 (default) "
                        "commits what the connection holds at that moment. Above 0 it "
                        "needs the broker to send that many unacknowledged (Mosquitto: "
                        "max_inflight_messages >= --batch-max)")
    s.add_argument("--share-group", type=_share_group,
                   help="MQTT: subscribe as $share/GROUP/devices/+/...: collectors with the "
                        "same group (each with its own certificate) split the stream")
    s.add_argument("--jsonl-port", type=int, help="also serve JSON lines over TLS here (0: any)")
    s.add_argument("--jsonl-host", help="address for the JSON-line listener (default 127.0.0.1)")
    s.add_argument("--server-cert", help="server certificate for the JSON-line listener")
    s.add_argument("--server-key", help="its private key")
    s.add_argument("--jsonl-max-clients", type=positive(int), default=128,
                   help="JSON lines: connections at once, each ~300 KiB with its TLS "
                        "buffers; more are closed at once (128)")
    s.add_argument("--jsonl-max-per-address", type=positive(int), default=16,
                   help="JSON lines: connections at once from one address (16)")
    s.add_argument("--jsonl-handshake-s", type=positive(float), default=10.0,
                   help="JSON lines: seconds for the TLS handshake (10)")
    s.add_argument("--jsonl-line-s", type=positive(float), default=30.0,
                   help="JSON lines: seconds from a line's first byte to its end (30)")
    s.add_argument("--jsonl-idle-s", type=positive(float), default=300.0,
                   help="JSON lines: seconds a connection may stay silent (300)")
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
    except (PartDied, StoreError) as exc:
        print("collector: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
