"""securenode/pinned_tls.py on real MicroPython (the unix port's Mbed TLS): one SSLContext is
loaded once and reused, and with one root set the DER copies of the device's certificate, key
and root are not kept beside it (~1 KB of a board's resident heap, issue 10); with several root
sets (a port that takes one root at a time) they stay, since a new root needs a new context."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"

SCRIPT = """
import json, sys
sys.path.insert(0, %r)
from securenode.pinned_tls import PinnedTls

def read(name):
    with open(name, "rb") as f:
        return f.read()

ca, cert, key = read("ca.der"), read("device.crt.der"), read("device.key.der")
out = {}
tls = PinnedTls([ca], cert, key, "localhost", 1000, 1000)
first = tls.context()
tls.cadata = tls.root_sets[0]  # what a link does before each connection
out["one"] = {"cert_kept": tls._cert is not None, "key_kept": tls._key is not None,
              "root_kept": tls.root_sets != [None] or tls.cadata is not None,
              "same_context": tls.context() is first, "root_sets": len(tls.root_sets)}
# A port that takes one root at a time: each root set is its own context.
tls = PinnedTls([ca], cert, key, "localhost", 1000, 1000)
tls.root_sets = [ca, read("other.der")]
first = tls.context()
tls.cadata = tls.root_sets[1]
second = tls.context()
out["two"] = {"cert_kept": tls._cert is not None, "key_kept": tls._key is not None,
              "new_context": second is not first}
print(json.dumps(out))
"""


def test_one_root_set_keeps_no_copy_of_the_device_cert_and_key(pki, tmp_path):
    device = pki.device("ctx-keep")
    for name, path in (("ca.der", pki.ca.cert_der), ("device.crt.der", device.cert_der),
                       ("device.key.der", device.key_der), ("other.der", pki.rogue_ca.cert_der)):
        (tmp_path / name).write_bytes(Path(path).read_bytes())
    (tmp_path / "run.py").write_text(SCRIPT % str(ROOT / "firmware"))
    proc = subprocess.run([str(MICROPYTHON), "run.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["one"] == {"cert_kept": False, "key_kept": False, "root_kept": False,
                          "same_context": True, "root_sets": 1}
    assert out["two"] == {"cert_kept": True, "key_kept": True, "new_context": True}
