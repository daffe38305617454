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

    tls = PinnedTls(ca, cert, key, "broker.local", handshake_ms=10000, io_ms=5000)
    sock = tls.wrap_socket(raw_sock)      # raises OSError / ValueError like ssl does
    # on failure: raise tls.explain(exc, "broker.local", 8883)
"""

import binascii
import hashlib
import ssl
import sys


class TlsError(Exception):
    """A TLS failure by ``kind``, naming the peer and the pinned root(s) it was judged by."""

    def __init__(self, kind, peer, detail, pinned=None):
        super().__init__("%s: %s (peer %s%s)" % (
            kind, detail, peer, ", pinned root sha256 " + pinned if pinned else ""))
        self.kind = kind
        self.peer = peer


def port_can_verify(context=None):
    """True when this port's TLS stack checks certificates (mbedTLS), False for axTLS.

    ``context`` (a fresh SSLContext) is the one asked, left at CERT_REQUIRED where it can be.

    >>> port_can_verify()     # the unix and ESP32 ports (mbedTLS)
    True
    """
    required = getattr(ssl, "CERT_REQUIRED", None)
    if required is None:
        return False
    ctx = context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not hasattr(ctx, "load_verify_locations"):
        return False
    ctx.verify_mode = required
    # axTLS accepts the assignment and keeps CERT_NONE: read it back.
    return ctx.verify_mode == required


def fingerprint(cert):
    """The SHA-256 of a certificate (DER bytes) as lowercase hex, as the status reports roots.

    >>> len(fingerprint(ca_der))
    64
    """
    return binascii.hexlify(hashlib.sha256(cert).digest()).decode()


class PinnedTls:
    """ca: the pinned root certificates (a list of DER bytes); cert, key: the device's
    certificate and private key (DER), or None; deadlines in milliseconds."""

    def __init__(self, ca, cert, key, server_hostname, handshake_ms, io_ms,
                 allow_unverified=False):
        self.server_hostname = server_hostname
        # The context that answers the question is the one the first connection uses: an
        # SSLContext is ~3 KB of GC heap in one piece, allocated once instead of twice.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.verified = port_can_verify(ctx)
        if not self.verified and not allow_unverified:
            raise TlsError("unverifiable_port", server_hostname,
                           "this port's TLS cannot verify certificates; refusing to connect "
                           "(set tls.allow_unverified to accept unverified TLS)")
        self.pinned = ",".join(map(fingerprint, ca))
        self._cert = cert
        self._key = key
        self._handshake_s = handshake_ms / 1000
        self._io_s = io_ms / 1000
        if not self.verified:
            self.root_sets = [None]
        elif len(ca) == 1:
            self.root_sets = [ca[0]]
        else:
            from securenode import tls_roots  # several roots: how does this port take them?

            self.root_sets = tls_roots.root_sets(ca)
        self.cadata = self.root_sets[0]
        self._ctx = None        # the SSLContext for _ctx_cadata, kept across connections
        self._ctx_cadata = None
        self._fresh = ctx       # not loaded yet: context() loads the roots and our key

    def context(self):
        # Kept across reconnects: an SSLContext is ~3 KB of GC heap in one piece, which a
        # heap fragmented by hours of readings may no longer offer (a reconnect failed so at
        # 98 KB on the unix port), and re-parsing the roots and key costs time.
        if self._ctx is not None and self._ctx_cadata is self.cadata:
            return self._ctx
        self._ctx = None
        ctx = self._fresh or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._fresh = None
        if self.verified:
            ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython's ssl starts at CERT_NONE
            ctx.load_verify_locations(cadata=self.cadata)
        if self._cert:
            ctx.load_cert_chain(self._cert, self._key)
        self._ctx, self._ctx_cadata = ctx, self.cadata
        if len(self.root_sets) == 1:
            # One root set: cadata never changes (the links only ever set root_sets' values),
            # so this context is never rebuilt, and the DER it was loaded from would only stay
            # as dead copies (~1 KB of heap for as long as we run): our certificate and key,
            # and the root, whose set becomes None (the links pass it back as cadata, which
            # matches the context loaded for it).
            self._cert = self._key = None
            self.root_sets[0] = self.cadata = self._ctx_cadata = None
        return ctx

    def wrap_socket(self, sock, server_hostname=None):
        """The TLS handshake over a connected socket, within the handshake deadline."""
        sock.settimeout(self._handshake_s)
        tls = self.context().wrap_socket(sock, server_hostname=self.server_hostname)
        sock.settimeout(self._io_s)
        return tls

    def is_verify_failure(self, exc):
        """True when ``exc`` from wrap_socket says the peer's certificate did not verify
        (the next pinned root may then be tried); loads tls_roots, only after a failure."""
        from securenode import tls_roots

        return tls_roots.is_verify_failure(exc)

    def explain(self, exc, host, port):
        """The TlsError a failed handshake with ``host:port`` stands for."""
        # The reasoning (and the DER reader it may need) loads only after a failure and is
        # dropped again after, so a board that recovers keeps none of it resident.
        from securenode import tls_explain

        try:
            return tls_explain.explain(self, exc, host, port)
        finally:
            package = sys.modules.get("securenode")
            for name in "tls_explain x509_peek tls_roots".split():
                sys.modules.pop("securenode." + name, None)
                try:
                    # MicroPython keeps a submodule alive as its package's attribute too.
                    delattr(package, name)
                except (AttributeError, KeyError, TypeError):
                    pass  # never loaded
