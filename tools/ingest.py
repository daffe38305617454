"""A wss ingest endpoint for SecureNode boards, built on the `websockets` library.

Each board connects to ``wss://HOST:PORT/ingest/<device_id>`` with ``Authorization:
Bearer <token>``; the token must be the one issued to *that* device (so one device cannot
post as another). A wrong or missing token is answered with HTTP 401 before the upgrade.
Each reading is one text message (the reading's JSON); the endpoint checks it names the
same device and answers ``{"ack": <seq>}``. It can send commands, e.g.
``{"cmd": "set_interval", "interval_ms": 5000, "id": 1}``; the board answers
``{"cmd_ack": 1, "ok": true}``.

    python tools/ingest.py token board-1 --tokens tokens.json     # issue a token
    python tools/ingest.py serve --tokens tokens.json --cert certs/server-chain.pem \\
        --key certs/server.key --port 8443 [--interval-ms 5000]

Tokens file: JSON ``{"board-1": "<token>", ...}`` or CSV lines ``board-1,<token>``.
Tokens are never printed by ``serve``; ``token`` prints the one it issued, once.

Bounds, whatever a peer does: the TLS and WebSocket handshakes each have ``open_timeout_s``;
a message is at most ``max_size`` bytes and at most ``max_queue`` wait unread (websockets'
own limits); ``max_connections`` TCP connections at once and ``max_per_address`` from one
address, counted from the accept, so a connection over a cap is closed before any TLS work
(asyncio gives each TLS connection a 256 KiB buffer); one connection per device (a board that
reconnects replaces its old one);
memory keeps only the last ``keep`` readings, command acks and refusals (the log, one JSON
object per line, is the full record). A message that is not a reading (deep JSON, ``seq``
not a positive integer) closes the connection with one code and one log line.
"""

import argparse
import asyncio
import collections
import csv
import hmac
import json
import re
import secrets
import socket
import ssl
import sys
import threading
from http import HTTPStatus
from pathlib import Path

if __package__ in (None, ""):  # run as `python tools/ingest.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from tools.cli_args import positive  # noqa: E402
from tools.connection_caps import ConnectionCaps  # noqa: E402

PATH_PREFIX = "/ingest/"
DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_INT64_LIMIT = 2 ** 63


class IngestError(Exception):
    """A problem a person fixes: a tokens file that does not parse, a missing certificate."""


def load_tokens(path):
    """Device id -> token, from a JSON object or CSV lines ``device_id,token``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise IngestError("cannot read tokens file %s (%s)" % (path, exc.strerror)) from None
    if text.lstrip().startswith("{"):
        try:
            tokens = json.loads(text)
        except ValueError as exc:
            raise IngestError("%s: not valid JSON (%s)" % (path, exc)) from None
    else:
        tokens = {}
        for n, row in enumerate(csv.reader(text.splitlines()), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise IngestError("%s line %d: expected device_id,token" % (path, n))
            tokens[row[0].strip()] = row[1].strip()
    for device, token in tokens.items():
        if not DEVICE_ID.match(str(device)):
            raise IngestError("%s: %r is not a device id (A-Z a-z 0-9 _ -)" % (path, device))
        if not isinstance(token, str) or len(token) < 16:
            raise IngestError("%s: the token for %s must be a string of 16+ characters"
                              % (path, device))
    return tokens


class Recent(list):
    """A list that keeps only its last ``keep`` items (trimmed in batches, so O(1) amortised).

    >>> r = Recent(2); r.extend([1, 2, 3]); r
    [2, 3]
    """

    def __init__(self, keep):
        super().__init__()
        self.keep = keep
        self.total = 0          # how many were ever added

    def append(self, item):
        super().append(item)
        self.total += 1
        if len(self) > self.keep:
            del self[:len(self) - self.keep]

    def extend(self, items):
        for item in items:
            self.append(item)


def _escaped(value, limit=80):
    """A peer's value, cut to ``limit`` characters, for a log event. Every event goes through
    json.dumps(ensure_ascii=True), so no newline or escape code reaches the log raw.

    >>> _escaped(230.1), _escaped([1] * 50, 8)
    (230.1, '[1, 1, 1...')
    """
    if value is None or type(value) in (bool, float) or (type(value) is int
                                                         and abs(value) < 2 ** 63):
        return value
    if not isinstance(value, str):
        try:
            value = json.dumps(value)
        except (ValueError, RecursionError):
            value = "<%s>" % type(value).__name__
    return value if len(value) <= limit else value[:limit] + "..."


class CappedListener(socket.socket):
    """A listening socket whose accept() closes a connection over the caps at once.

    asyncio's server calls accept() on the socket it was given (``create_server(sock=...)``,
    which websockets' serve passes on), so the caps hold before any TLS or WebSocket work.
    Each accepted connection is counted until asyncio closes it.

    >>> listener = CappedListener(max_open=256, max_per_address=32)
    >>> listener.bind(("127.0.0.1", 0)); listener.listen(128); listener.open
    0
    >>> listener.close()
    """

    def __init__(self, max_open, max_per_address, family=socket.AF_INET):
        # proto TCP, as getaddrinfo gives: asyncio sets TCP_NODELAY only on such sockets.
        super().__init__(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.caps = ConnectionCaps(max_open, max_per_address)
        self.refused = 0

    @property
    def open(self):
        return self.caps.open

    def accept(self):
        while True:
            conn, address = super().accept()  # BlockingIOError when none is waiting
            host = address[0]
            if self.caps.take(host) is None:
                break
            self.refused += 1
            conn.close()
        counted = _CountedSocket(self.family, self.type, self.proto, fileno=conn.detach())
        counted.release = lambda: self.caps.release(host)
        return counted, address


class _CountedSocket(socket.socket):
    """An accepted connection that gives its place back to the listener when it closes."""

    release = None

    def close(self):
        release, self.release = self.release, None
        if release is not None:
            release()
        super().close()


class IngestServer:
    """The endpoint, runnable in a background thread (tests, the simulator) or from the CLI.

    Example::

        with IngestServer({"board-1": token}, "server-chain.pem", "server.key") as ingest:
            print(ingest.port)
            ingest.readings["board-1"]          # the last `keep` readings, in order
            ingest.send_command("board-1", {"cmd": "set_interval", "interval_ms": 500})
    """

    def __init__(self, tokens, certfile, keyfile, host="127.0.0.1", port=0,
                 on_connect_commands=(), max_size=4096, log=None, keep=1000,
                 max_connections=256, max_per_address=32, open_timeout_s=10.0, max_queue=4):
        self.tokens = dict(tokens)
        self.host = host
        self.port = port
        self.max_size = max_size
        self.max_queue = max_queue
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.open_timeout_s = open_timeout_s
        self.keep = keep
        self.on_connect_commands = list(on_connect_commands)
        self.readings = {}      # device id -> Recent([reading dict, ...]); devices hold tokens
        self.refused = collections.deque(maxlen=keep)  # (device id or path, reason), no token
        self.command_acks = {}  # device id -> Recent([ack dict, ...])
        self.counts = collections.Counter()  # readings, refusals, closes: totals
        self.connections = 0
        self.log = log or (lambda line: None)
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            self._ssl.load_cert_chain(str(certfile), str(keyfile))
        except (OSError, ssl.SSLError) as exc:
            raise IngestError("cannot load the server certificate %s / key %s: %s"
                              % (certfile, keyfile, getattr(exc, "strerror", None) or exc)) \
                from None
        self._live = {}         # device id -> connection
        self._closing = set()   # background closes of replaced connections
        self.listener = None
        self._next_id = 1
        self._loop = None
        self._thread = None
        self._stop = None
        self._ready = threading.Event()
        self._error = None

    def _event(self, kind, **fields):
        """One JSON object per log line; every peer value passes through json.dumps."""
        self.log(json.dumps(dict(event=kind, **fields), ensure_ascii=True))

    def _refuse(self, who, reason):
        self.refused.append((who, reason))
        self.counts["refused"] += 1
        self._event("refused", device=who, reason=reason)

    # --- handshake ---------------------------------------------------------------------
    def _authorise(self, connection, request):
        path = request.path
        device = path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else ""
        if not DEVICE_ID.match(device):
            self._refuse(_escaped(path), "unknown path")
            return connection.respond(HTTPStatus.NOT_FOUND, "no such endpoint\n")
        auth = request.headers.get("Authorization", "")
        scheme, _, presented = auth.partition(" ")
        expected = self.tokens.get(device)
        if scheme.lower() != "bearer" or not presented:
            reason = "missing token"
        elif expected is None or not hmac.compare_digest(presented.encode(), expected.encode()):
            # The same answer whether the device is unknown or the token belongs to another.
            reason = "wrong token"
        else:
            return None
        self._refuse(device, reason)
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "%s\n" % reason)
        response.headers["WWW-Authenticate"] = 'Bearer realm="securenode-ingest"'
        return response

    # --- one board ---------------------------------------------------------------------
    async def _handler(self, connection):
        device = connection.request.path[len(PATH_PREFIX):]
        self.connections += 1
        old = self._live.get(device)
        if old is not None:
            # One connection per device: the newest (a board that reconnected) wins. The
            # old one leaves the live set now and closes in the background.
            del self._live[device]
            closing = asyncio.ensure_future(old.close(1008, "replaced by a newer connection"))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        self._live[device] = connection
        self._event("connected", device=device, peer="%s:%d" % connection.remote_address[:2])
        try:
            for command in self.on_connect_commands:
                await self._send_command(connection, dict(command))
            async for message in connection:
                if not await self._message(connection, device, message):
                    break
        except ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - one line and a clean close, no traceback
            self._event("failed", device=device, error=_escaped("%s: %s" % (
                type(exc).__name__, exc), 200))
            await connection.close(1011, "internal error")
        finally:
            if self._live.get(device) is connection:
                del self._live[device]
            self._event("closed", device=device, code=connection.close_code)

    async def _close(self, connection, device, code, reason):
        self.counts["closed_%d" % code] += 1
        self._event("closing", device=device, code=code, reason=reason)
        await connection.close(code, reason)
        return False

    async def _message(self, connection, device, message):
        """Handle one message; False once the connection is being closed."""
        if isinstance(message, bytes):
            return await self._close(connection, device, 1003, "text messages only")
        try:
            data = json.loads(message)
        except ValueError:
            return await self._close(connection, device, 1007, "not JSON")
        except RecursionError:
            return await self._close(connection, device, 1007, "not JSON: nested too deeply")
        if not isinstance(data, dict):
            return await self._close(connection, device, 1007, "not a JSON object")
        if "cmd_ack" in data:
            self.command_acks.setdefault(device, Recent(self.keep)).append(data)
            self._event("command_ack", device=device, id=_escaped(data.get("cmd_ack")),
                        ok=data.get("ok") is True)
            return True
        if data.get("id") != device:
            # The token authenticated this device: it may not post as another.
            return await self._close(connection, device, 1008,
                                     "reading does not belong to this device")
        seq = data.get("seq")
        if type(seq) is not int or not 1 <= seq < _INT64_LIMIT:
            return await self._close(connection, device, 1007,
                                     "seq must be an integer from 1 to 2**63-1")
        self.readings.setdefault(device, Recent(self.keep)).append(data)
        self.counts["readings"] += 1
        self._event("reading", device=device, seq=seq, voltage=_escaped(data.get("voltage")),
                    freq=_escaped(data.get("freq")))
        await connection.send(json.dumps({"ack": seq}))
        return True

    async def _report_refusals(self, every_s=5.0):
        # Connections closed at the accept are counted, not logged one by one: a flood
        # must not become a flood of log lines. One summary line per interval at most.
        reported = 0
        while True:
            await asyncio.sleep(every_s)
            if self.listener.refused != reported:
                self._event("refused_at_accept", count=self.listener.refused - reported,
                            total=self.listener.refused)
                reported = self.listener.refused

    async def _send_command(self, connection, command):
        command.setdefault("id", self._next_id)
        self._next_id += 1
        await connection.send(json.dumps(command))
        return command["id"]

    def send_command(self, device, command, timeout=5):
        """Send a command to a connected device; returns its id (thread-safe)."""
        connection = self._live.get(device)
        if connection is None:
            raise IngestError("%s is not connected" % device)
        future = asyncio.run_coroutine_threadsafe(
            self._send_command(connection, dict(command)), self._loop)
        return future.result(timeout)

    # --- lifecycle ---------------------------------------------------------------------
    async def _main(self):
        self._stop = asyncio.Event()
        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            self.listener = CappedListener(self.max_connections, self.max_per_address, family)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((self.host, self.port))
            self.listener.listen(128)
            async with serve(self._handler, sock=self.listener, ssl=self._ssl,
                             process_request=self._authorise, max_size=self.max_size,
                             max_queue=self.max_queue, open_timeout=self.open_timeout_s,
                             compression=None, ping_interval=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                self._ready.set()
                reporter = asyncio.ensure_future(self._report_refusals())
                await self._stop.wait()
                reporter.cancel()
        except Exception as exc:
            self._error = exc
            self._ready.set()

    def start(self, timeout=10):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise IngestError("ingest endpoint did not start within %ss" % timeout)
        if self._error is not None:
            raise IngestError("ingest endpoint failed to start: %s" % self._error)
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    def stop(self):
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --- command line ---------------------------------------------------------------------
def cmd_serve(args):
    tokens = load_tokens(args.tokens)
    commands = []
    if args.interval_ms:
        commands.append({"cmd": "set_interval", "interval_ms": args.interval_ms})
    for path in (args.cert, args.key):
        if not Path(path).is_file():
            raise IngestError("%s not found (make certs, or tools/certs.py server)" % path)
    server = IngestServer(tokens, args.cert, args.key, args.host, args.port, commands,
                          log=lambda line: print(line, flush=True), keep=args.keep,
                          max_size=args.max_size, max_connections=args.max_connections,
                          max_per_address=args.max_per_address,
                          open_timeout_s=args.open_timeout_s)
    server.start()
    print(json.dumps({"event": "listening", "url": "wss://%s:%d%s<device_id>" % (
        args.host, server.port, PATH_PREFIX), "port": server.port, "devices": len(tokens)}),
        flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        server.stop()
    return 0


def cmd_token(args):
    path = Path(args.tokens)
    tokens = load_tokens(path) if path.exists() else {}
    if not DEVICE_ID.match(args.device_id):
        raise IngestError("%r is not a device id (A-Z a-z 0-9 _ -)" % args.device_id)
    if args.device_id in tokens and not args.replace:
        raise IngestError("%s already has a token in %s (--replace issues a new one)"
                          % (args.device_id, path))
    tokens[args.device_id] = secrets.token_urlsafe(32)
    path.write_text(json.dumps(tokens, indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)
    print("token for %s (put it in the board's config.json as wss.token):" % args.device_id)
    print(tokens[args.device_id])
    return 0


COMMANDS = {"serve": cmd_serve, "token": cmd_token}


def build_parser():
    parser = argparse.ArgumentParser(prog="python tools/ingest.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the endpoint until Ctrl-C",
                       description="Accept readings over wss from boards holding a token.")
    p.add_argument("--tokens", required=True, help="JSON or CSV file of device_id -> token")
    p.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    p.add_argument("--key", required=True, help="server private key (PEM)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443)")
    p.add_argument("--interval-ms", type=int, default=0,
                   help="send set_interval with this value to each board as it connects")
    p.add_argument("--max-connections", type=positive(int), default=256,
                   help="TCP connections at once, ~300 KiB each with TLS (256); more are "
                        "closed at the accept")
    p.add_argument("--max-per-address", type=positive(int), default=32,
                   help="TCP connections at once from one address (32)")
    p.add_argument("--max-size", type=positive(int), default=4096,
                   help="largest message in bytes (4096); a larger one closes with 1009")
    p.add_argument("--keep", type=positive(int), default=1000,
                   help="readings, acks and refusals kept in memory per device (1000)")
    p.add_argument("--open-timeout-s", type=positive(float), default=10.0,
                   help="seconds for the TLS handshake, and again for the WebSocket one (10)")
    p = sub.add_parser("token", help="issue a token for a device",
                       description="Add a fresh random token for DEVICE_ID to the tokens file.")
    p.add_argument("device_id")
    p.add_argument("--tokens", required=True, help="tokens file (JSON; created if missing)")
    p.add_argument("--replace", action="store_true", help="replace an existing token")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except IngestError as exc:
        print("ingest: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
