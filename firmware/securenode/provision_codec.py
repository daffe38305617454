"""The pure half of provisioning: the comparison code, the beacon, the base station's
answers. No I/O, so the same vectors run on CPython and on MicroPython.

Example::

    code = comparison_code(nonce, base_station_cert_der)     # "042917"
    outcome, creds = parse_outcome(200, body, "base.local:8443")
"""

import hashlib
import json

from micropython import const

MAX_BEACON_BYTES = const(256)
_MAX_FIELD_CHARS = const(253)
_CODE_MOD = const(1000000)


class ProvisionError(Exception):
    """Provisioning did not give credentials: ``kind`` says why, ``peer`` names the base.

    Kinds: provision_denied, provision_expired, provision_timeout, provision_protocol,
    provision_discovery.
    """

    def __init__(self, kind, peer, detail):
        super().__init__("%s: %s (base station %s)" % (kind, detail, peer))
        self.kind = kind
        self.peer = peer


def comparison_code(nonce, cert_der):
    """The 6 digits board and operator compare: SHA-256(nonce || SHA-256(cert DER)),
    read as a big-endian integer, mod 10**6.

    >>> comparison_code(b"\\x00" * 16, b"cert")
    '033619'
    """
    digest = hashlib.sha256(nonce + hashlib.sha256(cert_der).digest()).digest()
    value = 0
    for b in digest:
        # Reduce as we go: no big integers needed on a small port.
        value = (value * 256 + b) % _CODE_MOD
    return "%06d" % value


def beacon_port(data, pinned_fingerprints):
    """The HTTPS port a beacon advertises, or None when it is not for our pinned CA.

    The beacon only saves a configured host name; trust still comes from TLS.

    >>> beacon_port(b'{"service": "securenode-base", "port": 8443, "ca_sha256": "ab"}', ["ab"])
    8443
    """
    if len(data) > MAX_BEACON_BYTES:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if type(doc) is not dict or doc.get("service") != "securenode-base":
        return None
    port = doc.get("port")
    if type(port) is not int or not 1 <= port <= 65535:
        return None
    if doc.get("ca_sha256") not in pinned_fingerprints:
        return None
    return port


def parse_outcome(status, body, peer):
    """(outcome, credentials or None) from a poll answer; ProvisionError if malformed.

    >>> parse_outcome(200, b'{"status": "pending"}', "b")
    ('pending', None)
    """
    try:
        doc = json.loads(body)
    except ValueError:
        raise ProvisionError("provision_protocol", peer, "answer is not JSON (HTTP %d)" % status)
    if type(doc) is not dict or type(doc.get("status")) is not str:
        raise ProvisionError("provision_protocol", peer, "answer has no status (HTTP %d)" % status)
    outcome = doc["status"]
    if outcome != "approved":
        return outcome, None
    mqtt = doc.get("mqtt")
    if type(mqtt) is not dict:
        raise ProvisionError("provision_protocol", peer, "approved without mqtt credentials")
    creds = {}
    for field in ("host", "user", "password", "server_hostname"):
        value = mqtt.get(field)
        if type(value) is not str or not 1 <= len(value) <= _MAX_FIELD_CHARS:
            # Never quote the value: it may be the password.
            raise ProvisionError("provision_protocol", peer, "mqtt.%s missing or malformed"
                                 % field)
        creds[field] = value
    port = mqtt.get("port")
    if type(port) is not int or not 1 <= port <= 65535:
        raise ProvisionError("provision_protocol", peer, "mqtt.port missing or malformed")
    creds["port"] = port
    return outcome, creds
