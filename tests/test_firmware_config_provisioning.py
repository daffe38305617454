"""securenode/config.py, provisioning section: a board with only WiFi credentials is a valid
config once it has a provisioning section; every mistake is named by field. Same answers on
CPython and real MicroPython (WebAssembly port)."""

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

WIFI_ONLY = {
    "device_id": "fresh-1",
    "wifi": {"ssid": "homenet", "key": "s3cret-Key!"},
    "tls": {"ca": ["ca.der"]},
    "provisioning": {},
}

CERT_BOARD = {
    "device_id": "b1",
    "wifi": {"ssid": "net"},
    "mqtt": {"host": "broker.example"},
    "tls": {"ca": "ca.der", "cert": "device.crt.der", "key": "device.key.der"},
}

FLASH = {"ca.der": b"\x30\x03\x02\x01\x01", "device.crt.der": b"\x30\x00",
         "device.key.der": b"\x30\x00"}


def _with(base, section, **fields):
    cfg = copy.deepcopy(base)
    cfg.setdefault(section, {}).update(fields)
    return cfg


S = "config.json: "
VALID = {
    "wifi_only": WIFI_ONLY,
    "with_host": _with(WIFI_ONLY, "provisioning", host="base.local", port=9443, name="Kitchen",
                       poll_min_ms=500, poll_max_ms=5000, wait_s=60),
    "cert_board": CERT_BOARD,
}
INVALID = {
    "no_mqtt_without_provisioning": (
        {k: v for k, v in CERT_BOARD.items() if k != "mqtt"}, S + "mqtt is required", "mqtt"),
    "no_cert_without_provisioning": (
        {**CERT_BOARD, "tls": {"ca": "ca.der", "key": "device.key.der"}},
        S + "tls.cert is required", "tls.cert"),
    "poll_max_below_min": (
        _with(WIFI_ONLY, "provisioning", poll_min_ms=2000, poll_max_ms=1000),
        S + "provisioning.poll_max_ms must be >= provisioning.poll_min_ms (2000), got 1000",
        "provisioning.poll_max_ms"),
    "poll_max_too_long_for_the_60_s_window": (
        _with(WIFI_ONLY, "provisioning", poll_max_ms=60000),
        S + "provisioning.poll_max_ms must be an integer 100..30000, got 60000",
        "provisioning.poll_max_ms"),
    "port_zero": (_with(WIFI_ONLY, "provisioning", port=0),
                  S + "provisioning.port must be an integer 1..65535, got 0",
                  "provisioning.port"),
    "credentials_path": (_with(WIFI_ONLY, "provisioning", credentials="../x.json"),
                         S + 'provisioning.credentials must be a plain file name, got '
                         '"../x.json"', "provisioning.credentials"),
    "cert_without_key": (_with(WIFI_ONLY, "tls", cert="device.crt.der"),
                         S + "tls.key is required with tls.cert", "tls.key"),
    "unknown_field": (_with(WIFI_ONLY, "provisioning", hots="x"),
                      None, "provisioning.hots"),
    "not_object": ({**WIFI_ONLY, "provisioning": "base.local"},
                   S + 'provisioning must be an object, got "base.local"', "provisioning"),
}

VECTORS = r'''
import json
from securenode import config

def attempt(raw):
    try:
        cfg = config.validate(raw)
    except config.ConfigError as e:
        return {"error": str(e), "field": e.field}
    p = cfg.provisioning
    return {"ok": {
        "provisioning": None if p is None else dict(p.__dict__),
        "mqtt_host": cfg.mqtt.host, "tls_cert": cfg.tls.cert, "tls_key": cfg.tls.key}}

cases = json.loads(CASES)
print(json.dumps(dict((name, attempt(raw)) for name, raw in cases.items())))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = dict(VALID)
    cases.update((name, raw) for name, (raw, _, _) in INVALID.items())
    files = dict(FLASH)
    files.update(firmware_files("config", "settings"))
    code = "CASES = %r\n" % json.dumps(cases) + VECTORS
    return run_both(files, code, tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_agree(results):
    assert results[0] == results[1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_wifi_and_the_pinned_ca_are_enough_with_a_provisioning_section(results, port):
    got = results[port]["wifi_only"]["ok"]
    assert got["mqtt_host"] is None and got["tls_cert"] is None and got["tls_key"] is None
    assert got["provisioning"] == {
        "host": None, "port": 8443, "server_hostname": None, "beacon_port": 48443,
        "beacon_wait_ms": 10000, "name": "fresh-1", "poll_min_ms": 1000,
        "poll_max_ms": 10000, "wait_s": 300, "credentials": "mqtt_credentials.json",
        "max_response_bytes": 2048}


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_configured_base_station_is_checked_by_its_own_name(results, port):
    got = results[port]["with_host"]["ok"]["provisioning"]
    assert (got["host"], got["port"], got["server_hostname"], got["name"]) == (
        "base.local", 9443, "base.local", "Kitchen")


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_certificate_boards_have_no_provisioning(results, port):
    assert results[port]["cert_board"]["ok"]["provisioning"] is None


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(INVALID))
def test_each_provisioning_mistake_is_named(results, port, case):
    _, message, field = INVALID[case]
    got = results[port][case]
    assert got.get("field") == field, got
    if message is not None:
        assert got["error"] == message
