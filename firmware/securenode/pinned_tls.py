"""TLS only to peers whose certificate chains to a root pinned on the board's flash.

Every connection checks the chain against the pinned root(s), the peer's host name and the
certificate dates, and presents the device's own certificate. A port whose TLS stack cannot
verify (ESP8266's axTLS) is refused unless the configuration explicitly allows unverified
TLS, and then every connection is reported as unverified.

A board reports all verification failures as one code (MBEDTLS_ERR_X509_CERT_VERIFY_FAILED,
-9984). ``explain`` turns that into the reason a person can act on: clock unset, expired,
not yet valid, wrong host name, unknown CA. Where the port gives no detail it looks at the
peer's certificate over a second, unverified handshake that carries no application data.

Example::

    tls = PinnedTls(ca_ders, cert_der, key_der, "broker.local", handshake_ms=10000,
                    io_ms=5000)
    sock = tls.wrap_socket(raw_sock)      # raises OSError / ValueError like ssl does
    # on failure: raise tls.explain(exc, "broker.local", 8883)
"""

import binascii
import hashlib
import ssl
import sys

from micropython import const

_VERIFY_FAILED = const(-9984)  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED

# Newer MicroPython raises ValueError carrying mbedTLS's verify text instead of -9984.
_VERIFY_TEXTS = (
    ("validity has expired", "cert_expired"),
    ("validity starts in the future", "cert_not_yet_valid"),
    ("does not match with the expected CN", "hostname_mismatch"),
    ("not correctly signed by the trusted CA", "unknown_ca"),
)


class TlsError(Exception):
    """A TLS failure by ``kind``, naming the peer and the pinned root(s) it was judged by."""

    def __init__(self, kind, peer, detail, pinned=None):
        text = "%s: %s (peer %s" % (kind, detail, peer)
        if pinned:
            text += ", pinned root sha256 %s" % pinned
        super().__init__(text + ")")
        self.kind = kind
        self.peer = peer


def port_can_verify():
    """True when this port's TLS stack checks certificates (mbedTLS), False for axTLS."""
    required = getattr(ssl, "CERT_REQUIRED", None)
    if required is None:
        return False
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not hasattr(ctx, "load_verify_locations"):
        return False
    ctx.verify_mode = required
    # axTLS accepts the assignment and keeps CERT_NONE: read it back.
    return ctx.verify_mode == required


def fingerprint(der):
    return binascii.hexlify(hashlib.sha256(der).digest()).decode()


def _pem(der):
    b64 = binascii.b2a_base64(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"


class PinnedTls:
    def __init__(self, ca_ders, cert_der, key_der, server_hostname, handshake_ms, io_ms,
                 allow_unverified=False):
        self.server_hostname = server_hostname
        self.verified = port_can_verify()
        if not self.verified and not allow_unverified:
            raise TlsError("unverifiable_port", server_hostname,
                           "this port's TLS cannot verify certificates; refusing to connect "
                           "(set tls.allow_unverified to accept unverified TLS)")
        self.pinned = ",".join(fingerprint(der) for der in ca_ders)
        self._cert = cert_der
        self._key = key_der
        self._handshake_s = handshake_ms / 1000
        self._io_s = io_ms / 1000
        self.root_sets = self._root_sets(ca_ders) if self.verified else [None]
        self.cadata = self.root_sets[0]
        self._ctx = None        # the SSLContext for _ctx_cadata, kept across connections
        self._ctx_cadata = None

    def _root_sets(self, ders):
        # Before MicroPython 1.29 cadata held one certificate: pin each root in turn there.
        if len(ders) == 1:
            return [ders[0]]
        bundle = b"".join(_pem(der) for der in ders)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=bundle)
            return [bundle]
        except ValueError:
            return list(ders)

    def context(self):
        # Kept across reconnects: an SSLContext is ~3 KB of GC heap in one piece, which a
        # heap fragmented by hours of readings may no longer offer (a reconnect failed so at
        # 98 KB on the unix port), and re-parsing the roots and key costs time.
        if self._ctx is not None and self._ctx_cadata is self.cadata:
            return self._ctx
        self._ctx = None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.verified:
            ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython's ssl starts at CERT_NONE
            ctx.load_verify_locations(cadata=self.cadata)
        if self._cert:
            ctx.load_cert_chain(self._cert, self._key)
        self._ctx, self._ctx_cadata = ctx, self.cadata
        return ctx

    def wrap_socket(self, sock, server_hostname=None):
        """The TLS handshake over a connected socket, within the handshake deadline."""
        sock.settimeout(self._handshake_s)
        tls = self.context().wrap_socket(sock, server_hostname=self.server_hostname)
        sock.settimeout(self._io_s)
        return tls

    def is_verify_failure(self, exc):
        if isinstance(exc, OSError):
            return bool(exc.args) and exc.args[0] == _VERIFY_FAILED
        if isinstance(exc, ValueError):
            text = str(exc)
            return any(needle in text for needle, _ in _VERIFY_TEXTS)
        return False

    def explain(self, exc, host, port):
        """The TlsError a failed handshake with ``host:port`` stands for."""
        # The reasoning (and the DER reader it may need) loads only after a failure and is
        # dropped again after, so a board that recovers keeps none of it resident.
        from securenode import tls_explain

        try:
            return tls_explain.explain(self, exc, host, port)
        finally:
            for name in ("securenode.tls_explain", "securenode.x509_peek"):
                sys.modules.pop(name, None)
