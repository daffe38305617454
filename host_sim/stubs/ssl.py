"""`tls` / `ssl` / `ussl` stand-ins: MicroPython's TLS over pyOpenSSL memory BIOs.

TLS records travel through the board's stand-in socket (so the air, timeouts and
loopback rule apply to them). The client behaves like the port's TLS library:

- esp32 (mbedTLS): TLS 1.2 only, offering what the board offers (_MBEDTLS_CIPHERS, P-256
  first). With CERT_REQUIRED the chain is verified *during* the handshake against the
  pinned roots at the board's RTC time, and the leaf is matched against server_hostname
  (SAN dNSName/iPAddress, CN only without SAN, as mbedTLS does). Any verification failure raises the generic
  OSError(-9984, 'MBEDTLS_ERR_X509_CERT_VERIFY_FAILED'); the real reason goes only to
  the board's debug log (<state_dir>/sim_debug.jsonl), never to the firmware.
- esp8266 (axTLS): TLS 1.2 at most, RSA key exchange ciphers only, no verification:
  verify_mode always reads back CERT_NONE and there is no load_verify_locations.
"""
import datetime
import errno
import ipaddress
import re
import time as _real_time
import types

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _ossl

from host_sim.stubs.socket import StreamReads, wire_bytes

CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1

_AXTLS_CIPHERS = b"AES128-SHA:AES256-SHA:AES128-SHA256:AES256-SHA256"
# What MicroPython's Mbed TLS offers as a client (extmod/mbedtls/mbedtls_config_common.h:
# TLS 1.2 only, ECDHE-ECDSA and RSA key exchange, no ECDHE-RSA, no ChaCha20) and its NIST
# groups, P-256 first. Measured (PORT_FACTS, and again here against a pyOpenSSL server):
# the unix port 1.29 / Mbed TLS 3.6.6 negotiates TLS 1.2 ECDHE-ECDSA-AES256-GCM-SHA384 on
# secp256r1. Left to itself OpenSSL would negotiate TLS 1.3 with a post-quantum hybrid key
# share (X25519MLKEM768): one round trip shorter and ~1 KB larger per handshake than any
# board, so the simulator would flatter both latency and bytes.
_MBEDTLS_CIPHERS = (b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:"
                    b"ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256:"
                    b"ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA:"
                    b"AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256:"
                    b"AES256-SHA:AES128-SHA")
_MBEDTLS_GROUPS = b"P-256:P-384:P-521"
_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)

# mbedTLS error codes, with the short names the esp32 port prints.
_VERIFY_FAILED = (-9984, "MBEDTLS_ERR_X509_CERT_VERIFY_FAILED")
_FATAL_ALERT = (-30592, "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE")
_CONN_EOF = (-29312, "MBEDTLS_ERR_SSL_CONN_EOF")
_HANDSHAKE_FAILURE = (-28160, "MBEDTLS_ERR_SSL_HANDSHAKE_FAILURE")
_CA_CHAIN_REQUIRED = (-30336, "MBEDTLS_ERR_SSL_CA_CHAIN_REQUIRED")
# axTLS codes (SSL_ERROR_CONN_LOST; a received handshake_failure alert).
_AX_CONN_LOST = (-256, "CONN_LOST")
_AX_HANDSHAKE_FAILURE = (-40, "HANDSHAKE_FAILURE")

# OpenSSL X509_V_ERR_* -> the reason a firmware diagnosis should arrive at.
_X509_REASONS = {
    9: "not_yet_valid", 10: "expired", 2: "untrusted", 18: "untrusted", 19: "untrusted",
    20: "untrusted", 21: "untrusted", 7: "bad_signature", 4: "bad_signature",
    13: "not_yet_valid", 14: "expired",
}
# Text like mbedtls_x509_crt_verify_info (--tls-verify-error valueerror only).
_MBEDTLS_INFO = {
    "expired": "The certificate validity has expired",
    "not_yet_valid": "The certificate validity starts in the future",
    "untrusted": "The certificate is not correctly signed by the trusted CA",
    "bad_signature": "The certificate is not correctly signed by the trusted CA",
    "hostname_mismatch": "The certificate Common Name (CN) does not match with the expected CN",
}


def _oserror(pair):
    return OSError(pair[0], pair[1])


def _load_der_or_pem_cert(data):
    data = bytes(data)
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _load_key(data):
    data = bytes(data)
    if b"-----BEGIN" in data:
        return serialization.load_pem_private_key(data, password=None)
    return serialization.load_der_private_key(data, password=None)


def _hostname_matches(cert, hostname):
    """mbedTLS's rule: SAN entries if the extension exists, else the subject CN(s)."""
    try:
        ip = ipaddress.ip_address(hostname)
    except ValueError:
        ip = None
    host = hostname.lower().rstrip(".")
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        if ip is not None:
            return ip in san.get_values_for_type(x509.IPAddress)
        names = san.get_values_for_type(x509.DNSName)
    else:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    for name in names:
        name = str(name).lower().rstrip(".")
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _openssl_reason_text(code):
    try:
        from OpenSSL._util import ffi, lib
        return ffi.string(lib.X509_verify_cert_error_string(code)).decode()
    except Exception:       # private pyOpenSSL API: best effort for the debug log only
        return "X509_V_ERR %d" % code


def make_modules(state):
    """Build the `tls` (native layer) and `ssl` (micropython-lib wrapper) modules."""
    esp8266 = state.port == "esp8266"

    class SSLContext:
        def __init__(self, protocol):
            self._server = protocol == PROTOCOL_TLS_SERVER
            self._authmode = CERT_REQUIRED if not self._server and not esp8266 else CERT_NONE
            self._cas = []
            self._cert = None
            self._key = None
            self._raw_key_cert = None

        @property
        def verify_mode(self):
            return CERT_NONE if esp8266 else self._authmode

        @verify_mode.setter
        def verify_mode(self, value):
            if not esp8266:
                self._authmode = int(value)

        def load_cert_chain(self, certfile, keyfile):
            if esp8266:
                self._raw_key_cert = (keyfile, certfile)   # axTLS parses at wrap time
                return
            try:
                self._key = _load_key(keyfile)
            except Exception:
                raise ValueError("invalid key") from None
            try:
                self._cert = _load_der_or_pem_cert(certfile)
            except Exception:
                raise ValueError("invalid cert") from None

        def _load_verify_locations(self, cadata):
            cadata = bytes(cadata)
            try:
                if b"-----BEGIN" in cadata:
                    blocks = _PEM_CERT_RE.findall(cadata)
                    if not blocks or (state.mpy == "1.24" and len(blocks) != 1):
                        raise ValueError
                    certs = [x509.load_pem_x509_certificate(b) for b in blocks]
                else:
                    certs = [x509.load_der_x509_certificate(cadata)]
            except Exception:
                raise ValueError("invalid cert") from None
            self._cas.extend(certs)

        def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                        server_hostname=None):
            if (not esp8266 and not server_side and server_hostname is None
                    and self._authmode == CERT_REQUIRED):
                raise ValueError("CERT_REQUIRED requires server_hostname")
            ssock = SSLSocket(self, sock, server_side, server_hostname)
            if do_handshake_on_connect:
                ssock._handshake()
            return ssock

    if not esp8266:
        SSLContext.load_verify_locations = SSLContext._load_verify_locations

    class SSLSocket(StreamReads):
        def __init__(self, context, sock, server_side, server_hostname):
            self._sock = sock
            self._context = context
            self._hostname = server_hostname
            self._server = server_side
            self._failure = None           # (reason, detail) from the verify callback
            self._last_error = None        # mbedTLS keeps a failed session failed
            self._done = False
            self._conn = SSL.Connection(self._make_ctx(), None)
            self._conn.set_app_data(self)
            if server_side:
                self._conn.set_accept_state()
            else:
                if server_hostname and not _is_ip(server_hostname):
                    self._conn.set_tlsext_host_name(server_hostname.encode())
                self._conn.set_connect_state()

        def _make_ctx(self):
            c = self._context
            ctx = SSL.Context(SSL.TLS_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
            if esp8266:
                ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
                ctx.set_cipher_list(_AXTLS_CIPHERS)
                if c._raw_key_cert is not None:
                    key_data, cert_data = c._raw_key_cert
                    try:
                        key = _load_key(key_data)
                        if not isinstance(key, rsa.RSAPrivateKey):
                            raise ValueError
                    except Exception:
                        raise ValueError("invalid key") from None
                    try:
                        cert = _load_der_or_pem_cert(cert_data)
                    except Exception:
                        raise ValueError("invalid cert") from None
                    ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))
                    ctx.use_certificate(crypto.X509.from_cryptography(cert))
                ctx.set_verify(SSL.VERIFY_NONE, None)
                return ctx
            if not self._server:
                ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
                ctx.set_cipher_list(_MBEDTLS_CIPHERS)
                # pyOpenSSL has no public call for the groups list: its OpenSSL binding does.
                if not _ossl.SSL_CTX_set1_curves_list(ctx._context, _MBEDTLS_GROUPS):
                    raise OSError("simulator: OpenSSL refused the Mbed TLS groups")
            if c._key is not None:
                ctx.use_privatekey(crypto.PKey.from_cryptography_key(c._key))
                ctx.use_certificate(crypto.X509.from_cryptography(c._cert))
            store = ctx.get_cert_store()
            for ca in c._cas:
                store.add_cert(crypto.X509.from_cryptography(ca))
            board_now = datetime.datetime.fromtimestamp(int(state.board_unix_s()),
                                                        tz=datetime.timezone.utc)
            store.set_time(board_now)
            if c._authmode == CERT_NONE:
                ctx.set_verify(SSL.VERIFY_NONE, None)
            else:
                mode = SSL.VERIFY_PEER
                if self._server and c._authmode == CERT_REQUIRED:
                    mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
                ctx.set_verify(mode, _verify_cb)
            return ctx

        # --- verification (runs inside the handshake) ------------------------------
        def _verify(self, x509_obj, errnum, depth, ok):
            if not self._context._cas and not self._server:
                self._note_failure("ca_chain_required", errnum, depth, "no CA loaded")
            elif not ok:
                self._note_failure(_X509_REASONS.get(errnum, "x509_error_%d" % errnum),
                                   errnum, depth, _openssl_reason_text(errnum))
            elif depth == 0 and self._hostname and not self._server:
                leaf = x509_obj.to_cryptography()
                if not _hostname_matches(leaf, self._hostname):
                    self._note_failure("hostname_mismatch", 0, 0,
                                       "certificate does not match %r" % self._hostname)
            if self._context._authmode == CERT_OPTIONAL:
                return True
            return self._failure is None

        def _note_failure(self, reason, errnum, depth, detail):
            if self._failure is None:
                self._failure = (reason, detail)
                state.debug("tls_verify_failed", reason=reason, x509_errno=errnum,
                            depth=depth, openssl_reason=detail, hostname=self._hostname)

        # --- record pumping -----------------------------------------------------------
        def _flush(self):
            while True:
                try:
                    out = self._conn.bio_read(65536)
                except SSL.WantReadError:
                    return
                self._sock.sendall(out)

        def _feed(self):
            """Move one chunk from the socket into the TLS engine; False if none yet."""
            data = self._sock._recv_once(16384)
            if data is None:
                return False
            if not data:
                self._conn.bio_shutdown()
                return True
            self._conn.bio_write(data)
            return True

        def _handshake(self):
            while True:
                try:
                    self._conn.do_handshake()
                    self._flush()
                    break
                except SSL.WantReadError:
                    self._flush()
                    if not self._feed():
                        _real_time.sleep(0.001)     # mbedTLS polls a non-blocking socket
                except SSL.Error as e:
                    try:
                        self._flush()                # our alert reaches the peer
                    except OSError:
                        pass
                    raise self._handshake_error(e) from None
            self._done = True
            state.debug("tls_handshake_ok", hostname=self._hostname, port=state.port,
                        version=self._conn.get_protocol_version_name(),
                        cipher=self._conn.get_cipher_name())

        def _handshake_error(self, exc):
            self._sock.close()
            if self._failure is not None:
                reason, detail = self._failure
                if reason == "ca_chain_required":
                    return _oserror(_CA_CHAIN_REQUIRED)
                if state.verify_error == "valueerror":
                    return ValueError(_MBEDTLS_INFO.get(reason, "The certificate is not valid"))
                return _oserror(_VERIFY_FAILED)
            text = " ".join(str(part) for part in getattr(exc, "args", ()))
            state.debug("tls_handshake_failed", hostname=self._hostname, port=state.port,
                        openssl_error=text)
            if isinstance(exc, SSL.SysCallError) or "unexpected eof" in text.lower():
                return _oserror(_AX_CONN_LOST if esp8266 else _CONN_EOF)
            if esp8266:
                return _oserror(_AX_HANDSHAKE_FAILURE)
            if "alert" in text.lower():
                return _oserror(_FATAL_ALERT)
            return _oserror(_HANDSHAKE_FAILURE)

        # --- stream API ------------------------------------------------------------
        def _check(self):
            if self._sock is None or self._sock._host is None:
                raise OSError(errno.EBADF, "EBADF")
            if self._last_error is not None:
                raise OSError(self._last_error, "")

        def _fail(self, exc):
            # mbedTLS hands socket errors back negated and remembers them.
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            self._last_error = -code if code > 0 else code
            return OSError(self._last_error, "")

        def _read_chunk(self, n):
            self._check()
            if not self._done:
                self._handshake()
            while True:
                try:
                    return self._conn.recv(n)
                except SSL.ZeroReturnError:
                    return b""                      # close_notify: clean EOF
                except SSL.WantReadError:
                    try:
                        if not self._feed():
                            return None
                    except OSError as e:
                        raise self._fail(e) from None
                except SSL.Error:
                    if self._conn.get_shutdown() & SSL.RECEIVED_SHUTDOWN:
                        return b""
                    # Transport EOF without close_notify.
                    self._last_error = _AX_CONN_LOST[0] if esp8266 else _CONN_EOF[0]
                    if esp8266:
                        return b""
                    raise _oserror(_CONN_EOF) from None

        def write(self, buf, n=None):
            self._check()
            if not self._done:
                self._handshake()
            data = wire_bytes(buf, n)
            try:
                self._conn.sendall(data)
                self._flush()
            except OSError as e:
                raise self._fail(e) from None
            return len(data)

        def setblocking(self, flag):
            return self._sock.setblocking(flag)

        def close(self):
            # mbedtls_ssl_free without close_notify, then the socket closes.
            if self._sock is not None:
                self._sock.close()

    if not esp8266:
        def getpeercert(self, binary_form=False):
            if not binary_form:
                raise NotImplementedError
            cert = self._conn.get_peer_certificate()
            if cert is None:
                return None
            return cert.to_cryptography().public_bytes(serialization.Encoding.DER)

        def cipher(self):
            return (self._conn.get_cipher_name(), self._conn.get_protocol_version_name())

        SSLSocket.getpeercert = getpeercert
        SSLSocket.cipher = cipher

    def _verify_cb(conn, x509_obj, errnum, depth, ok):
        return conn.get_app_data()._verify(x509_obj, errnum, depth, ok)

    tls = types.ModuleType("tls")
    tls.SSLContext = SSLContext
    tls.PROTOCOL_TLS_CLIENT = PROTOCOL_TLS_CLIENT
    tls.PROTOCOL_TLS_SERVER = PROTOCOL_TLS_SERVER
    tls.CERT_NONE = CERT_NONE
    if not esp8266:
        tls.CERT_OPTIONAL = CERT_OPTIONAL
        tls.CERT_REQUIRED = CERT_REQUIRED
        tls.MBEDTLS_VERSION = "Mbed TLS 3.6.0 (simulated)"

    ssl = types.ModuleType("ssl")
    ssl.__dict__.update({k: v for k, v in vars(tls).items() if not k.startswith("__")})
    _build_ssl_wrapper(ssl, tls)
    return tls, ssl


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _build_ssl_wrapper(ssl, tls):
    """micropython-lib's ssl.py: a Python SSLContext over tls.SSLContext."""

    class SSLContext:
        def __init__(self, *args):
            self._context = tls.SSLContext(*args)
            self._context.verify_mode = tls.CERT_NONE

        @property
        def verify_mode(self):
            return self._context.verify_mode

        @verify_mode.setter
        def verify_mode(self, val):
            self._context.verify_mode = val

        def load_cert_chain(self, certfile, keyfile):
            if isinstance(certfile, str):
                with open(certfile, "rb") as f:
                    certfile = f.read()
            if isinstance(keyfile, str):
                with open(keyfile, "rb") as f:
                    keyfile = f.read()
            self._context.load_cert_chain(certfile, keyfile)

        def load_verify_locations(self, cafile=None, cadata=None):
            if cafile:
                with open(cafile, "rb") as f:
                    cadata = f.read()
            # On axTLS the native context has no such method: AttributeError, as on a board.
            self._context.load_verify_locations(cadata)

        def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                        server_hostname=None):
            return self._context.wrap_socket(sock, server_side=server_side,
                                             do_handshake_on_connect=do_handshake_on_connect,
                                             server_hostname=server_hostname)

    def wrap_socket(sock, server_side=False, key=None, cert=None, cert_reqs=tls.CERT_NONE,
                    cadata=None, server_hostname=None, do_handshake=True):
        con = SSLContext(tls.PROTOCOL_TLS_SERVER if server_side else tls.PROTOCOL_TLS_CLIENT)
        if cert or key:
            con.load_cert_chain(cert, key)
        if cadata:
            con.load_verify_locations(cadata=cadata)
        con.verify_mode = cert_reqs
        return con.wrap_socket(sock, server_side=server_side,
                               do_handshake_on_connect=do_handshake,
                               server_hostname=server_hostname)

    ssl.SSLContext = SSLContext
    ssl.wrap_socket = wrap_socket
