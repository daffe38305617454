"""securenode/ws_frame.py: RFC 6455 framing, byte for byte, on CPython and real MicroPython;
the `websockets` library as the independent parser of what we encode; Hypothesis fuzzing of
the decoder (arbitrary bytes give messages or a WsProtocolError, nothing else, and never
allocate beyond the bound)."""

import importlib.util
import io
import json
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame
from websockets.streams import StreamReader

SHIMS = Path(__file__).resolve().parent / "firmware_shims"
sys.path.insert(0, str(SHIMS))
from firmware_harness import FIRMWARE, firmware_files, run_both  # noqa: E402


def _load_codec():
    # The pure codec only (no sockets, no board modules): loaded by path for the fuzzer,
    # which must run in this process. Everything else reaches firmware through boards.
    spec = importlib.util.spec_from_file_location("ws_frame_under_test",
                                                  FIRMWARE / "securenode" / "ws_frame.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wf = _load_codec()

MASK = "37fa213d"
# (opcode, payload hex, mask hex, fin) -> frame hex. The first is RFC 6455 5.7's example.
ENCODE = [
    (1, b"Hello".hex(), MASK, True, "818537fa213d7f9f4d5158"),
    (2, "", "00000000", True, "828000000000"),
    (9, b"Hello".hex(), MASK, True, "898537fa213d7f9f4d5158"),
    (1, b"Hel".hex(), MASK, False, "018337fa213d7f9f4d"),
    (0, b"lo".hex(), MASK, True, "808237fa213d5b95"),
]
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]

# Server frames (hex) -> what the reader returns: [[opcode, payload hex], ...] or the close code.
DECODE = {
    "rfc_text": ("810548656c6c6f", [[1, b"Hello".hex()]]),
    "rfc_fragmented": ("010348656c80026c6f", [[1, b"Hello".hex()]]),
    "rfc_ping": ("890548656c6c6f", [[9, b"Hello".hex()]]),
    "ping_between_fragments": ("010348656c8900" "80026c6f", [[9, ""], [1, b"Hello".hex()]]),
    "len16": ("827e0100" + "ab" * 256, [[2, "ab" * 256]]),
    "len64": ("827f0000000000010000" + "cd" * 65536, [[2, "cd" * 65536]], 70000),
    "exactly_the_max": ("027e0800" + "00" * 2048 + "807e0800" + "01" * 2048,
                        [[2, "00" * 2048 + "01" * 2048]]),
    "empty_text": ("8100", [[1, ""]]),
    "close": ("880403e8" + b"ok".hex(), [[8, "03e8" + b"ok".hex()]]),
    "utf8_4byte": ("8104f09f9880", [[1, "f09f9880"]]),
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
    "too_big_fragments": ("027e0800" + "00" * 2048 + "807e0801", 1009),
    "bad_utf8": ("8102c328", 1007),
    "surrogate": ("8103eda080", 1007),
    "overlong": ("8102c0af", 1007),
    "utf8_split_fragments_ok": ("0102f09f8002" + "9880", [[1, "f09f9880"]]),
    "utf8_truncated": ("8103f09f98", 1007),
    # Judged per fragment: the stream ends right after the bad fragment, so a reader that
    # waited for the whole message would report 1006 (ended mid-message) instead.
    "bad_utf8_first_fragment": ("0102c328", 1007),
    "bad_utf8_second_fragment": ("0102f09f" + "00029828", 1007),
    "utf8_ok_fragment_then_eof": ("0102f09f", 1006),
    "eof_mid_header": ("82", 1006),
    "eof_mid_payload": ("820a616263", 1006),
}
MAX = 4096

UTF8 = {
    "ascii": ("68656c6c6f", True), "two": ("cebae1bdb9cf83cebcceb5", True),
    "max_cp": ("f48fbfbf", True), "above_max": ("f4908080", False),
    "overlong_2": ("c1bf", False), "overlong_3": ("e08080", False),
    "surrogate_hi": ("edbfbf", False), "lone_cont": ("80", False),
    "truncated": ("e282", False), "f5": ("f5808080", False), "empty": ("", True),
}

CLOSE = {
    "normal": ("03e8" + b"bye".hex(), [1000, "bye"]),
    "empty": ("", [1005, ""]),
    "one_byte": ("03", 1002),
    "code_999": ("03e7", 1002),
    "code_1005": ("03ed", 1002),
    "code_1015": ("03f7", 1002),
    "code_2999": ("0bb7", 1002),
    "code_3000": ("0bb8", [3000, ""]),
    "code_4999": ("1387", [4999, ""]),
    "code_5000": ("1388", 1002),
    "bad_reason": ("03e8c328", 1007),
}

VECTORS = r'''
import io, json, binascii
from securenode import ws_frame as wf

def h(b):
    return binascii.hexlify(bytes(b)).decode()

def u(s):
    return binascii.unhexlify(s)

def payload(n):
    return bytes((i * 7 + 3) & 0xFF for i in range(n))

cases = json.loads(CASES)
out = {"encode": [], "sizes": {}, "decode": {}, "texts": {}, "utf8": {}, "close": {},
       "close_build": [], "steps": []}
buf = bytearray(14 + 70000)
for op, p, m, fin, _ in cases["encode"]:
    n = wf.encode_frame(buf, op, u(p), u(m), fin)
    out["encode"].append(h(buf[:n]))
for size in cases["sizes"]:
    n = wf.encode_frame(buf, 2, payload(size), b"\x01\x02\x03\x04")
    hl = wf.header_length(buf[1])
    out["sizes"][str(size)] = [n, h(buf[:hl])]
for name in cases["decode"]:
    stream = io.BytesIO(u(cases["decode"][name][0]))
    case = cases["decode"][name]
    reader = wf.MessageReader(case[2] if len(case) > 2 else cases["max"])
    got = []
    try:
        while True:
            if stream.tell() >= len(stream.getvalue()):
                break
            op, view = reader.read(stream)
            got.append([op, h(view)])
        out["decode"][name] = got
    except wf.WsProtocolError as e:
        out["decode"][name] = e.code
        out["texts"][name] = str(e)
for name in cases["utf8"]:
    out["utf8"][name] = wf.utf8_valid(u(cases["utf8"][name][0]))
state = 0
for piece in ("f0", "9f98", "80", "c3", "28"):
    state = wf.utf8_step(u(piece), state)
    out["steps"].append(state)
for name in cases["close"]:
    try:
        out["close"][name] = list(wf.parse_close(u(cases["close"][name][0])))
    except wf.WsProtocolError as e:
        out["close"][name] = e.code
long = "\u00e9" * 100
out["close_build"] = [h(wf.close_payload(1000, "bye")), h(wf.close_payload(1009, long)),
                      len(wf.close_payload(1009, long))]
try:
    wf.encode_frame(buf, 9, b"x" * 126, b"\x00\x00\x00\x00")
    out["big_ping"] = "encoded"
except ValueError as e:
    out["big_ping"] = str(e)
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = {"encode": ENCODE, "sizes": SIZES, "decode": DECODE, "max": MAX, "utf8": UTF8,
             "close": CLOSE}
    code = "CASES = %r\n" % json.dumps(cases) + VECTORS
    return run_both(firmware_files("ws_frame"), code, tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_agree_on_every_vector(results):
    assert results[0] == results[1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_client_frames_match_rfc_6455_bytes(results, port):
    assert results[port]["encode"] == [e[4] for e in ENCODE]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_length_uses_7_16_or_64_bits(results, port):
    got = results[port]["sizes"]
    assert got["125"] == [125 + 6, "82fd01020304"]
    assert got["126"] == [126 + 8, "82fe007e01020304"]
    assert got["65535"] == [65535 + 8, "82feffff01020304"]
    assert got["65536"] == [65536 + 14, "82ff000000000001000001020304"]
    assert got["0"] == [6, "828001020304"]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(DECODE))
def test_server_frames_decode_or_fail_with_their_close_code(results, port, case):
    assert results[port]["decode"][case] == DECODE[case][1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_too_big_errors_quote_the_configured_limit(results, port):
    texts = results[port]["texts"]
    assert "limit %d" % MAX in texts["too_big_announced"]
    # 2048 bytes were gathered, a 2049-byte fragment follows: the limit quoted is 4096 (what
    # config.json says), not the 2048 bytes of room that were left.
    assert texts["too_big_fragments"] == ("close 1009: message of 2048 bytes so far plus a "
                                          "2049-byte fragment exceeds the limit of 4096 bytes")


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_utf8_is_checked_piece_by_piece(results, port):
    steps = results[port]["steps"]
    # A 4-byte character across three pieces keeps a pending state, ends at 0; then a lead
    # byte followed by a non-continuation byte is invalid at once.
    assert steps[0] > 0 and steps[1] > 0 and steps[2] == 0 and steps[3] > 0
    assert steps[4] == -1


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_utf8_validation_is_strict(results, port):
    assert results[port]["utf8"] == {k: v[1] for k, v in UTF8.items()}


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_close_payloads_parse_and_build(results, port):
    assert results[port]["close"] == {k: v[1] for k, v in CLOSE.items()}
    built = results[port]["close_build"]
    assert built[0] == "03e8" + b"bye".hex()
    assert built[2] <= 125  # a long reason is cut to fit a control frame, on a character
    assert bytes.fromhex(built[1])[2:].decode("utf-8") == "\u00e9" * 61
    assert results[port]["big_ping"] == "control frame payload over 125 bytes"


# --- the websockets library parses what we encode -----------------------------------------
def _parse_with_websockets(data, max_size=None):
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True, max_size=max_size)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("websockets wanted more bytes")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("opcode", [1, 2])
def test_websockets_library_reads_our_frames(size, opcode):
    import os
    payload = (b"a" * size) if opcode == 1 else os.urandom(size)
    buf = bytearray(14 + size)
    n = wf.encode_frame(buf, opcode, payload, os.urandom(4))
    frame = _parse_with_websockets(bytes(buf[:n]))
    assert frame.opcode.value == opcode and frame.fin and frame.data == payload


def test_masks_differ_between_frames_when_taken_from_urandom():
    import os
    buf = bytearray(64)
    frames = set()
    for _ in range(20):
        n = wf.encode_frame(buf, 1, b"same payload", os.urandom(4))
        frames.add(bytes(buf[:n]))
    assert len(frames) == 20


# --- fuzzing -------------------------------------------------------------------------------
def _drain(data, max_bytes):
    stream = io.BytesIO(data)
    reader = wf.MessageReader(max_bytes)
    messages = []
    while stream.tell() < len(data):
        opcode, view = reader.read(stream)
        messages.append((opcode, bytes(view)))
    return messages


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000), max_bytes=st.integers(min_value=1, max_value=2048))
def test_arbitrary_bytes_give_messages_or_a_protocol_error(data, max_bytes):
    tracemalloc.start()
    try:
        messages = _drain(data, max_bytes)
    except wf.WsProtocolError as exc:
        assert exc.code in (1002, 1006, 1007, 1009)
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # The input's copy, the kept messages, the data buffer grown at most to the bound
        # (old and new side by side while it grows), and small change.
        assert peak <= 3 * len(data) + 2 * max_bytes + 16384, peak
    for opcode, payload in messages:
        assert opcode in (1, 2, 8, 9, 10)
        assert len(payload) <= (125 if opcode >= 8 else max_bytes)
        if opcode == 1:
            payload.decode("utf-8")  # what passed our check is valid for CPython too


def _server_frame(opcode, payload, fin=True):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


message = st.tuples(st.sampled_from([1, 2]), st.binary(max_size=600),
                    st.lists(st.integers(min_value=0, max_value=600), max_size=4))


@settings(max_examples=200, deadline=None, database=None)
@given(messages=st.lists(message, max_size=6))
def test_fragmented_messages_reassemble_to_what_was_sent(messages):
    wire = b""
    expected = []
    for opcode, payload, cuts in messages:
        if opcode == 1:
            payload = payload.decode("latin-1").encode("utf-8")
        expected.append((opcode, payload))
        points = sorted({c for c in cuts if 0 < c < len(payload)})
        pieces = [payload[a:b] for a, b in zip([0] + points, points + [len(payload)])]
        for i, piece in enumerate(pieces):
            wire += _server_frame(opcode if i == 0 else 0, piece, fin=i == len(pieces) - 1)
            if i == 0 and len(pieces) > 1:
                wire += _server_frame(9, b"p")  # a control frame may sit between fragments
    got = [m for m in _drain(wire, 2048) if m[0] != 9]
    assert got == expected


@settings(max_examples=100, deadline=None, database=None)
@given(length=st.integers(min_value=4097, max_value=2 ** 63 - 1),
       fragments=st.integers(min_value=0, max_value=3))
def test_announced_length_over_the_bound_is_refused_before_any_allocation(length, fragments):
    wire = b"".join(_server_frame(2 if i == 0 else 0, b"x" * 1000, fin=False)
                    for i in range(fragments))
    wire += bytes([0x80 | (0 if fragments else 2), 127]) + length.to_bytes(8, "big")
    tracemalloc.start()
    try:
        with pytest.raises(wf.WsProtocolError) as info:
            _drain(wire, 4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert peak < 4096 + 16384, "the decoder allocated %d bytes" % peak


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=40))
def test_utf8_check_agrees_with_cpython_strict_decoder(data):
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert wf.utf8_valid(data) == valid


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=40), cuts=st.lists(st.integers(min_value=0, max_value=40),
                                                   max_size=5))
def test_utf8_checked_in_pieces_agrees_with_the_whole(data, cuts):
    points = sorted({c for c in cuts if 0 < c < len(data)})
    state = 0
    for a, b in zip([0] + points, points + [len(data)]):
        if state >= 0:
            state = wf.utf8_step(data[a:b], state)
    assert (state == 0) == wf.utf8_valid(data)


def test_docstring_examples_run():
    import doctest
    failures, tried = doctest.testmod(wf, verbose=False)
    assert tried >= 15 and failures == 0
