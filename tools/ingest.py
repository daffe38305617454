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
"""

import argparse
import asyncio
import csv
import hmac
import json
import re
import secrets
import ssl
import sys
import threading
from http import HTTPStatus
from pathlib import Path

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

PATH_PREFIX = "/ingest/"
DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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


class IngestServer:
    """The endpoint, runnable in a background thread (tests, the simulator) or from the CLI.

    Example::

        with IngestServer({"board-1": token}, "server-chain.pem", "server.key") as ingest:
            print(ingest.port)
            ingest.readings["board-1"]          # readings as received, in order
            ingest.send_command("board-1", {"cmd": "set_interval", "interval_ms": 500})
    """

    def __init__(self, tokens, certfile, keyfile, host="127.0.0.1", port=0,
                 on_connect_commands=(), max_size=65536, log=None):
        self.tokens = dict(tokens)
        self.host = host
        self.port = port
        self.max_size = max_size
        self.on_connect_commands = list(on_connect_commands)
        self.readings = {}      # device id -> [reading dict, ...]
        self.refused = []       # (device id or path, reason): never the token
        self.command_acks = {}  # device id -> [ack dict, ...]
        self.connections = 0
        self.log = log or (lambda line: None)
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.load_cert_chain(str(certfile), str(keyfile))
        self._live = {}         # device id -> connection
        self._next_id = 1
        self._loop = None
        self._thread = None
        self._stop = None
        self._ready = threading.Event()
        self._error = None

    # --- handshake ---------------------------------------------------------------------
    def _authorise(self, connection, request):
        path = request.path
        device = path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else ""
        if not DEVICE_ID.match(device):
            self.refused.append((path[:80], "unknown path"))
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
        self.refused.append((device, reason))
        self.log("refused %s: %s" % (device, reason))
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "%s\n" % reason)
        response.headers["WWW-Authenticate"] = 'Bearer realm="securenode-ingest"'
        return response

    # --- one board ---------------------------------------------------------------------
    async def _handler(self, connection):
        device = connection.request.path[len(PATH_PREFIX):]
        self.connections += 1
        self._live[device] = connection
        self.log("connected %s from %s:%d" % ((device,) + connection.remote_address[:2]))
        try:
            for command in self.on_connect_commands:
                await self._send_command(connection, dict(command))
            async for message in connection:
                await self._message(connection, device, message)
        except ConnectionClosed:
            pass
        finally:
            if self._live.get(device) is connection:
                del self._live[device]
            self.log("closed %s (%s)" % (device, connection.close_code))

    async def _message(self, connection, device, message):
        if isinstance(message, bytes):
            await connection.close(1003, "text messages only")
            return
        try:
            data = json.loads(message)
        except ValueError:
            await connection.close(1007, "not JSON")
            return
        if not isinstance(data, dict):
            await connection.close(1007, "not a JSON object")
            return
        if "cmd_ack" in data:
            self.command_acks.setdefault(device, []).append(data)
            self.log("command %s acked by %s: %s" % (data.get("cmd_ack"), device, data))
            return
        if data.get("id") != device or not isinstance(data.get("seq"), int):
            # The token authenticated this device: it may not post as another.
            await connection.close(1008, "reading does not belong to this device")
            return
        self.readings.setdefault(device, []).append(data)
        self.log("reading %s seq %d: %s V %s Hz" % (device, data["seq"], data.get("voltage"),
                                                   data.get("freq")))
        await connection.send(json.dumps({"ack": data["seq"]}))

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
            async with serve(self._handler, self.host, self.port, ssl=self._ssl,
                             process_request=self._authorise, max_size=self.max_size,
                             compression=None, ping_interval=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                self._ready.set()
                await self._stop.wait()
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
                          log=lambda line: print(line, flush=True))
    server.start()
    print("ingest listening on wss://%s:%d%s<device_id> for %d device(s); Ctrl-C stops"
          % (args.host, server.port, PATH_PREFIX, len(tokens)), flush=True)
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
