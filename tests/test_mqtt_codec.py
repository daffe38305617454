"""securenode/mqtt_codec.py: MQTT 3.1.1 byte for byte, the same vectors on CPython, the
WebAssembly MicroPython port and the real unix port; umqtt.simple as the reference peer
for what we encode; Hypothesis fuzzing of the decoder (arbitrary bytes in arbitrary
pieces give packets or a ProtocolError, nothing else, within the memory bound); the
module's docstring examples run as tests."""

import doctest
import importlib.util
import json
import re
import subprocess
import sys
import tracemalloc
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SHIMS = Path(__file__).resolve().parent / "firmware_shims"
sys.path.insert(0, str(SHIMS))
from firmware_harness import FIRMWARE, firmware_files, last_json_line, run_both  # noqa: E402

REPO = FIRMWARE.parent
UNIX_MICROPYTHON = REPO / ".venv" / "bin" / "micropython"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The pure codec only, loaded by path: the fuzzer must run in this process. Its error texts
# come from securenode.mqtt_errors, imported when one is said: the firmware's own package.
sys.path.insert(0, str(FIRMWARE))
mc = _load("mqtt_codec_under_test", FIRMWARE / "securenode" / "mqtt_codec.py")
# The CONNECT encoder lives apart (loaded per connection on a board) and builds on the codec.
from securenode import mqtt_connect  # noqa: E402

# MQTT 3.1.1 packet types (2.2.1): the first item of every packet the decoder returns.
CONNACK, PUBLISH, PUBACK, PINGRESP = 2, 3, 4, 13

# hex -> what the client-side decoder makes of it (max remaining 64 unless a third item).
DECODE = {
    "connack_ok": ("20020000", [[2, 0, 0]]),
    "connack_session_present": ("20020100", [[2, 1, 0]]),
    "connack_refused_5": ("20020005", [[2, 0, 5]]),
    "puback": ("40020001", [[4, 1]]),
    "puback_65535": ("4002ffff", [[4, 65535]]),
    "pingresp": ("d000", [[13]]),
    "publish_qos0": ("3005000174" + b"hi".hex(), [[3, 0, 0, 0, 0, "74", b"hi".hex()]]),
    "publish_qos1_dup_retain": ("3b0600017400" + "09" + b"x".hex(),
                                [[3, 9, 1, 1, 1, "74", b"x".hex()]]),
    "publish_empty_payload": ("300300017a", [[3, 0, 0, 0, 0, "7a", ""]]),
    "two_packets": ("40020001" + "d000", [[4, 1], [13]]),
    "length_2_bytes": ("3080010001" + "74" + "61" * 125, [[3, 0, 0, 0, 0, "74", "61" * 125]],
                       200),
    "length_non_minimal": ("d08000", [[13]]),
    # Errors (the text names the packet and what was wrong).
    "duplicate_tail_as_header": ("40020001" + "01", "reserved 0 (first byte 0x01): not an MQTT"),
    "reserved_0": ("0000", "reserved 0 (first byte 0x00): not an MQTT packet"),
    "reserved_15": ("f000", "reserved 15 (first byte 0xf0): not an MQTT packet"),
    "suback": ("9003000100", "unexpected SUBACK"),
    "pubrec": ("50020001", "unexpected PUBREC (first byte 0x50): this client sends QoS 0/1"),
    "pingreq": ("c000", "unexpected PINGREQ (first byte 0xc0): only a client sends it"),
    "connect": ("100c", "unexpected CONNECT"),
    "puback_flags": ("42020001", "malformed PUBACK (first byte 0x42): fixed-header flags"),
    "puback_long": ("40030001ff", "malformed PUBACK (first byte 0x40): remaining length 3"),
    "puback_id_0": ("40020000", "malformed PUBACK: packet id 0"),
    "connack_reserved": ("20020200", "malformed CONNACK: reserved flags 0x02"),
    "pingresp_long": ("d00100", "malformed PINGRESP (first byte 0xd0): remaining length 1"),
    "publish_qos3": ("3600", "malformed PUBLISH (first byte 0x36): QoS 3"),
    "publish_qos2": ("3400", "with QoS 2"),
    "publish_dup_qos0": ("3800", "DUP on QoS 0"),
    "publish_topic_overruns": ("3005000974" + "6869", "topic of 9 bytes in a packet of 5"),
    "publish_empty_topic": ("3003000061", "topic of 0 bytes"),
    "publish_qos1_id_0": ("3205000174" + "0000", "QoS 1 with packet id 0"),
    "length_5_bytes": ("30ffffffff7f", "remaining length longer than 4 bytes"),
    "length_256mb": ("30ffffff7f", "announces 268435455 bytes, over the bound of 64"),
    "length_over_bound": ("3041" + "00", "announces 65 bytes, over the bound of 64"),
}
# What the encoders must write: [function, kwargs] -> hex (or the ValueError text).
ENCODE = [
    ["connect", {"client_id": "b1", "keepalive_s": 60}, "100e00044d5154540402003c00026231"],
    ["connect", {"client_id": "b1", "keepalive_s": 0},
     "100e00044d515454040200000002" + b"b1".hex()],
    # The will is QoS 1 and retained (flags 0x2c), a clean session (0x02).
    ["connect", {"client_id": "b1", "keepalive_s": 60, "will": ["s", "off"],
                 "user": "u", "password": "pw"},
     "101d00044d51545404ee003c00026231" + "000173" + "00036f6666" + "000175" + "00027077"],
    ["connect", {"client_id": "b1", "keepalive_s": 60, "password": "pw"},
     "a password needs a user name (MQTT 3.1.1 3.1.2.9)"],
    ["connect", {"client_id": "b1", "keepalive_s": 70000}, "keepalive 70000 s outside 0..65535"],
    # Errors name the packet and the field by their codes' words.
    ["connect", {"client_id": "b" * 300, "keepalive_s": 60},
     "CONNECT needs 315 bytes, the buffer has 256"],
    ["connect", {"client_id": "b1", "keepalive_s": 60, "user": "u" * 65536},
     "user name is 65536 bytes, more than MQTT's 65535"],
    ["publish", {"topic": "t" * 65536, "payload": "x", "packet_id": 1},
     "topic is 65536 bytes, more than MQTT's 65535"],
    ["publish", {"topic": "t", "payload": "hi", "packet_id": 1}, "32070001740001" + b"hi".hex()],
    ["publish", {"topic": "t", "payload": "hi", "packet_id": 0, "qos": 0}, "3005000174" + "6869"],
    ["publish", {"topic": "t", "payload": "x", "packet_id": 65535, "dup": True, "retain": True},
     "3b06000174ffff78"],
    ["publish", {"topic": "t", "payload": "x" * 200, "packet_id": 2},
     "32cd0100017400" + "02" + "78" * 200],
    ["publish", {"topic": "t", "payload": "x", "packet_id": 0}, "packet id 0 outside 1..65535"],
    ["publish", {"topic": "t", "payload": "x", "packet_id": 65536},
     "packet id 65536 outside 1..65535"],
    ["publish", {"topic": "a/+", "payload": "x", "packet_id": 1}, "wildcard"],
    ["publish", {"topic": "t", "payload": "x", "packet_id": 0, "qos": 0, "dup": True},
     "DUP on a QoS 0 PUBLISH (MQTT 3.1.1 3.3.1.1)"],
    ["publish", {"topic": "t", "payload": "x" * 300, "packet_id": 1},
     "PUBLISH needs 308 bytes, the buffer has 256"],
    ["puback", {"packet_id": 258}, "40020102"],
    ["length", {"n": 0}, "00"], ["length", {"n": 127}, "7f"], ["length", {"n": 128}, "8001"],
    ["length", {"n": 16383}, "ff7f"], ["length", {"n": 16384}, "808001"],
    ["length", {"n": 2097151}, "ffff7f"], ["length", {"n": 2097152}, "80808001"],
    ["length", {"n": 268435455}, "ffffff7f"],
    ["length", {"n": 268435456}, "remaining length 268435456 outside 0..268435455"],
]
# Packet ids: [op, arg] sequences -> results; an error is its text.
IDS = [
    ["new", [2, 65533]], ["next"], ["next"], ["next", None], ["ack", 65534], ["next"],
    ["ack", 65535], ["ack", 1], ["ack", 1], ["ack", 2], ["dups"], ["new", [1, 0]], ["next"],
    ["ack", 2], ["ack", 1], ["ack", 1], ["dups"],
    # An id still in flight when the counter comes round is skipped.
    ["new", [2, 0]], ["next"], ["last", 65535], ["next"],
]

VECTORS = r'''
import json, binascii
from securenode import mqtt_codec as mc
from securenode import mqtt_connect

def h(b):
    return binascii.hexlify(bytes(b)).decode()

def u(s):
    return binascii.unhexlify(s)

def as_bytes(v):
    return v.encode() if isinstance(v, str) else v

cases = json.loads(CASES)
out = {"decode": {}, "encode": [], "ids": []}
for name in cases["decode"]:
    case = cases["decode"][name]
    data = u(case[0])
    d = mc.Decoder(case[2] if len(case) > 2 else 64)
    got = []
    try:
        i = 0
        while i < len(data):
            # Read exactly what the decoder asks for, as the link does.
            chunk = data[i:i + d.need()]
            i += d.feed(chunk)
            p = d.take()
            if p is not None:
                got.append([h(x) if isinstance(x, memoryview) else x for x in p])
        out["decode"][name] = got
    except mc.ProtocolError as e:
        out["decode"][name] = str(e)
buf = bytearray(256)
for case in cases["encode"]:
    fn, kw = case[0], case[1]
    try:
        if fn == "connect":
            kw = dict((k, tuple(as_bytes(x) for x in v) if isinstance(v, list) else as_bytes(v))
                      for k, v in kw.items())
            n = mqtt_connect.encode_connect(buf, **kw)
        elif fn == "publish":
            n = mc.encode_publish(buf, as_bytes(kw["topic"]), as_bytes(kw["payload"]),
                                  kw["packet_id"], kw.get("qos", 1), kw.get("dup", False),
                                  kw.get("retain", False))
        elif fn == "puback":
            n = mc.encode_puback(buf, kw["packet_id"])
        else:
            n = mc.put_remaining_length(buf, 0, kw["n"])
        out["encode"].append(h(buf[:n]))
    except ValueError as e:
        out["encode"].append(str(e))
ids = None
for step in cases["ids"]:
    op = step[0]
    try:
        if op == "new":
            ids = mc.PacketIds(step[1][0], step[1][1])
            r = None
        elif op == "next":
            r = ids.next()
        elif op == "ack":
            r = ids.acked(step[1])
        elif op == "last":
            ids.last = step[1]
            r = None
        else:
            r = ids.duplicates
    except (ValueError, mc.ProtocolError) as e:
        r = str(e)
    out["ids"].append(r)
print(json.dumps(out))
'''

IDS_EXPECTED = [
    None, 65534, 65535, "2 PUBLISHes already await PUBACK", True, 1,
    # After the wrap every id was sent once: a stray PUBACK counts as a duplicate.
    True, True, False, False, 2, None, 1,
    "PUBACK for packet id 2, which this session never sent", True, False, 1,
    None, 1, None, 2,
]


def _code():
    cases = {"decode": DECODE, "encode": ENCODE, "ids": IDS}
    return "CASES = %r\n" % json.dumps(cases) + VECTORS


# The codec, its CONNECT encoder and its error words, as a board's flash holds them.
CODEC_FILES = ("mqtt_codec", "mqtt_connect", "mqtt_errors")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cpython, wasm = run_both(firmware_files(*CODEC_FILES), _code(),
                             tmp_path_factory.mktemp("flash"))
    return {"cpython": cpython, "micropython-wasm": wasm,
            "micropython-unix": _run_unix_port(tmp_path_factory.mktemp("unix"))}


def _run_unix_port(workdir):
    if not UNIX_MICROPYTHON.exists():
        pytest.fail("%s is missing: run `make` (requirements.txt installs the unix port)"
                    % UNIX_MICROPYTHON, pytrace=False)
    for path, content in firmware_files(*CODEC_FILES).items():
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    (workdir / "vectors.py").write_text(_code())
    proc = subprocess.run([str(UNIX_MICROPYTHON), "vectors.py"], cwd=workdir,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return last_json_line(proc.stdout)


PORTS = ["cpython", "micropython-wasm", "micropython-unix"]


def test_every_port_gives_the_same_answer_to_every_vector(results):
    assert results["micropython-wasm"] == results["cpython"]
    assert results["micropython-unix"] == results["cpython"]


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("case", sorted(DECODE))
def test_received_bytes_decode_to_packets_or_a_named_protocol_error(results, port, case):
    got = results[port]["decode"][case]
    expected = DECODE[case][1]
    if isinstance(expected, str):
        assert isinstance(got, str) and expected in got, got
    else:
        assert got == expected


@pytest.mark.parametrize("port", PORTS)
def test_encoders_write_the_bytes_of_mqtt_3_1_1(results, port):
    for (fn, kw, expected), got in zip(ENCODE, results[port]["encode"]):
        assert expected in got if not _is_hex(expected) else got == expected, (fn, kw, got)


def _is_hex(text):
    try:
        bytes.fromhex(text)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("port", PORTS)
def test_packet_ids_wrap_skip_inflight_and_tell_duplicates_from_never_sent(results, port):
    assert results[port]["ids"] == IDS_EXPECTED


def test_docstring_examples_run():
    failures, tried = doctest.testmod(mc, verbose=False)
    assert tried >= 20 and failures == 0
    errors = _load("mqtt_errors_under_test", FIRMWARE / "securenode" / "mqtt_errors.py")
    failures, tried = doctest.testmod(errors, verbose=False)
    assert tried >= 2 and failures == 0
    failures, tried = doctest.testmod(mqtt_connect, verbose=False)
    assert tried >= 3 and failures == 0


def _consts(module, prefix):
    text = (FIRMWARE / "securenode" / (module + ".py")).read_text()
    return dict(re.findall(r"^(%s\w+) = const\((\d+)\)" % prefix, text, re.M))


def test_codes_mean_the_same_on_both_sides_of_the_error_words():
    # mqtt_link and the encoders raise with numbers that mqtt_errors (loaded only then) turns
    # into words: each side names them as const(); a number that differs says the wrong thing.
    assert _consts("mqtt_link", "_R_") == _consts("mqtt_errors", "_R_")
    assert len(_consts("mqtt_link", "_R_")) == 10
    codec = _consts("mqtt_codec", "_(?:E|F)_")
    for module in ("mqtt_connect", "mqtt_errors"):
        theirs = _consts(module, "_(?:E|F)_")
        assert theirs and all(codec.get(k, v) == v for k, v in theirs.items()), module


def test_error_words_are_loaded_only_to_say_one_and_dropped_after():
    # issue 10: the sentences are not resident; a board that met one error keeps none.
    sys.modules.pop("securenode.mqtt_errors", None)
    d = mc.Decoder(64)
    with pytest.raises(mc.ProtocolError) as info:
        d.feed(b"\x90\x02")
    assert "securenode.mqtt_errors" not in sys.modules
    assert str(info.value) == ("unexpected SUBACK (first byte 0x90): this client subscribes "
                               "to nothing")
    assert "securenode.mqtt_errors" not in sys.modules
    with pytest.raises(ValueError, match="keepalive 70000 s outside 0..65535"):
        mqtt_connect.encode_connect(bytearray(32), b"b1", 70000)


# --- umqtt.simple as the reference peer ------------------------------------------------------
class _Capture:
    """The stream umqtt.simple writes to: records bytes, answers CONNACK/PUBACK."""

    def __init__(self):
        self.out = bytearray()
        self.answers = bytearray(b"\x20\x02\x00\x00")

    def write(self, buf, n=None):
        data = bytes(buf[:n] if n is not None else buf)
        self.out += data
        return len(data)

    def read(self, n):
        data, self.answers[:] = bytes(self.answers[:n]), self.answers[n:]
        return data

    def setblocking(self, flag):
        pass


def _umqtt():
    source = REPO / "tests" / "vendor" / "umqtt" / "simple.py"
    if not source.exists():
        pytest.fail("%s is missing: run `make` (it vendors umqtt.simple for tests and bench)"
                    % source, pytrace=False)
    import binascii
    import socket
    import struct
    saved = {k: sys.modules.get(k) for k in ("usocket", "ustruct", "ubinascii")}
    sys.modules.update(usocket=socket, ustruct=struct, ubinascii=binascii)
    try:
        return _load("umqtt_reference", source)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _connect_bytes(client_id, will, user, password, keepalive):
    umqtt = _umqtt()
    cap = _Capture()
    umqtt.socket = types.SimpleNamespace(socket=lambda *a: cap,
                                         getaddrinfo=lambda *a: [(2, 1, 0, "", ("x", 1))])
    cap.connect = lambda addr: None
    client = umqtt.MQTTClient(client_id, "broker", user=user, password=password,
                              keepalive=keepalive)
    if will:
        client.set_last_will(will[0], will[1], retain=True, qos=1)
    client.connect()
    return bytes(cap.out)


@pytest.mark.parametrize("will, user, password, keepalive", [
    (None, None, None, 60),
    ((b"devices/b/status", b'{"status":"offline"}'), None, None, 60),
    ((b"devices/b/status", b'{"status":"offline"}'), b"user-7", b"s3cret" * 30, 1200),
    (None, b"u", b"", 0),
])
def test_connect_is_byte_identical_to_umqtt_simple(will, user, password, keepalive):
    reference = _connect_bytes(b"board-7", will, user, password, keepalive)
    buf = bytearray(512)
    n = mqtt_connect.encode_connect(buf, b"board-7", keepalive, will, user, password)
    assert bytes(buf[:n]) == reference


@pytest.mark.parametrize("payload_len, retain", [(0, False), (90, False), (120, True),
                                                  (300, False)])
def test_publish_is_byte_identical_to_umqtt_simple(payload_len, retain):
    umqtt = _umqtt()
    cap = _Capture()
    cap.answers = bytearray(b"\x40\x02\x00\x01")
    client = umqtt.MQTTClient(b"b", "broker")
    client.sock = cap
    payload = bytes(range(256)) * 2
    payload = payload[:payload_len]
    client.publish(b"devices/b/readings", payload, retain=retain, qos=1)
    buf = bytearray(512)
    n = mc.encode_publish(buf, b"devices/b/readings", payload, 1, retain=retain)
    assert bytes(buf[:n]) == bytes(cap.out)


# --- fuzzing ---------------------------------------------------------------------------------
def _drain(data, max_remaining, cuts=()):
    """Feed data in the pieces `cuts` makes (each at most what the decoder needs)."""
    d = mc.Decoder(max_remaining)
    packets = []
    i = 0
    cut_iter = iter(cuts)
    while i < len(data):
        step = min(d.need(), max(1, next(cut_iter, d.need())))
        used = d.feed(data[i:i + step])
        assert 0 < used <= step
        i += used
        p = d.take()
        if p is not None:
            packets.append(tuple(bytes(x) if isinstance(x, memoryview) else x for x in p))
    return packets


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), max_remaining=st.integers(min_value=0, max_value=1024),
       cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=40))
def test_arbitrary_bytes_give_packets_or_a_protocol_error(data, max_remaining, cuts):
    tracemalloc.start()
    error = None
    try:
        packets = _drain(data, max_remaining, cuts)
    except mc.ProtocolError as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # The decoder's own buffer (allocated once, at the bound) and the packets kept by
        # this test (at most the input's size), plus small change.
        assert peak <= max_remaining + 2 * len(data) + 16384, peak
    if error is not None:
        assert str(error)  # said after the measurement: the words load only to be said
        return
    for p in packets:
        assert p[0] in (CONNACK, PUBLISH, PUBACK, PINGRESP)
        if p[0] == PUBLISH:
            assert p[2] in (0, 1) and (p[1] > 0) == (p[2] == 1)
            assert len(p[5]) >= 1 and len(p[5]) + len(p[6]) <= max_remaining


publish_args = st.tuples(
    st.binary(min_size=1, max_size=80).filter(lambda t: b"+" not in t and b"#" not in t),
    st.binary(max_size=400), st.integers(min_value=1, max_value=65535),
    st.sampled_from([0, 1]), st.booleans(), st.booleans())


@settings(max_examples=200, deadline=None, database=None)
@given(packets=st.lists(publish_args, max_size=5),
       cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=60))
def test_what_we_encode_decodes_to_the_same_fields_in_any_pieces(packets, cuts):
    wire = bytearray()
    expected = []
    buf = bytearray(600)
    for topic, payload, pid, qos, dup, retain in packets:
        dup = dup and qos == 1
        n = mc.encode_publish(buf, topic, payload, pid if qos else 0, qos, dup, retain)
        wire += buf[:n]
        expected.append((PUBLISH, pid if qos else 0, qos, int(dup), int(retain), topic,
                         payload))
    assert _drain(bytes(wire), 600, cuts) == expected


@settings(max_examples=100, deadline=None, database=None)
@given(length=st.integers(min_value=1025, max_value=268435455),
       first=st.sampled_from([0x30, 0x32, 0x3B]))
def test_an_announced_length_over_the_bound_is_refused_before_any_body_byte(length, first):
    head = bytearray(5)
    head[0] = first
    end = mc.put_remaining_length(head, 1, length)
    d = mc.Decoder(1024)
    tracemalloc.start()
    try:
        with pytest.raises(mc.ProtocolError) as info:
            i = 0
            while i < end:
                i += d.feed(bytes(head[i:i + d.need()]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "over the bound of 1024" in str(info.value)
    assert peak < 4096, "the decoder allocated %d bytes" % peak


def test_net_docstring_examples_run():
    # net.py's example opens a socket (no connection): it runs on CPython as written.
    net = _load("net_under_test", FIRMWARE / "securenode" / "net.py")
    failures, tried = doctest.testmod(net, verbose=False)
    assert tried >= 1 and failures == 0
