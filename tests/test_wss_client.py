"""securenode/wss_client.py on a simulated board (the real stand-ins, pinned TLS) against
the `websockets` library as the independent peer, and against a hostile raw-TLS server
written here that breaks one rule of RFC 6455 per case.

One board runs every case of a module in turn (tests/wss_board_plan.py is its main.py) and
reports each as events; each test below checks one case. Every case must end in a named
WssError with the right kind and close code, never a hang or a traceback.
"""

import asyncio
import base64
import hashlib
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from conftest import Board
from host_sim.flash import board_command, prepare_flash

PLAN_SCRIPT = (Path(__file__).resolve().parent / "wss_board_plan.py").read_text()
TOKEN = "tok-" + "A1b2C3d4" * 4
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BIG = 70000  # max_message_bytes for the echo cases
SIZES = [0, 125, 126, 65535, 65536, BIG - 1, BIG]


class WebsocketsPeer:
    """The websockets library's server in a thread: echo, fragments, pings, closes, 401."""

    def __init__(self, certfile, keyfile):
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.load_cert_chain(str(certfile), str(keyfile))
        self.port = None
        self.seen = {}           # path -> {"close_code", "close_reason", "pong"}
        self.authorizations = []  # Authorization headers that reached process_request
        self._ready = threading.Event()

    def _process_request(self, connection, request):
        self.authorizations.append(request.headers.get("Authorization"))
        if request.path.startswith("/auth") and \
                request.headers.get("Authorization") != "Bearer " + TOKEN:
            return connection.respond(401, "token refused\n")
        return None

    def _select(self, connection, offered):
        return "ingest.v1" if "ingest.v1" in offered else None

    async def _handler(self, connection):
        path = connection.request.path
        record = self.seen.setdefault(path, {})
        try:
            if path == "/fragments":
                await connection.send(["frag", "mented ", "text"])
                await connection.send([b"\x00\x01", b"", b"\x02"])
            elif path == "/server-ping":
                waiter = await connection.ping(b"srv-ping")
                await asyncio.wait_for(waiter, 5)
                record["pong"] = True
                await connection.send("after ping")
            elif path == "/server-close":
                await connection.close(1001, "going away")
            elif path == "/too-big":
                await connection.send(b"\x00" * 5000)
            async for message in connection:
                await connection.send(message)
        except ConnectionClosed:
            pass
        finally:
            await connection.wait_closed()
            record["close_code"] = connection.close_code
            record["close_reason"] = connection.close_reason

    async def _main(self):
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, ssl=self.ssl,
                         process_request=self._process_request, max_size=2 ** 20,
                         compression=None, ping_interval=None,
                         select_subprotocol=self._select) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def accept(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()


def ok_101(key, extra=""):
    return ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: %s\r\n%s\r\n" % (accept(key), extra)).encode()


# Hostile behaviours: request key -> bytes to send after reading the upgrade request, or
# None for "send nothing at all". Frames here come from the server, so they are unmasked.
HOSTILE = {
    "wrong_accept": lambda key: ok_101(b"not-the-key"),
    "missing_101": lambda key: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "no_upgrade_header": lambda key: ok_101(key).replace(b"Upgrade: websocket\r\n", b""),
    "unoffered_subprotocol": lambda key: ok_101(key, "Sec-WebSocket-Protocol: evil\r\n"),
    "unoffered_extension": lambda key: ok_101(
        key, "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
    "echoes_token": lambda key: ("HTTP/1.1 400 you sent Bearer %s\r\n\r\n" % TOKEN).encode(),
    "masked_frame": lambda key: ok_101(key) + bytes.fromhex("818537fa213d7f9f4d5158"),
    "reserved_bits": lambda key: ok_101(key) + b"\xc1\x05hello",
    "unknown_opcode": lambda key: ok_101(key) + b"\x83\x00",
    "oversized_length": lambda key: ok_101(key) + b"\x82\x7f" + (2 ** 62).to_bytes(8, "big"),
    "fragmented_control": lambda key: ok_101(key) + b"\x09\x00",
    "control_over_125": lambda key: ok_101(key) + b"\x89\x7e\x00\x80" + b"p" * 128,
    "bad_utf8": lambda key: ok_101(key) + b"\x81\x02\xc3\x28",
    "bad_close_code": lambda key: ok_101(key) + b"\x88\x02\x03\xed",
    "close_mid_frame": lambda key: ok_101(key) + b"\x82\x0aabc",
    "never_finishes": lambda key: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: web",
    "silent": lambda key: None,
    "silent_after_upgrade": lambda key: ok_101(key, "Sec-WebSocket-Protocol: mqtt\r\n"),
    # A header we do not judge may be longer than the client's line buffer (skipped); one
    # we judge may not (it would be cut).
    "long_cookie_then_silent": lambda key: ok_101(key, "Set-Cookie: s=%s\r\n" % ("c" * 3000)),
    "long_subprotocol": lambda key: ok_101(key, "Sec-WebSocket-Protocol: %s\r\n" % ("m" * 400)),
}
# case -> (kind, close code sent to the peer or None)
EXPECTED = {
    "wrong_accept": ("ws_handshake", None),
    "missing_101": ("ws_handshake", None),
    "no_upgrade_header": ("ws_handshake", None),
    "unoffered_subprotocol": ("ws_handshake", None),
    "unoffered_extension": ("ws_handshake", None),
    "echoes_token": ("ws_handshake", None),
    "masked_frame": ("ws_protocol", 1002),
    "reserved_bits": ("ws_protocol", 1002),
    "unknown_opcode": ("ws_protocol", 1002),
    "oversized_length": ("ws_protocol", 1009),
    "fragmented_control": ("ws_protocol", 1002),
    "control_over_125": ("ws_protocol", 1002),
    "bad_utf8": ("ws_protocol", 1007),
    "bad_close_code": ("ws_protocol", 1002),
    "close_mid_frame": ("ws_closed", 1006),
    "never_finishes": ("ws_handshake_timeout", None),
    "silent": ("ws_handshake_timeout", None),
    "silent_after_upgrade": ("ws_timeout", None),
    "long_cookie_then_silent": ("ws_timeout", None),
    "long_subprotocol": ("ws_handshake", None),
}
HANDSHAKE_MS = 1500


class HostileServer:
    """A raw TLS server: reads the upgrade request, answers with one behaviour, then keeps
    the connection open and records what the client sends back (its close frame)."""

    def __init__(self, certfile, keyfile, behaviour):
        self.behaviour = behaviour
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(certfile), str(keyfile))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.request = b""
        self.after = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            try:
                self._one(raw)
            except (OSError, ssl.SSLError):
                pass
            finally:
                raw.close()

    def _one(self, raw):
        raw.settimeout(5)
        conn = self.ctx.wrap_socket(raw, server_side=True)
        while b"\r\n\r\n" not in self.request:
            data = conn.recv(4096)
            if not data:
                return
            self.request += data
        key = [line.split(b":", 1)[1].strip() for line in self.request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:")][0]
        reply = HOSTILE[self.behaviour](key)
        if reply is not None:
            conn.sendall(reply)
        if self.behaviour == "close_mid_frame":
            conn.close()
            return
        deadline = time.monotonic() + 4
        conn.settimeout(0.2)
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                data = conn.recv(4096)
            except socket.timeout:
                continue
            if not data:
                break
            self.after += data

    def close_code_received(self):
        """The close code in the (masked) close frame the client sent, or None."""
        data = self.after
        if len(data) < 8 or data[0] != 0x88 or not data[1] & 0x80:
            return None
        mask = data[2:6]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[6:6 + (data[1] & 0x7F)]))
        return int.from_bytes(payload[:2], "big")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        self.sock.close()


def run_board(tmp_dir, pki, device_id, plan, timeout=90, files=None):
    device = pki.device(device_id)
    flash = prepare_flash(Path(tmp_dir) / device_id, {"device_id": device_id}, dict({
        "ca.der": pki.ca.cert_der, "device.crt.der": device.cert_der,
        "device.key.der": device.key_der, "main.py": PLAN_SCRIPT.encode(),
        "plan.json": json.dumps(plan).encode()}, **(files or {})))
    board = Board(device_id, board_command(flash, clock="host", device_seed=device_id),
                  verbose=False)
    try:
        board.wait_for("plan_done", timeout=timeout)
    finally:
        board.stop()
    return board


def by_case(board, event):
    return {e["case"]: e for e in board.of(event)}


# --- the websockets library as the peer ----------------------------------------------------
@pytest.fixture(scope="module")
def peer_run(pki, tmp_path_factory):
    with WebsocketsPeer(pki.server.chain_pem, pki.server.key_pem) as peer:
        port = peer.port
        auth = ["Authorization", "Bearer " + TOKEN]
        cases = [
            {"name": "echo", "port": port, "path": "/auth/echo", "max": BIG,
             "headers": [auth], "subprotocols": ["ingest.v1", "other"],
             "steps": [["echo", kind, n] for kind in ("text", "binary") for n in SIZES]
             + [["ping", "client-ping"], ["close", 1000, "done"]]},
            {"name": "wrong_token", "port": port, "path": "/auth/echo",
             "headers": [["Authorization", "Bearer wrong-" + TOKEN[6:]]]},
            {"name": "no_token", "port": port, "path": "/auth/echo"},
            {"name": "no_subprotocol", "port": port, "path": "/plain", "steps": [
                ["echo", "text", 5]]},
            {"name": "fragments", "port": port, "path": "/fragments",
             "steps": [["recv"], ["recv"]]},
            {"name": "server_ping", "port": port, "path": "/server-ping", "steps": [["recv"]]},
            {"name": "server_close", "port": port, "path": "/server-close",
             "steps": [["recv"]]},
            {"name": "too_big", "port": port, "path": "/too-big", "steps": [["recv"]]},
        ]
        board = run_board(tmp_path_factory.mktemp("flash"), pki, "board-wsc",
                          {"io_ms": 3000, "cases": cases})
        time.sleep(0.3)  # let the peer record the last close
        yield board, peer


@pytest.mark.parametrize("kind", ["text", "binary"])
@pytest.mark.parametrize("size", SIZES)
def test_echo_of_every_length_encoding_comes_back_intact(peer_run, kind, size):
    board, _ = peer_run
    echoed = {(e["kind"], e["size"]): e for e in board.of("echoed") if e["case"] == "echo"}
    assert echoed[(kind, size)]["same"] is True
    assert echoed[(kind, size)]["got_size"] == size


def test_token_accepted_subprotocol_chosen_and_close_is_clean(peer_run):
    board, peer = peer_run
    assert by_case(board, "case_connected")["echo"]["subprotocol"] == "ingest.v1"
    assert by_case(board, "pong")["echo"]["payload"] == "client-ping"
    assert by_case(board, "closed")["echo"]["open"] is False
    assert "echo" in by_case(board, "case_ok")
    assert peer.seen["/auth/echo"]["close_code"] == 1000
    assert peer.seen["/auth/echo"]["close_reason"] == "done"


@pytest.mark.parametrize("case", ["wrong_token", "no_token"])
def test_refused_token_is_a_named_401_without_the_token_in_it(peer_run, case):
    board, _ = peer_run
    error = by_case(board, "case_error")[case]
    assert error["type"] == "WssError" and error["kind"] == "ws_refused"
    assert '"HTTP/1.1 401 Unauthorized"' in error["detail"]
    for event in board.events:
        assert TOKEN not in json.dumps(event) and TOKEN[6:] not in json.dumps(event)


def test_no_subprotocol_when_the_server_picks_none(peer_run):
    board, _ = peer_run
    assert by_case(board, "case_connected")["no_subprotocol"]["subprotocol"] is None
    assert "no_subprotocol" in by_case(board, "case_ok")


def test_fragmented_server_messages_are_reassembled(peer_run):
    board, _ = peer_run
    got = [e for e in board.of("received") if e["case"] == "fragments"]
    assert [(e["opcode"], e["size"], e["text"]) for e in got] == [
        (1, 15, "fragmented text"), (2, 3, None)]


def test_server_ping_is_answered_with_the_same_payload(peer_run):
    board, peer = peer_run
    controls = [e for e in board.of("control") if e["case"] == "server_ping"]
    assert controls == [{"event": "control", "case": "server_ping", "opcode": 9,
                         "payload": "srv-ping", "t_ms": controls[0]["t_ms"]}]
    assert peer.seen["/server-ping"]["pong"] is True
    assert by_case(board, "received")["server_ping"]["text"] == "after ping"


def test_server_initiated_close_is_answered_and_named(peer_run):
    board, peer = peer_run
    error = by_case(board, "case_error")["server_close"]
    assert (error["kind"], error["code"]) == ("ws_closed", 1001)
    assert '"going away"' in error["detail"]
    assert peer.seen["/server-close"]["close_code"] == 1001  # our echo of its close


def test_message_over_the_maximum_closes_with_1009(peer_run):
    board, peer = peer_run
    error = by_case(board, "case_error")["too_big"]
    assert (error["kind"], error["code"]) == ("ws_protocol", 1009)
    assert peer.seen["/too-big"]["close_code"] == 1009


# --- hostile servers -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_run(pki, tmp_path_factory):
    servers = {name: HostileServer(pki.server.chain_pem, pki.server.key_pem, name)
               for name in HOSTILE}
    for server in servers.values():
        server.__enter__()
    try:
        cases = [{"name": name, "port": s.port, "handshake_ms": HANDSHAKE_MS,
                  "headers": [["Authorization", "Bearer " + TOKEN]], "subprotocols": ["mqtt"],
                  "steps": [["recv"]]} for name, s in servers.items()]
        board = run_board(tmp_path_factory.mktemp("flash"), pki, "board-hostile",
                          {"io_ms": 1000, "cases": cases})
        time.sleep(0.3)
        yield board, servers
    finally:
        for server in servers.values():
            server.__exit__()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_each_violation_ends_in_its_named_error_and_close_code(hostile_run, case):
    board, servers = hostile_run
    errors = by_case(board, "case_error")
    assert case in errors, "case %s did not fail: %s" % (case, board.events[-5:])
    error = errors[case]
    kind, code = EXPECTED[case]
    assert error["type"] == "WssError", error
    assert error["kind"] == kind, error
    if code is not None:
        assert error["code"] == code
    if code not in (None, 1006):
        # The board told the peer why, in a masked close frame, before dropping the link.
        assert servers[case].close_code_received() == code
    assert error["ms"] < HANDSHAKE_MS + 2500, "took too long: %s" % error


def test_handshake_errors_quote_what_came_back(hostile_run):
    board, _ = hostile_run
    errors = by_case(board, "case_error")
    assert '"HTTP/1.1 200 OK"' in errors["missing_101"]["detail"]
    assert "Sec-WebSocket-Accept is" in errors["wrong_accept"]["detail"]
    assert '"evil"' in errors["unoffered_subprotocol"]["detail"]
    assert "sec-websocket-protocol header over 270 bytes" in errors["long_subprotocol"]["detail"]
    # A peer echoing the token back does not get it into our error text.
    assert "<hidden>" in errors["echoes_token"]["detail"]


def test_no_traceback_and_no_token_in_any_event(hostile_run):
    board, servers = hostile_run
    assert not [e for e in board.events if e["event"] == "console"]
    for event in board.events:
        assert TOKEN not in json.dumps(event)
    request = servers["wrong_accept"].request
    assert b"Authorization: Bearer " + TOKEN.encode() in request  # sent only over pinned TLS
    key = [line for line in request.split(b"\r\n") if line.startswith(b"Sec-WebSocket-Key")]
    assert len(base64.b64decode(key[0].split(b": ")[1])) == 16


def test_handshake_keys_are_fresh_per_connection(hostile_run):
    _, servers = hostile_run
    keys = set()
    for server in servers.values():
        for line in server.request.split(b"\r\n"):
            if line.startswith(b"Sec-WebSocket-Key"):
                keys.add(line)
    assert len(keys) == len(servers)
