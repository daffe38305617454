"""securenode/config.py: the same configs give the same Config or the same error text,
on CPython and on real MicroPython (WebAssembly port)."""

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

VALID = {
    "device_id": "board-1",
    "wifi": {"ssid": "simnet", "key": "s3cret-Key!", "timeout_ms": 10000},
    "ntp": {"host": "pool.ntp.org", "timeout_ms": 3000},
    "mqtt": {"host": "localhost", "port": 8883, "keepalive_s": 60},
    "tls": {"ca": ["ca.der"], "cert": "device.crt.der", "key": "device.key.der",
            "allow_unverified": False},
    "timeouts_ms": {"dns": 5000, "connect": 5000, "handshake": 10000, "io": 5000},
    "sample": {"interval_ms": 1000, "adc_pin": 34, "volts_per_count": 0.0125,
               "window_ms": 100, "samples": 200},
    "backoff": {"min_ms": 500, "max_ms": 30000},
    "run": {"max_readings": 0},
}

MINIMAL = {
    "device_id": "b1",
    "wifi": {"ssid": "net"},
    "mqtt": {"host": "broker.example"},
    "tls": {"ca": "ca.der", "cert": "device.crt.der", "key": "device.key.der"},
}

# Cert files on the simulated flash (contents are irrelevant to config.py; size is not).
FLASH = {"ca.der": b"\x30\x03\x02\x01\x01", "ca2.der": b"\x30\x00",
         "device.crt.der": b"\x30\x00", "device.key.der": b"\x30\x00", "empty.der": b""}


def _set(path, value):
    def mutate(cfg):
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return mutate


def _delete(path):
    def mutate(cfg):
        *parents, leaf = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        del node[leaf]
    return mutate


S = "config.json: "
# name -> (mutation of VALID, exact message, field)
INVALID = {
    "port_string": (_set("mqtt.port", "88x3"),
                    S + 'mqtt.port must be an integer 1..65535, got "88x3"', "mqtt.port"),
    "port_zero": (_set("mqtt.port", 0), S + "mqtt.port must be an integer 1..65535, got 0",
                  "mqtt.port"),
    "port_too_big": (_set("mqtt.port", 65536),
                     S + "mqtt.port must be an integer 1..65535, got 65536", "mqtt.port"),
    "port_bool": (_set("mqtt.port", True), S + "mqtt.port must be an integer 1..65535, got true",
                  "mqtt.port"),
    "port_float": (_set("mqtt.port", 8883.0),
                   S + "mqtt.port must be an integer 1..65535, got 8883.0", "mqtt.port"),
    "port_null": (_set("mqtt.port", None), S + "mqtt.port must be an integer 1..65535, got null",
                  "mqtt.port"),
    "keepalive_negative": (_set("mqtt.keepalive_s", -1),
                           S + "mqtt.keepalive_s must be an integer 0..65535, got -1",
                           "mqtt.keepalive_s"),
    "unknown_top": (_set("mqttt", {}),
                    S + "unknown field mqttt (expected one of: device_id, transport, wifi, ntp, "
                    "mqtt, tls, timeouts_ms, sample, backoff, run, provisioning, wss, outbox, "
                    "jsonl)", "mqttt"),
    "unknown_in_section": (_set("mqtt.prot", 1883),
                           S + "unknown field mqtt.prot (expected one of: host, port, "
                           "keepalive_s, client_id, inflight)", "mqtt.prot"),
    "missing_device_id": (_delete("device_id"), S + "device_id is required", "device_id"),
    "missing_section": (_delete("mqtt"), S + "mqtt is required", "mqtt"),
    "missing_field": (_delete("mqtt.host"), S + "mqtt.host is required", "mqtt.host"),
    "missing_tls_cert": (_delete("tls.cert"), S + "tls.cert is required", "tls.cert"),
    "section_not_object": (_set("wifi", "simnet"),
                           S + 'wifi must be an object, got "simnet"', "wifi"),
    "device_id_chars": (_set("device_id", "board 1/x"),
                        S + 'device_id must be 1..64 characters of A-Z a-z 0-9 _ -, '
                        'got "board 1/x"', "device_id"),
    "device_id_empty": (_set("device_id", ""),
                        S + 'device_id must be 1..64 characters of A-Z a-z 0-9 _ -, got ""',
                        "device_id"),
    "device_id_long": (_set("device_id", "x" * 65),
                       S + "device_id must be 1..64 characters of A-Z a-z 0-9 _ -, got \""
                       + "x" * 40 + '..."', "device_id"),
    "ssid_empty": (_set("wifi.ssid", ""),
                   S + 'wifi.ssid must be a string of 1..32 characters, got ""', "wifi.ssid"),
    "wifi_key_not_string": (_set("wifi.key", 12345678),
                            S + "wifi.key must be a string of at most 64 characters "
                            "(value not shown)", "wifi.key"),
    "wifi_key_too_long": (_set("wifi.key", "S3CRET" * 11),
                          S + "wifi.key must be a string of at most 64 characters "
                          "(value not shown)", "wifi.key"),
    "host_with_scheme": (_set("mqtt.host", "mqtts://broker"),
                         S + 'mqtt.host must be a host name or IP address, got "mqtts://broker"',
                         "mqtt.host"),
    "client_id_bad": (_set("mqtt.client_id", "a b"),
                      S + 'mqtt.client_id must be 1..64 characters of A-Z a-z 0-9 _ -, got "a b"',
                      "mqtt.client_id"),
    "allow_unverified_string": (_set("tls.allow_unverified", "false"),
                                S + 'tls.allow_unverified must be true or false, got "false"',
                                "tls.allow_unverified"),
    "allow_unverified_int": (_set("tls.allow_unverified", 0),
                             S + "tls.allow_unverified must be true or false, got 0",
                             "tls.allow_unverified"),
    "ca_empty_list": (_set("tls.ca", []),
                      S + "tls.ca must be a file name or a non-empty list of file names, "
                      "got a list", "tls.ca"),
    "ca_object": (_set("tls.ca", {"a": 1}),
                  S + "tls.ca must be a file name or a non-empty list of file names, "
                  "got an object", "tls.ca"),
    "ca_item_not_string": (_set("tls.ca", ["ca.der", 7]),
                           S + "tls.ca[1] must be a file name, got 7", "tls.ca[1]"),
    "ca_missing_file": (_set("tls.ca", ["ca.der", "old-root.der"]),
                        S + 'tls.ca[1]: file "old-root.der" not found', "tls.ca[1]"),
    "cert_missing_file": (_set("tls.cert", "device.crt.der.bak"),
                          S + 'tls.cert: file "device.crt.der.bak" not found', "tls.cert"),
    "key_empty_file": (_set("tls.key", "empty.der"),
                       S + 'tls.key: file "empty.der" is empty', "tls.key"),
    "volts_per_count_zero": (_set("sample.volts_per_count", 0),
                             S + "sample.volts_per_count must be a number 1e-06..100, got 0",
                             "sample.volts_per_count"),
    "volts_per_count_string": (_set("sample.volts_per_count", "0.0125"),
                               S + 'sample.volts_per_count must be a number 1e-06..100, '
                               'got "0.0125"', "sample.volts_per_count"),
    "samples_too_dense": (_set("sample.samples", 2000),
                          S + "sample.samples must leave >= 100 us between samples "
                          "(sample.window_ms 100), got 2000", "sample.samples"),
    "interval_shorter_than_window": (_set("sample.interval_ms", 50),
                                     S + "sample.interval_ms must be >= sample.window_ms (100), "
                                     "got 50", "sample.interval_ms"),
    "backoff_inverted": (_set("backoff.max_ms", 100),
                         S + "backoff.max_ms must be >= backoff.min_ms (500), got 100",
                         "backoff.max_ms"),
    "volts_range_inverted": (_set("sample.volts_max", 80),
                             S + "sample.volts_max must be > sample.volts_min (90), got 80",
                             "sample.volts_max"),
    "max_readings_negative": (_set("run.max_readings", -5),
                              S + "run.max_readings must be an integer 0..1000000000, got -5",
                              "run.max_readings"),
}

# Whole files given to load(): name -> (file text or None for no file, message prefix).
FILES = {
    "no_file": (None, "missing.json: file not found"),
    "bad_json": ('{"device_id": "b1",', "bad_json.json: not valid JSON ("),
    "not_object": ("[1, 2]", "not_object.json: must be a JSON object, got a list"),
}

VECTORS = r'''
import json
from securenode import config

def dump(cfg):
    out = {"device_id": cfg.device_id, "repr": repr(cfg)}
    for name in ("wifi", "ntp", "mqtt", "tls", "timeouts_ms", "sample", "backoff", "run"):
        section = getattr(cfg, name)
        out[name] = dict(section.__dict__)
    return out

def attempt(fn):
    try:
        return {"ok": dump(fn())}
    except config.ConfigError as e:
        return {"error": str(e), "field": e.field}

cases = json.loads(CASES)
results = {}
for name in cases["dicts"]:
    results[name] = attempt(lambda: config.validate(cases["dicts"][name]))
for name in cases["files"]:
    results["file:" + name] = attempt(lambda: config.load(cases["files"][name]))
results["load:ok"] = attempt(lambda: config.load("config.json"))
results["load:subdir"] = attempt(lambda: config.load("conf/config.json"))
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    dicts = {"valid": VALID, "minimal": MINIMAL}
    for name, (mutate, _, _) in INVALID.items():
        cfg = copy.deepcopy(VALID)
        mutate(cfg)
        dicts[name] = cfg
    files = dict(FLASH)
    paths = {}
    for name, (text, _) in FILES.items():
        path = "missing.json" if text is None else name + ".json"
        if text is not None:
            files[path] = text
        paths[name] = path
    files["config.json"] = json.dumps(VALID)
    # A config in a directory finds its tls files next to it.
    sub = copy.deepcopy(MINIMAL)
    files["conf/config.json"] = json.dumps(sub)
    for f in ("ca.der", "device.crt.der", "device.key.der"):
        files["conf/" + f] = FLASH[f]
    files.update(firmware_files("config", "settings"))
    code = "CASES = %r\n" % json.dumps({"dicts": dicts, "files": paths}) + VECTORS
    return run_both(files, code, tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_agree_on_every_case(results):
    cpy, mpy = copy.deepcopy(results)
    # JSON error details come from each port's own parser; everything else is ours.
    for r in (cpy, mpy):
        r["file:bad_json"]["error"] = r["file:bad_json"]["error"].split("(")[0]
    assert cpy == mpy


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_valid_config_is_read_as_written(results, port):
    got = results[port]["valid"]["ok"]
    assert got["device_id"] == "board-1"
    assert got["mqtt"] == {"host": "localhost", "port": 8883, "keepalive_s": 60,
                           "client_id": "board-1", "inflight": 8}
    assert got["tls"] == {"ca": ["ca.der"], "cert": "device.crt.der", "key": "device.key.der",
                          "server_hostname": "localhost", "allow_unverified": False}
    assert got["sample"]["volts_per_count"] == 0.0125
    assert got["timeouts_ms"] == {"dns": 5000, "connect": 5000, "handshake": 10000, "io": 5000}
    assert results[port]["load:ok"] == results[port]["valid"]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_optional_fields_take_documented_defaults(results, port):
    got = results[port]["minimal"]["ok"]
    assert got["wifi"] == {"ssid": "net", "key": "", "timeout_ms": 10000}
    assert got["ntp"] == {"host": "pool.ntp.org", "timeout_ms": 3000}
    assert got["mqtt"] == {"host": "broker.example", "port": 8883, "keepalive_s": 60,
                           "client_id": "b1", "inflight": 8}
    assert got["tls"]["ca"] == ["ca.der"]  # a single string becomes a list
    assert got["tls"]["server_hostname"] == "broker.example"
    assert got["tls"]["allow_unverified"] is False
    assert got["sample"] == {"interval_ms": 1000, "adc_pin": 34, "volts_per_count": 0.0125,
                             "window_ms": 100, "samples": 200, "volts_min": 90,
                             "volts_max": 264, "hz_min": 45, "hz_max": 65}
    assert got["backoff"] == {"min_ms": 500, "max_ms": 30000}
    assert got["run"] == {"max_readings": 0}


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(INVALID))
def test_each_invalid_field_is_named_exactly(results, port, case):
    _, message, field = INVALID[case]
    assert results[port][case] == {"error": message, "field": field}


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(FILES))
def test_unreadable_files_are_named(results, port, case):
    assert results[port]["file:" + case]["error"].startswith(FILES[case][1])


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_wifi_key_never_appears_in_errors_or_repr(results, port):
    for name, r in results[port].items():
        text = json.dumps(r.get("error", "")) + (r["ok"]["repr"] if "ok" in r else "")
        assert "s3cret" not in text.lower(), name
    assert "key=<hidden>" in results[port]["valid"]["ok"]["repr"]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_tls_files_resolve_next_to_the_config_file(results, port):
    got = results[port]["load:subdir"]["ok"]["tls"]
    assert got["ca"] == ["conf/ca.der"]
    assert got["cert"] == "conf/device.crt.der"
