"""securenode/settings.py: what the app keeps of config.json, on CPython and real MicroPython
(WebAssembly port): the validator is gone after load, and so are the sections of transports
the board does not use (issue 10: a table used once at boot must not stay resident)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

BASE = {
    "device_id": "b1",
    "wifi": {"ssid": "net"},
    "mqtt": {"host": "broker.example"},
    "tls": {"ca": "ca.der", "cert": "device.crt.der", "key": "device.key.der"},
}
TRANSPORTS = {
    "mqtts": {},
    "jsonl": {"transport": "jsonl", "jsonl": {"host": "collector.example", "port": 9000}},
    "wss": {"transport": "wss", "wss": {"host": "ingest.example", "token": "t0ken-t0ken-t0ken"}},
    "mqtt_wss": {"transport": "mqtt_wss", "wss": {"host": "broker.example"}},
}

VECTORS = r'''
import json, sys
from securenode import settings

out = {}
for name in ("mqtts", "jsonl", "wss", "mqtt_wss"):
    cfg = settings.load(name + ".json")
    out[name] = {"jsonl": cfg.jsonl is not None, "wss": cfg.wss is not None,
                 "mqtt_port": cfg.mqtt.port, "validator_loaded": "securenode.config" in sys.modules}
    if cfg.wss is not None:
        out[name]["wss_host"] = cfg.wss.host
print(json.dumps(out))
'''


def test_config_keeps_only_the_configured_transports_section_and_drops_the_validator(
        tmp_path):
    files = firmware_files("settings", "config")
    files.update({"ca.der": b"\x30\x00", "device.crt.der": b"\x30\x00",
                  "device.key.der": b"\x30\x00"})
    for name, extra in TRANSPORTS.items():
        files[name + ".json"] = json.dumps(dict(BASE, **extra))
    cpython, micropython = run_both(files, VECTORS, tmp_path)
    assert cpython == micropython
    r = cpython
    assert [(n, r[n]["jsonl"], r[n]["wss"]) for n in TRANSPORTS] == [
        ("mqtts", False, False), ("jsonl", True, False), ("wss", False, True),
        ("mqtt_wss", False, True)]
    assert r["wss"]["wss_host"] == "ingest.example" and r["mqtts"]["mqtt_port"] == 8883
    assert not any(r[n]["validator_loaded"] for n in TRANSPORTS)
