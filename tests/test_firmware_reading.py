"""securenode/reading.py: a reading's JSON and topic, byte for byte, on CPython and MicroPython."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

# (device_id, seq, timestamp, status, voltage, freq) -> exact payload
ENCODED = [
    (("board-1", 7, 1700000000, 0, 229.96, 50.004),
     b'{"id":"board-1","seq":7,"timestamp":1700000000,"status":0,"voltage":230.0,"freq":50.00}'),
    (("board-1", 0, 0, 0, 0.0, 0.0),
     b'{"id":"board-1","seq":0,"timestamp":0,"status":0,"voltage":0.0,"freq":0.00}'),
    (("b_2", 123456789, 1767225600, 6, 1.04, 0.0),
     b'{"id":"b_2","seq":123456789,"timestamp":1767225600,"status":6,"voltage":1.0,"freq":0.00}'),
    # Half-way values round away from zero (after scaling), the same on every port.
    (("x", 1, 1, 0, 120.25, 59.995),
     b'{"id":"x","seq":1,"timestamp":1,"status":0,"voltage":120.3,"freq":60.00}'),
    (("x", 1, 1, 0, 120.24, 59.994),
     b'{"id":"x","seq":1,"timestamp":1,"status":0,"voltage":120.2,"freq":59.99}'),
    # "%.2f" % 50.005 differs between MicroPython (50.01) and CPython (50.00); ours does not.
    (("x", 2, 2, 0, 230, 50.005),
     b'{"id":"x","seq":2,"timestamp":2,"status":0,"voltage":230.0,"freq":50.01}'),
    (("x", 3, 3, 13, 335.83, 49.9977),
     b'{"id":"x","seq":3,"timestamp":3,"status":13,"voltage":335.8,"freq":50.00}'),
    (("x", 4, 4, 0, -0.04, -1.5),
     b'{"id":"x","seq":4,"timestamp":4,"status":0,"voltage":0.0,"freq":-1.50}'),
    (("A-Z_09", 5, 2 ** 40, 0, 9999.95, 1000.0),
     b'{"id":"A-Z_09","seq":5,"timestamp":1099511627776,"status":0,'
     b'"voltage":10000.0,"freq":1000.00}'),
]

REJECTED = [
    (("board 1", 1, 1, 0, 230.0, 50.0), "device_id must be A-Z a-z 0-9 _ - only, got 'board 1'"),
    (('a"b', 1, 1, 0, 230.0, 50.0), "device_id must be A-Z a-z 0-9 _ - only, got 'a\"b'"),
    (("", 1, 1, 0, 230.0, 50.0), "device_id must be 1..64 characters, got ''"),
    (("x", -1, 1, 0, 230.0, 50.0), "seq must be an integer >= 0, got -1"),
    (("x", 1, 1.5, 0, 230.0, 50.0), "timestamp must be an integer >= 0, got 1.5"),
    (("x", 1, 1, True, 230.0, 50.0), "status must be an integer >= 0, got True"),
    (("x", 1, 1, 0, "230", 50.0), "voltage must be a number, got '230'"),
    (("x", 1, 1, 0, 230.0, None), "freq must be a number, got None"),
    (("x", 1, 1, 0, float("nan"), 50.0), "voltage must be finite, got nan"),
    (("x", 1, 1, 0, 230.0, float("inf")), "freq must be finite, got inf"),
]

VECTORS = r'''
import json
from securenode import reading

def arg(a):
    # JSON cannot carry nan/inf: they travel as strings and are rebuilt here.
    if a in ("nan", "inf"):
        return float(a)
    return a

out = {"encoded": [], "rejected": [], "topics": []}
cases = json.loads(CASES)
for args in cases["encoded"]:
    out["encoded"].append(reading.encode(*args).decode())
for args in cases["rejected"]:
    try:
        reading.encode(*[arg(a) for a in args])
        out["rejected"].append("no error")
    except reading.ReadingError as e:
        out["rejected"].append(str(e))
for device in ("board-1", "b_2"):
    out["topics"].append(reading.topic(device).decode())
out["topic_type"] = type(reading.topic("x")).__name__
out["encode_type"] = type(reading.encode("x", 1, 1, 0, 1.0, 1.0)).__name__
try:
    reading.topic("a/#")
    out["topic_error"] = "no error"
except reading.ReadingError as e:
    out["topic_error"] = str(e)
print(json.dumps(out))
'''


def _jsonable(args):
    return [str(a) if isinstance(a, float) and not math.isfinite(a) else a for a in args]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = {"encoded": [list(a) for a, _ in ENCODED],
             "rejected": [_jsonable(a) for a, _ in REJECTED]}
    code = "CASES = %r\n" % json.dumps(cases) + VECTORS
    return run_both(firmware_files("reading"), code, tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_produce_identical_bytes(results):
    assert results[0]["encoded"] == results[1]["encoded"]
    assert results[0]["topics"] == results[1]["topics"]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_readings_encode_byte_exact(results, port):
    assert [e.encode() for e in results[port]["encoded"]] == [want for _, want in ENCODED]
    assert results[port]["encode_type"] == "bytes"


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_payload_is_json_with_fixed_key_order(results, port):
    payload = results[port]["encoded"][0]
    parsed = json.loads(payload)
    assert list(parsed) == ["id", "seq", "timestamp", "status", "voltage", "freq"]
    assert parsed["voltage"] == 230.0 and parsed["freq"] == 50.0


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_topic_is_devices_id_readings(results, port):
    assert results[port]["topics"] == ["devices/board-1/readings", "devices/b_2/readings"]
    assert results[port]["topic_type"] == "bytes"
    assert results[port]["topic_error"] == "device_id must be A-Z a-z 0-9 _ - only, got 'a/#'"


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_values_json_cannot_carry_are_rejected(results, port):
    assert results[port]["rejected"] == [message for _, message in REJECTED]
