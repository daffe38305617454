"""securenode/settings.py on real MicroPython (unix port): what a validated config keeps in
RAM for as long as the board runs. The Config holds the values and nothing else (no field
lists, no section names, no validator): 1,920 bytes for this config on the 64-bit unix port
(2,944 with a field list and a name per section)."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
RESIDENT_CONFIG_BYTES = 2200  # measured 1,920; a field list per section adds ~1 KB

CONFIG = {"device_id": "heap-romfs", "wifi": {"ssid": "simnet", "key": "s3cret"},
          "mqtt": {"host": "127.0.0.1", "port": 8883},
          "tls": {"ca": "ca.der", "cert": "d.der", "key": "k.der"},
          "run": {"max_readings": 12}, "sample": {"interval_ms": 100}}

SCRIPT = """
import gc, json, sys
sys.path.insert(0, %r)
from securenode import settings
cfg = settings.load("config.json")   # the first load interns every name the validator has
del cfg
gc.collect()
before = gc.mem_alloc()
cfg = settings.load("config.json")
gc.collect()
print(json.dumps({"bytes": gc.mem_alloc() - before, "port": cfg.mqtt.port,
                  "validator_loaded": "securenode.config" in sys.modules}))
"""


def test_resident_config_keeps_only_the_values(tmp_path):
    for name in ("ca.der", "d.der", "k.der"):
        (tmp_path / name).write_bytes(b"\x30\x00")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "run.py").write_text(SCRIPT % str(ROOT / "firmware"))
    proc = subprocess.run([str(MICROPYTHON), "-X", "heapsize=400K", "run.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["port"] == 8883 and not out["validator_loaded"]
    assert out["bytes"] <= RESIDENT_CONFIG_BYTES, out
