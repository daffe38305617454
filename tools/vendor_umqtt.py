"""Put micropython-lib's umqtt.simple (the PyPI sdist, pinned by hash) into tests/vendor.

The board no longer runs it (firmware/securenode/mqtt_codec.py + mqtt_link.py replaced it):
it stays as the reference peer the codec's bytes are compared with (tests/test_mqtt_codec.py)
and as the baseline of `make bench` (bytes and allocations per reading).

pip refuses to install micropython-umqtt.simple (its sdist has no setup.py), but it still
resolves the pinned release and names the file it found; we fetch that file, check its
SHA-256 against the pin below and extract only umqtt/simple.py.

    python tools/vendor_umqtt.py            # writes tests/vendor/umqtt/simple.py
"""

import hashlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

PACKAGE = "micropython-umqtt.simple"
VERSION = "1.3.4"
SDIST_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
MEMBER = "micropython-umqtt.simple-%s/umqtt/simple.py" % VERSION
DEST = Path(__file__).resolve().parent.parent / "tests" / "vendor" / "umqtt" / "simple.py"


def sdist_url():
    """Ask pip where the pinned sdist lives; its refusal message carries the address."""
    with tempfile.TemporaryDirectory() as scratch:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", scratch, "%s==%s" % (PACKAGE, VERSION)],
            capture_output=True, text=True)
    found = re.search(r"(https?://\S+?\.tar\.gz)", proc.stdout + proc.stderr)
    if not found:
        raise SystemExit("vendor_umqtt: pip did not locate %s==%s:\n%s"
                         % (PACKAGE, VERSION, (proc.stderr or proc.stdout).strip()))
    return found.group(1)


def main():
    if DEST.exists():
        return 0
    url = sdist_url()
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit("vendor_umqtt: %s==%s sdist has SHA-256 %s, expected %s; refusing it"
                         % (PACKAGE, VERSION, digest, SDIST_SHA256))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as sdist:
        source = sdist.extractfile(MEMBER).read()
    DEST.parent.mkdir(parents=True, exist_ok=True)
    DEST.write_bytes(source)
    print("vendor_umqtt: %s %s -> %s" % (PACKAGE, VERSION, DEST.relative_to(Path.cwd())
                                          if DEST.is_relative_to(Path.cwd()) else DEST))
    return 0


if __name__ == "__main__":
    sys.exit(main())
