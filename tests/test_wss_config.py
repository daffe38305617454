"""config.py's `transport` and `wss` section: the same Config or the same error text on
CPython and on real MicroPython, and the token never quoted."""

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

SECRET = "S3cr3t-T0ken-abcdef0123456789"
BASE = {
    "device_id": "board-1",
    "wifi": {"ssid": "simnet"},
    "mqtt": {"host": "broker.local"},
    "tls": {"ca": "ca.der", "cert": "device.crt.der", "key": "device.key.der"},
}
FLASH = {"ca.der": b"\x30\x00", "device.crt.der": b"\x30\x00", "device.key.der": b"\x30\x00"}


def cfg(**top):
    out = copy.deepcopy(BASE)
    out.update(top)
    return out


S = "config.json: "
CASES = {
    "default_mqtts": (cfg(), None),
    "wss": (cfg(transport="wss", wss={"host": "ingest.local", "token": SECRET}), None),
    "mqtt_wss": (cfg(transport="mqtt_wss", wss={"host": "ws.local", "port": 8443}), None),
    "explicit_path": (cfg(transport="wss", wss={"host": "i", "token": SECRET,
                                                "path": "/v1/in"}), None),
    "bad_transport": (cfg(transport="ws"), S + "transport must be one of mqtts, wss, mqtt_wss"),
    "wss_without_host": (cfg(transport="wss", wss={"token": SECRET}),
                         S + "wss.host is required for transport wss"),
    "wss_without_token": (cfg(transport="wss", wss={"host": "ingest.local"}),
                          S + "wss.token is required for transport wss"),
    "token_with_newline": (cfg(transport="wss", wss={"host": "i", "token": SECRET + "\r\nX: y"}),
                           S + "wss.token must hold no spaces or control characters "
                           "(value not shown)"),
    "token_not_string": (cfg(transport="wss", wss={"host": "i", "token": 12345}),
                         S + "wss.token must be a string of at most 512 characters "
                         "(value not shown)"),
    "path_without_slash": (cfg(transport="wss", wss={"host": "i", "token": SECRET,
                                                     "path": "ingest"}),
                           S + 'wss.path must start with / and hold no spaces or control '
                           'characters, got "ingest"'),
    "max_too_small": (cfg(transport="mqtt_wss", wss={"host": "i", "max_message_bytes": 100}),
                      S + "wss.max_message_bytes must be an integer 125..1048576, got 100"),
    "jsonl_needs_no_wss": (cfg(transport="jsonl", jsonl={"host": "c.local"}), None),
    "unknown_wss_field": (cfg(transport="mqtt_wss", wss={"host": "i", "tokn": SECRET}),
                          S + "unknown field wss.tokn (expected one of: host, port, path, "
                          "token, max_message_bytes)"),
}

VECTORS = r'''
import json
from securenode import config

results = {}
cases = json.loads(CASES)
for name in cases:
    try:
        c = config.validate(cases[name])
        w = c.wss
        results[name] = {"ok": {"transport": c.transport, "server_hostname": c.tls.server_hostname,
                                "wss": dict(w.__dict__),
                                "repr": repr(w)}}
    except config.ConfigError as e:
        results[name] = {"error": str(e), "field": e.field}
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    files = dict(FLASH)
    files.update(firmware_files("config", "settings"))
    code = "CASES = %r\n" % json.dumps({k: v[0] for k, v in CASES.items()}) + VECTORS
    return run_both(files, code, tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_agree(results):
    assert results[0] == results[1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_transport_defaults_and_derived_fields(results, port):
    r = results[port]
    assert r["default_mqtts"]["ok"]["transport"] == "mqtts"
    assert r["default_mqtts"]["ok"]["server_hostname"] == "broker.local"
    wss = r["wss"]["ok"]
    assert wss["wss"] == {"host": "ingest.local", "port": 443, "path": "/ingest/board-1",
                          "token": SECRET, "max_message_bytes": 4096}
    assert wss["server_hostname"] == "ingest.local"  # TLS checks the endpoint's name
    assert r["mqtt_wss"]["ok"]["wss"]["path"] == "/mqtt"
    assert r["mqtt_wss"]["ok"]["wss"]["port"] == 8443
    assert r["explicit_path"]["ok"]["wss"]["path"] == "/v1/in"


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(k for k, v in CASES.items() if v[1]))
def test_each_wss_error_is_named_exactly(results, port, case):
    if case == "bad_transport":  # other transports may follow in the list
        assert results[port][case]["error"].startswith(CASES[case][1])
        assert results[port][case]["error"].endswith(', got "ws"')
        return
    assert results[port][case]["error"] == CASES[case][1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_token_never_appears_in_errors_or_repr(results, port):
    for name, r in results[port].items():
        assert SECRET not in r.get("error", ""), name
        if "ok" in r:
            assert SECRET not in r["ok"]["repr"], name
    assert "token=<hidden>" in results[port]["wss"]["ok"]["repr"]
