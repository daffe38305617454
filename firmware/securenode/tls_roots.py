"""What only a board with several pinned roots, or a failed handshake, needs of pinned TLS.

pinned_tls loads this module when more than one root is pinned (to find how the port takes
them) or when a handshake failed (to tell a verification failure from any other); a board
with one root that connects keeps none of it resident (issue 10). tls_explain reads the
same verification texts.

Example::

    >>> is_verify_failure(OSError(-9984)), is_verify_failure(OSError(104))
    (True, False)
"""

import binascii
import ssl

from micropython import const

_VERIFY_FAILED = const(-9984)  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED

# Newer MicroPython raises ValueError carrying mbedTLS's verify text instead of -9984.
VERIFY_TEXTS = (
    ("validity has expired", "cert_expired"),
    ("validity starts in the future", "cert_not_yet_valid"),
    ("does not match with the expected CN", "hostname_mismatch"),
    ("not correctly signed by the trusted CA", "unknown_ca"),
)


def is_verify_failure(exc):
    """True when ``exc`` from a handshake says the peer's certificate did not verify."""
    if isinstance(exc, OSError):
        return bool(exc.args) and exc.args[0] == _VERIFY_FAILED
    if isinstance(exc, ValueError):
        text = str(exc)
        return any(needle in text for needle, _ in VERIFY_TEXTS)
    return False


def _pem(der):
    b64 = binascii.b2a_base64(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


def root_sets(ders):
    """The cadata values to try in turn: one PEM bundle where the port takes several roots
    at once, else each DER root alone (before MicroPython 1.29 cadata held one)."""
    bundle = b"".join(_pem(der) for der in ders)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=bundle)
        return [bundle]
    except ValueError:
        return list(ders)
