"""The WebSocket close handshake on real TCP, with the real MicroPython unix port as the
client (its own socket and Mbed TLS) and the `websockets` library as the independent peer.

After any close frame the board sends (a protocol error, 1009 for a message too big, a
normal close) the peer must actually receive it: closing a TCP socket with unread data in
its receive buffer makes Linux send RST, and the peer then loses the queued close record.
Each case here leaves such data in flight; the peer reports the close code it received.
"""

import asyncio
import json
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
PLAN = Path(__file__).resolve().parent / "wss_close_mp_plan.py"
IO_MS = 1500

# Server frames (hex) that break RFC 6455, and the close code the board must send.
VIOLATIONS = {
    "masked": ("818537fa213d7f9f4d5158", 1002),
    "rsv1": ("c10548656c6c6f", 1002),
    "rsv3": ("910548656c6c6f", 1002),
    "opcode_3": ("8300", 1002),
    "opcode_b": ("8b00", 1002),
    "fragmented_ping": ("0900", 1002),
    "ping_126": ("897e007e" + "00" * 126, 1002),
    "lone_continuation": ("8000", 1002),
    "text_inside_fragments": ("0101618101" + "62", 1002),
    "len64_top_bit": ("827f8000000000000000", 1002),
    "too_big_announced": ("827f4000000000000000", 1009),
    "too_big_sent": ("827e1388" + "00" * 5000, 1009),   # a real 5000-byte frame, limit 4096
    "too_big_fragments": ("027e0800" + "00" * 2048 + "807e0801", 1009),
    "bad_utf8": ("8102c328", 1007),
    "surrogate": ("8103eda080", 1007),
    "overlong": ("8102c0af", 1007),
    "utf8_truncated": ("8103f09f98", 1007),
    "close_one_byte": ("880103", 1002),
    "close_code_1005": ("880203ed", 1002),
    "close_bad_reason": ("880403e8c328", 1007),
}
# After the bad frame, more data the board never reads: it is still in the board's receive
# buffer when the board closes (the case that made the kernel send RST).
# 40 KB: more than one TLS record (16 KB), so Mbed TLS cannot have pulled it all in.
TRAILER = (bytes.fromhex("817e0800") + b"x" * 2048) * 20


class RawFramePeer:
    """websockets as the server: completes the upgrade, then writes raw (hostile) bytes
    under TLS and records the close code its own protocol stack received from the board."""

    def __init__(self, certfile, keyfile, scripts):
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.load_cert_chain(str(certfile), str(keyfile))
        self.scripts = scripts
        self.received = {}  # case -> close code the peer received (None: no close frame)
        self._ready = threading.Event()

    async def _handler(self, connection):
        name = connection.request.path.rsplit("/", 1)[-1]
        if callable(self.scripts[name]):
            await self.scripts[name](connection)
            await connection.wait_closed()
            rcvd = connection.protocol.close_rcvd
            self.received[name] = rcvd.code if rcvd is not None else None
            return
        first, later = self.scripts[name]
        connection.transport.write(first + later)
        # A busy peer: it reads again only after its next write. A board that closed at
        # once with our frames unread has sent RST by then: that write fails, and the
        # peer's stack drops the connection with the board's close record unread.
        connection.transport.pause_reading()
        await asyncio.sleep(0.3)
        connection.transport.write(b"\x81\x02hi")
        connection.transport.resume_reading()
        await connection.wait_closed()
        rcvd = connection.protocol.close_rcvd
        self.received[name] = rcvd.code if rcvd is not None else None

    async def _main(self):
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, ssl=self.ssl, compression=None,
                         ping_interval=None, close_timeout=3) as server:
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


def run_plan(tmp_path, pki, port, cases, heap=None):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"port": port, "ca": str(pki.ca.cert_der), "io_ms": IO_MS,
                                "cases": cases}))
    heap_args = ["-X", "heapsize=%d" % heap] if heap else []
    proc = subprocess.run([str(MICROPYTHON)] + heap_args + [str(PLAN), str(plan)], cwd=ROOT / "firmware",
                          capture_output=True, text=True, timeout=120,
                          env={"MICROPYPATH": ".frozen:" + str(ROOT / "firmware")})
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return {r["case"]: r for r in lines if "case" in r}  # the link's own events aside


async def _server_closes(connection):
    await connection.send("before the close")
    await connection.close(1001, "going away")


@pytest.fixture(scope="module")
def close_run(pki, tmp_path_factory):
    scripts = {name: (bytes.fromhex(frame), TRAILER) for name, (frame, _) in VIOLATIONS.items()}
    # A normal close while the server is still sending: frames arrive that the board never
    # reads before it closes.
    scripts["normal_close"] = (b"", TRAILER * 4)
    scripts["server_close"] = _server_closes
    cases = [{"name": name} for name in VIOLATIONS] + [{"name": "normal_close", "close": 1000},
                                                       {"name": "server_close"}]
    with RawFramePeer(pki.server.chain_pem, pki.server.key_pem, scripts) as peer:
        results = run_plan(tmp_path_factory.mktemp("wss-close"), pki, peer.port, cases)
        for _ in range(50):
            if len(peer.received) == len(cases):
                break
            threading.Event().wait(0.1)
        yield results, dict(peer.received)


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_peer_receives_the_close_code_of_each_protocol_error(close_run, case):
    results, received = close_run
    code = VIOLATIONS[case][1]
    result = results[case]
    assert (result["kind"], result["code"]) == ("ws_protocol", code), result
    assert received.get(case) == code, "peer saw %r, board sent %d" % (received.get(case), code)
    # Bounded: the board waits for the peer's close at most one io deadline.
    assert result["ms"] < IO_MS + 2000, result


def test_server_close_is_echoed_and_named(close_run):
    results, received = close_run
    result = results["server_close"]
    assert (result["kind"], result["code"]) == ("ws_closed", 1001), result
    assert received.get("server_close") == 1001  # the peer got our echo of its close
    assert result["ms"] < IO_MS, result           # it ended TCP at once: no waiting it out


def test_normal_close_reaches_the_peer_with_unread_frames_pending(close_run):
    results, received = close_run
    assert results["normal_close"].get("closed") is True, results["normal_close"]
    assert received.get("normal_close") == 1000


# --- a large fragmented message within the limit, on a heap that cannot hold it -----------
HEAP = 128 * 1024        # GC heap of the MicroPython process (imports keep ~35 KB of it)
LIMIT = 400000           # wss.max_message_bytes: allowed by the configuration...
FRAGMENT = 8192
FRAGMENTS = 25           # ...but 200 KB in 8 KB fragments does not fit this heap
HUGE_ITEMS = 8000        # a 16 KB message fits; parsed, its 8000-item list does not


async def _huge_fragmented(connection):
    await connection.send([b"x" * FRAGMENT] * FRAGMENTS)


async def _huge_ack(connection):
    await connection.recv()                          # the reading
    await connection.send('{"ack": 1, "pad": [%s]}' % ",".join(["0"] * HUGE_ITEMS))


async def _echo(connection):
    async for message in connection:
        await connection.send(message)


@pytest.fixture(scope="module")
def memory_run(pki, tmp_path_factory):
    scripts = {"huge": _huge_fragmented, "after": _echo, "link_huge": _huge_ack}
    # The link case first, on a heap not yet fragmented by the other.
    cases = [{"name": "link_huge", "max": LIMIT, "link": True}, {"name": "huge", "max": LIMIT},
             {"name": "after", "max": LIMIT, "echo": 3000}]
    with RawFramePeer(pki.server.chain_pem, pki.server.key_pem, scripts) as peer:
        results = run_plan(tmp_path_factory.mktemp("wss-mem"), pki, peer.port, cases,
                           heap=HEAP)
        for _ in range(50):
            if len(peer.received) == len(cases):
                break
            threading.Event().wait(0.1)
        yield results, dict(peer.received)


def test_message_too_big_for_the_heap_is_a_1009_and_the_board_runs_on(memory_run):
    results, received = memory_run
    huge = results["huge"]
    assert (huge["type"], huge["kind"], huge["code"]) == ("WssError", "ws_protocol", 1009), huge
    assert "limit %d bytes" % LIMIT in huge["detail"]
    assert received["huge"] == 1009
    # The same process connects again and exchanges a message: nothing was left broken.
    assert results["after"]["echoed"] == 3000, results["after"]
    assert received["after"] == 1000


def test_ingest_message_too_big_to_parse_is_a_named_protocol_error(memory_run):
    results, received = memory_run
    result = results["link_huge"]
    assert (result["type"], result["kind"]) == ("LinkError", "protocol"), result
    assert "no memory to parse" in result["detail"]
    assert received["link_huge"] == 1009
