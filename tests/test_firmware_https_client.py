"""securenode/https_client.py and provision_codec.py: the request bytes, the response head
parser, the bounded exchange over a fake stream, the comparison code, the beacon filter and
the base station's answers -- the same vectors on CPython and real MicroPython."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

HEADS = {
    "ok": ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21",
           [200, 21]),
    "http10_lowercase": ("HTTP/1.0 410 Gone\r\ncontent-length:  0 ", [410, 0]),
    "no_reason": ("HTTP/1.1 202\r\nContent-Length: 3", [202, 3]),
    "not_http": ("SSH-2.0-OpenSSH\r\nContent-Length: 1", "http protocol from p: not an HTTP/1.x "
                 "status line"),
    "status_letters": ("HTTP/1.1 2x0 OK\r\nContent-Length: 1",
                       "http protocol from p: not an HTTP/1.x status line"),
    "status_range": ("HTTP/1.1 999 Odd\r\nContent-Length: 1",
                     "http protocol from p: status 999 out of range"),
    "no_length": ("HTTP/1.1 200 OK\r\nContent-Type: text/plain",
                  "http protocol from p: no Content-Length"),
    "negative_length": ("HTTP/1.1 200 OK\r\nContent-Length: -5",
                        "http protocol from p: bad Content-Length"),
    "huge_length_digits": ("HTTP/1.1 200 OK\r\nContent-Length: 99999999999",
                           "http protocol from p: bad Content-Length"),
    "two_lengths": ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4",
                    "http protocol from p: bad Content-Length"),
    "chunked": ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
                "http protocol from p: Transfer-Encoding is not supported"),
    "no_colon": ("HTTP/1.1 200 OK\r\nbroken header", "http protocol from p: header line "
                 "without a colon"),
}

# Whole responses fed through exchange() over a fake stream (max_body 64).
EXCHANGES = {
    "ok": ("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"status\":\"pending\"}",
           [200, '{"status":"pending"}']),
    "too_large": ("HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n" + "x" * 65,
                  "http too_large from p: body of 65 bytes, limit 64"),
    "head_too_large": ("HTTP/1.1 200 OK\r\nX: " + "a" * 1100 + "\r\n\r\n",
                       "http too_large from p: response head over 1024 bytes"),
    "closed_in_head": ("HTTP/1.1 200 OK\r\nContent-Le",
                       "http protocol from p: connection closed inside the response head"),
    "short_body": ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                   "http protocol from p: connection closed after 3 of 10 body bytes"),
}

BEACONS = {
    "ours": ('{"service": "securenode-base", "port": 8443, "ca_sha256": "aa"}', 8443),
    "other_ca": ('{"service": "securenode-base", "port": 8443, "ca_sha256": "bb"}', None),
    "other_service": ('{"service": "x", "port": 8443, "ca_sha256": "aa"}', None),
    "bad_port": ('{"service": "securenode-base", "port": 70000, "ca_sha256": "aa"}', None),
    "not_json": ("hello", None),
    "too_long": ('{"service": "securenode-base", "port": 1, "ca_sha256": "aa", "pad": "'
                 + "x" * 300 + '"}', None),
}

OUTCOMES = {
    "pending": ('{"status": "pending"}', ["pending", None]),
    "denied": ('{"status": "denied"}', ["denied", None]),
    "approved": ('{"status": "approved", "mqtt": {"host": "h", "port": 8884, "user": "u", '
                 '"password": "pw-123", "server_hostname": "localhost"}}',
                 ["approved", {"host": "h", "port": 8884, "user": "u", "password": "pw-123",
                               "server_hostname": "localhost"}]),
    "approved_without_mqtt": ('{"status": "approved"}',
                              "provision_protocol: approved without mqtt credentials "
                              "(base station b)"),
    "bad_password": ('{"status": "approved", "mqtt": {"host": "h", "port": 1, "user": "u", '
                     '"password": 12345678, "server_hostname": "h"}}',
                     "provision_protocol: mqtt.password missing or malformed (base station b)"),
    "not_json": ("<html>", "provision_protocol: answer is not JSON (HTTP 200) (base station b)"),
    "no_status": ('{"x": 1}', "provision_protocol: answer has no status (HTTP 200) "
                  "(base station b)"),
}

CODES = [("00" * 16, "cert"), ("ff" * 16, "another certificate"),
         ("0123456789abcdef0123456789abcdef", "x" * 500)]

VECTORS = r'''
import json
import time
if not hasattr(time, "ticks_ms"):  # CPython: the board's tick functions, without wrap
    time.ticks_ms = lambda: int(time.monotonic() * 1000)
    time.ticks_diff = lambda a, b: a - b
from securenode import https_client, provision_codec

class FakeStream:
    def __init__(self, data):
        self.data = data
        self.written = b""
    def write(self, buf):
        self.written += bytes(buf)
        return len(buf)
    def read(self, n):
        chunk = self.data[:n]
        self.data = self.data[n:]
        return chunk

def attempt(fn):
    try:
        return fn()
    except (https_client.HttpError, provision_codec.ProvisionError) as e:
        return str(e)

cases = json.loads(CASES)
out = {"heads": {}, "exchanges": {}, "beacons": {}, "outcomes": {}, "codes": []}
for name, text in cases["heads"].items():
    out["heads"][name] = attempt(lambda: list(https_client.parse_head(text.encode(), "p")))
for name, text in cases["exchanges"].items():
    stream = FakeStream(text.encode())
    got = attempt(lambda: https_client.exchange(stream, "POST", "b:8443", "/v1/x", b'{"a":1}',
                                                64, 10000, "p"))
    if type(got) is tuple:
        got = [got[0], got[1].decode()]
    out["exchanges"][name] = got
    out["request"] = stream.written.decode()
for name, text in cases["beacons"].items():
    out["beacons"][name] = provision_codec.beacon_port(text.encode(), ["aa"])
for name, text in cases["outcomes"].items():
    out["outcomes"][name] = attempt(lambda: list(provision_codec.parse_outcome(200, text.encode(),
                                                                               "b")))
for nonce_hex, cert in cases["codes"]:
    nonce = bytes(int(nonce_hex[i:i + 2], 16) for i in range(0, len(nonce_hex), 2))
    out["codes"].append(provision_codec.comparison_code(nonce, cert.encode()))
out["get"] = https_client.encode_request("GET", "h", "/", None).decode()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = {"heads": {k: v[0] for k, v in HEADS.items()},
             "exchanges": {k: v[0] for k, v in EXCHANGES.items()},
             "beacons": {k: v[0] for k, v in BEACONS.items()},
             "outcomes": {k: v[0] for k, v in OUTCOMES.items()}, "codes": CODES}
    code = "CASES = %r\n" % json.dumps(cases) + VECTORS
    return run_both(firmware_files("https_client", "provision_codec"), code,
                    tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_agree(results):
    assert results[0] == results[1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_request_is_http11_with_content_length_and_connection_close(results, port):
    assert results[port]["request"] == (
        "POST /v1/x HTTP/1.1\r\nHost: b:8443\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
    assert results[port]["get"] == "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(HEADS))
def test_response_head_is_parsed_or_refused_by_name(results, port, case):
    assert results[port]["heads"][case] == HEADS[case][1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(EXCHANGES))
def test_exchange_bounds_the_response_before_reading_it(results, port, case):
    assert results[port]["exchanges"][case] == EXCHANGES[case][1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_beacon_is_only_a_hint_for_our_pinned_ca(results, port):
    assert results[port]["beacons"] == {k: v[1] for k, v in BEACONS.items()}


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(OUTCOMES))
def test_base_station_answers_are_validated_without_quoting_secrets(results, port, case):
    assert results[port]["outcomes"][case] == OUTCOMES[case][1]
    assert "12345678" not in json.dumps(results[port]["outcomes"][case])


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_comparison_code_matches_the_base_stations_formula(results, port):
    want = []
    for nonce_hex, cert in CODES:
        digest = hashlib.sha256(bytes.fromhex(nonce_hex)
                                + hashlib.sha256(cert.encode()).digest()).digest()
        want.append("%06d" % (int.from_bytes(digest, "big") % 10**6))
    assert results[port]["codes"] == want
    assert want[0] == "033619"  # the docstring's example
