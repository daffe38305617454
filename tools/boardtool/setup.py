"""`board config` and `board enroll`: the files a deploy sends, checked before they are written.

A device directory (default device/) holds config.json, the pinned root(s) and the device's
certificate and key in DER, named as the config names them, exactly as they go on the flash.
"""
import getpass
import json
import shutil
import sys
from pathlib import Path

from tools import certs
from tools.boardtool import firmware
from tools.boardtool.errors import EXIT_USAGE, BoardToolError

DEVICE_CERT = "device.crt.der"
DEVICE_KEY = "device.key.der"
ROOT = "ca.der"


def enroll(device_id, directory, certs_dir=certs.DEFAULT_DIR, rsa=False, say=print):
    """Make the device's key and certificate with tools/certs.py; copy them and the root.

    rsa: RSA 2048 instead of ECDSA P-256, for a TLS stack without EC (older ESP8266 builds).

    >>> enroll("node-1", "device")      # device/device.crt.der, device.key.der, ca.der
    """
    directory = Path(directory)
    certs_dir = Path(certs_dir)
    if not (certs_dir / "ca.der").is_file():
        raise BoardToolError("%s: no CA yet (run `make certs` or `tools/certs.py init-ca`)"
                             % (certs_dir / "ca.der"), EXIT_USAGE)
    try:
        issued = certs.make_device(certs_dir, device_id, rsa=rsa)
    except certs.CertError as e:
        raise BoardToolError(str(e), EXIT_USAGE)
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(issued.cert_der, directory / DEVICE_CERT)
    shutil.copyfile(issued.key_der, directory / DEVICE_KEY)
    (directory / DEVICE_KEY).chmod(0o600)
    shutil.copyfile(certs_dir / "ca.der", directory / ROOT)
    say("enrolled %s: %s, %s, %s in %s (certificate sha256 %s)" % (
        device_id, DEVICE_CERT, DEVICE_KEY, ROOT, directory, issued.sha256[:16]))


def make_config(directory, device_id=None, ssid=None, wifi_key=None, broker=None, port=None,
                transport="mqtts", ask=None, say=print):
    """Write directory/config.json from the answers, validated by the firmware's config.py."""
    directory = Path(directory)
    ask = ask or _ask
    device_id = device_id or ask("device id")
    ssid = ssid or ask("WiFi network (SSID)")
    if wifi_key is None:
        wifi_key = ask("WiFi key", secret=True)
    broker = broker or ask("broker host")
    data = {"device_id": device_id, "transport": transport,
            "wifi": {"ssid": ssid, "key": wifi_key},
            "tls": {"ca": [ROOT], "cert": DEVICE_CERT, "key": DEVICE_KEY}}
    section = {"mqtts": "mqtt", "jsonl": "jsonl", "wss": "wss", "mqtt_wss": "wss"}.get(transport)
    if section is None:
        raise BoardToolError("transport must be one of mqtts, jsonl, wss, mqtt_wss, got %r"
                             % transport, EXIT_USAGE)
    data[section] = {"host": broker}
    if port is not None:
        data[section]["port"] = port
    if section == "wss":
        data["mqtt"] = {"host": broker}
    cfg = firmware.validate(data, directory)
    firmware.check_device_cert(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "config.json"
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    target.chmod(0o600)  # it holds the WiFi key
    say("wrote %s for %s (broker %s, transport %s)" % (target, device_id, broker, transport))
    return target


def _ask(question, secret=False):
    if not sys.stdin.isatty():
        raise BoardToolError("%s not given (use the flag; no terminal to ask on)" % question,
                             EXIT_USAGE)
    if secret:
        return getpass.getpass("%s: " % question)
    return input("%s: " % question).strip()
