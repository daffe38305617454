"""Why a pinned TLS handshake failed, in words a person can act on (pinned_tls.explain).

Loaded only after a failure, with the DER reader it may need (x509_peek), and unloaded again
by pinned_tls: a board that recovers keeps neither resident.
"""

import ssl

from securenode import clock, net
from securenode.pinned_tls import TlsError
from securenode.tls_roots import VERIFY_TEXTS as _VERIFY_TEXTS


def explain(tls, exc, host, port):
    """The TlsError a failed handshake of ``tls`` with ``host:port`` stands for.

    >>> explain(tls, OSError(-9984), "broker.local", 8883).kind   # peer's cert expired
    'cert_expired'
    """
    peer = "%s:%d" % (host, port)
    if net.is_timeout(exc):
        return TlsError("handshake_timeout", peer,
                        "no TLS handshake within %d ms (timeouts_ms.handshake)"
                        % int(tls._handshake_s * 1000),
                        tls.pinned)
    if not tls.is_verify_failure(exc):
        if isinstance(exc, ValueError):
            return TlsError("bad_credentials", peer,
                            "the board's own certificate or key does not load (%s)" % exc)
        return TlsError("handshake_failed", peer, "TLS handshake failed (%s)" % (exc,),
                        tls.pinned)
    if not clock.is_set():
        return TlsError("clock_unset", peer,
                        "board clock reads %d, before this firmware was built: sync NTP "
                        "first" % clock.unix_time(), tls.pinned)
    text = str(exc)
    for needle, kind in _VERIFY_TEXTS:
        if needle in text:
            return TlsError(kind, peer, text.strip(), tls.pinned)
    return _diagnose(tls, host, port)


def _diagnose(tls, host, port):
    # Look at the peer's certificate over a second, unverified handshake that carries no
    # application data, and say why the verified one failed.
    from securenode import x509_peek

    peer = "%s:%d" % (host, port)
    try:
        sock = net.open_tcp(host, port, int(tls._handshake_s * 1000))
        try:
            sock.settimeout(tls._handshake_s)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = ssl.CERT_NONE
            peek = ctx.wrap_socket(sock, server_hostname=tls.server_hostname)
            der = peek.getpeercert(True)
            peek.close()
        finally:
            sock.close()
        leaf = x509_peek.parse(der)
    except Exception as exc:
        return TlsError("verify_failed", peer,
                        "certificate rejected; the reason could not be read (%s)" % (exc,),
                        tls.pinned)
    now = clock.unix_time()
    if now < leaf.not_before:
        return TlsError("cert_not_yet_valid", peer,
                        "certificate valid from %d, board clock reads %d"
                        % (leaf.not_before, now), tls.pinned)
    if now > leaf.not_after:
        return TlsError("cert_expired", peer,
                        "certificate expired at %d, board clock reads %d"
                        % (leaf.not_after, now), tls.pinned)
    if not x509_peek.hostname_matches(tls.server_hostname, leaf):
        return TlsError("hostname_mismatch", peer,
                        "certificate is for %s, not %s"
                        % (_names(leaf), tls.server_hostname), tls.pinned)
    return TlsError("unknown_ca", peer,
                    "certificate issued by %r does not chain to the pinned root"
                    % (leaf.issuer_cn,), tls.pinned)


def _names(leaf):
    names = list(leaf.dns_names)
    names += [".".join(str(b) for b in ip) for ip in leaf.ip_addresses if len(ip) == 4]
    if not names and leaf.subject_cn:
        names.append(leaf.subject_cn)
    return ", ".join(names) or "no name"
