"""The base station's command line: one function per subcommand, a table of them.

    python -m tools.basestation --state bs operator-password < pw.txt   # makes the state
    python -m tools.basestation --state bs serve --cert ... --password-file ...
    python -m tools.basestation --state bs approve 3 [--replace]

Every command but `operator-password` needs an existing state directory, so a mistyped
``--state`` is an error (exit 2), never a new empty base station.
"""

import argparse
import json
import logging
import math
import os
import signal
import ssl
import sys
import threading
import time

from .broker import MosquittoPasswords, revoke
from .page import utc
from .frontend import (HANDSHAKE_TIMEOUT_S, MAX_CONNECTIONS, MAX_PER_SOURCE, REQUEST_DEADLINE_S,
                       WORKERS, Limits)
from .server import BaseStation
from .store import EXIT_OK, EXIT_USAGE, RELEASE_WINDOW_S, BaseStationError, Store

DESCRIPTION = "SecureNode base station: a person approves a board, the board gets its MQTT " \
              "credentials."
EPILOG = ("Exit status: 0 done; 1 the request or device is not in a state for that (unknown, "
          "not pending, already decided, reserved or already enrolled without --replace, "
          "nothing to revoke, broker not reloaded); 2 a mistake in the command or its input "
          "(bad arguments, no such state directory, a too short operator password, no "
          "password file known for `revoke`).")


def _passwords_from_settings(store):
    path = store.setting("password_file")
    if not path:
        return None
    return MosquittoPasswords(path, store.setting("mosquitto_pid") or None,
                              pid_file=store.setting("mosquitto_pid_file") or None,
                              acl_file=store.setting("acl_file") or None)


def cmd_serve(args, store):
    passwords = MosquittoPasswords(args.password_file, args.mosquitto_pid,
                                   pid_file=args.mosquitto_pid_file, acl_file=args.acl_file)
    passwords.reserved_ids()   # an unreadable ACL is a mistake to report now, not at approval
    beacon = (args.beacon_addr, args.beacon_port) if args.beacon_port else None
    limits = Limits(max_connections=args.max_connections, max_per_source=args.max_per_source,
                    workers=args.workers, handshake_timeout_s=args.handshake_timeout,
                    request_deadline_s=args.request_deadline)
    try:
        station = BaseStation(args.state, args.cert, args.key, args.ca,
                              (args.mqtt_host, args.mqtt_port, args.mqtt_server_hostname or
                               args.mqtt_host), passwords, bind=args.bind, port=args.port,
                              beacon=beacon, beacon_interval_s=args.beacon_interval,
                              limits=limits)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise BaseStationError("cannot serve: %s (check --cert %s, --key %s, --ca %s, --bind "
                               "%s:%d)" % (getattr(exc, "strerror", None) or exc, args.cert,
                                           args.key, args.ca, args.bind, args.port),
                               EXIT_USAGE) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with station:
        print("basestation: https://%s:%d (state %s)" % (args.bind, station.port, args.state),
              flush=True)
        stop.wait()
    return EXIT_OK


def _flags(store, requests):
    """device id -> why approving it needs care (reserved, or already has credentials)."""
    passwords = _passwords_from_settings(store)
    reserved = passwords.reserved_ids() if passwords else set()
    flags = {}
    for r in requests:
        if r["status"] != "pending":
            continue
        if r["device_id"] in reserved:
            flags[r["device_id"]] = "reserved id: cannot be approved"
        elif store.enrolled(r["device_id"]):
            flags[r["device_id"]] = "has credentials: approve --replace to re-enrol"
    return flags


def cmd_list(args, store):
    requests = store.requests(now=time.time())
    if not args.all:
        requests = [r for r in requests if r["status"] in ("pending", "approved")]
    devices = store.devices()
    flags = _flags(store, requests)
    if args.json:
        for r in requests:
            if r["status"] == "pending" and r["device_id"] in flags:
                r["flag"] = flags[r["device_id"]]
        print(json.dumps({"requests": requests, "devices": devices}, indent=2))
        return EXIT_OK
    print("%-5s %-20s %-20s %-15s %-19s %-6s %s" % ("id", "device", "name", "ip", "asked (UTC)",
                                                   "code", "status"))
    for r in requests:
        flag = flags.get(r["device_id"]) if r["status"] == "pending" else None
        print("%-5d %-20s %-20s %-15s %-19s %-6s %s%s" % (
            r["id"], r["device_id"], r["name"][:20], r["ip"], utc(r["asked_s"]), r["code"],
            r["status"], "  (%s)" % flag if flag else ""))
    if devices:
        print("\n%-20s %-12s %s" % ("device", "status", "since (UTC)"))
        for d in devices:
            print("%-20s %-12s %s" % (d["device_id"], d["status"], utc(d["updated_s"])))
    return EXIT_OK


def cmd_approve(args, store):
    passwords = _passwords_from_settings(store)
    r = store.decide(args.ref, True, time.time(), "cli",
                     reserved=passwords.reserved_ids() if passwords else set(),
                     replace=args.replace)
    print("approved request %d (%s at %s, code %s)%s: it has %d s to collect its credentials"
          % (r["id"], r["device_id"], r["ip"], r["code"],
             ", replacing its credentials" if args.replace else "", RELEASE_WINDOW_S))
    return EXIT_OK


def cmd_deny(args, store):
    r = store.decide(args.ref, False, time.time(), "cli")
    print("denied request %d (%s at %s)" % (r["id"], r["device_id"], r["ip"]))
    return EXIT_OK


def cmd_revoke(args, store):
    passwords = _passwords_from_settings(store)
    if passwords is None:
        raise BaseStationError("no password file known: run `serve` once with --password-file",
                               EXIT_USAGE)
    revoke(store, passwords, args.device_id, time.time())
    print("revoked %s: its next MQTT connection is refused" % args.device_id)
    return EXIT_OK


def cmd_operator_password(args, store):
    password = sys.stdin.readline().rstrip("\r\n")
    store.set_operator_password(password)
    print("operator password set (stored as a salted scrypt hash)")
    return EXIT_OK


COMMANDS = {"serve": cmd_serve, "list": cmd_list, "approve": cmd_approve, "deny": cmd_deny,
            "revoke": cmd_revoke, "operator-password": cmd_operator_password}
CREATES_STATE = ("operator-password",)


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text) from None
    if not math.isfinite(value) or not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("%s: must be more than 0 and at most 3600" % text)
    return value


def _count(text):
    if not text.isdigit() or not 1 <= int(text) <= 10000:
        raise argparse.ArgumentTypeError("%r: must be a whole number 1..10000" % text)
    return int(text)


def _port(text):
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError("%r is not a port 0..65535" % text)
    return int(text)


def build_parser():
    p = argparse.ArgumentParser(prog="basestation", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--state", default=os.environ.get("BASESTATION_STATE", "basestation-state"),
                   help="directory of the SQLite state (default $BASESTATION_STATE or "
                        "./basestation-state); only `operator-password` creates it")
    p.add_argument("-v", "--verbose", action="store_true", help="log every HTTP request")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTPS service and the UDP beacon")
    s.add_argument("--cert", required=True, help="server certificate chain (PEM, leaf first)")
    s.add_argument("--key", required=True, help="server private key (PEM)")
    s.add_argument("--ca", required=True, help="the CA boards pin (DER), for the beacon")
    s.add_argument("--bind", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=8443, help="HTTPS port (0: any free one)")
    s.add_argument("--mqtt-host", default="127.0.0.1", help="broker host given to devices")
    s.add_argument("--mqtt-port", type=_port, required=True,
                   help="the broker's user name + password TLS listener")
    s.add_argument("--mqtt-server-hostname", help="name in the broker's certificate "
                                                  "(default --mqtt-host)")
    s.add_argument("--password-file", required=True, help="Mosquitto's password_file")
    pid = s.add_mutually_exclusive_group()
    pid.add_argument("--mosquitto-pid-file", metavar="PATH",
                     help="the broker's pid file, read at every reload (preferred)")
    pid.add_argument("--mosquitto-pid", type=int, metavar="PID",
                     help="broker to SIGHUP after a change (checked to be mosquitto first)")
    s.add_argument("--acl-file", metavar="PATH",
                   help="the broker's ACL: ids it names (`user X`) are never approved")
    s.add_argument("--beacon-port", type=_port, default=0, help="UDP beacon port (0: off)")
    s.add_argument("--beacon-addr", default="255.255.255.255")
    s.add_argument("--beacon-interval", type=_seconds, default=5.0, help="seconds")
    s.add_argument("--max-connections", type=_count, default=MAX_CONNECTIONS,
                   help="connections open at once (default %(default)s)")
    s.add_argument("--workers", type=_count, default=WORKERS,
                   help="threads that answer complete requests (default %(default)s)")
    s.add_argument("--max-per-source", type=_count, default=MAX_PER_SOURCE,
                   help="connections at once from one address (default %(default)s)")
    s.add_argument("--handshake-timeout", type=_seconds, default=HANDSHAKE_TIMEOUT_S,
                   help="seconds for a client's TLS handshake (default %(default)s)")
    s.add_argument("--request-deadline", type=_seconds, default=REQUEST_DEADLINE_S,
                   help="seconds for a whole request, handshake to answer (default "
                        "%(default)s)")
    ls = sub.add_parser("list", help="requests waiting for a decision, and devices")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="also decided and expired requests")
    a = sub.add_parser("approve", help="allow a pending request")
    a.add_argument("ref", metavar="ID", help="request id, or a device id with one pending "
                                             "request")
    a.add_argument("--replace", action="store_true",
                   help="the device id already has credentials: replace them (re-enrol)")
    d = sub.add_parser("deny", help="deny a pending request")
    d.add_argument("ref", metavar="ID", help="request id, or a device id with one pending "
                                             "request")
    r = sub.add_parser("revoke", help="remove a device's MQTT credentials")
    r.add_argument("device_id", metavar="ID")
    sub.add_parser("operator-password", help="set the web page's password (read from stdin); "
                                             "creates the state directory")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s basestation %(levelname)s %(message)s")
    try:
        store = Store(args.state, create=args.command in CREATES_STATE)
        return COMMANDS[args.command](args, store)
    except BaseStationError as exc:
        print("basestation: %s" % exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
