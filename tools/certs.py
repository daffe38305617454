"""Make, inspect and pin the X.509 material SecureNode boards and test servers use.

A host tool in the manner of mpremote: one function per subcommand, a table naming them,
`--help` on each. Everything is read from and written to one directory (`--dir`, default the
repo's certs/ directory, which git ignores apart from its README).

    python tools/certs.py init-ca                        # ca.pem, ca.der (what boards pin), ca.key
    python tools/certs.py server --host 127.0.0.1 --dns localhost
    python tools/certs.py device board-1                 # board-1.crt.der, board-1.key.der, ...
    python tools/certs.py inspect certs/server.pem --json
    python tools/certs.py pin test.mosquitto.org:8883    # certs/pinned-test.mosquitto.org.der

Exit status: 0 done; 1 the peer could not be reached or spoke no usable TLS; 2 a mistake in
the command or its input (bad argument, unreadable file, invalid device id, CA already there);
3 `pin` could not find the root the server's chain ends in.

Host code and tests import the same functions the commands use:

    from tools import certs
    ca = certs.make_ca(tmp_path)
    srv = certs.make_server(tmp_path, hosts=["127.0.0.1"], dns=["localhost"])
    dev = certs.make_device(tmp_path, "board-1", rsa=True)
    ssl_ctx.load_cert_chain(srv.chain_pem, srv.key_pem)
"""

import argparse
import dataclasses
import datetime
import ipaddress
import json
import math
import os
import re
import select
import socket
import sys
import time
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "certs"
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ORGANIZATION = "SecureNode"

EXIT_OK = 0
EXIT_PEER = 1        # could not connect / handshake
EXIT_USAGE = 2       # the user's mistake: arguments, files, names
EXIT_NO_ROOT = 3     # pin: the chain's root is not in the trust store

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_LABEL_CHAR_RE = re.compile(r"[A-Za-z0-9-]\Z")
MAX_INPUT_BYTES = 8 << 20    # any file we read: a system CA bundle is ~220 KB
MAX_DAYS = 36500             # 100 years; more overflows the date types
MAX_TIMEOUT_S = 3600
_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)
_RSA_BITS = 2048
# Certificates start an hour in the past so a host or board clock a little behind still
# accepts them the moment they are made.
_BACKDATE = datetime.timedelta(hours=1)
_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


class CertError(Exception):
    """A problem the user can fix; the message names the file, field or peer.

    `exit_status` is what the CLI exits with (EXIT_USAGE unless said otherwise).
    """

    def __init__(self, message, exit_status=EXIT_USAGE):
        super().__init__(message)
        self.exit_status = exit_status


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate just made, its private key, and the files written for it.

    Paths that a kind of certificate does not have are None (only servers get `chain_pem`,
    only devices get `key_der`).

        srv = make_server(tmp_path)
        srv.cert.subject, srv.sha256            # the x509.Certificate and its fingerprint
        srv.cert_pem, srv.cert_der, srv.key_pem, srv.chain_pem
    """

    name: str
    cert: x509.Certificate
    key: object
    cert_pem: Path
    cert_der: Path
    key_pem: Path
    key_der: Path = None
    chain_pem: Path = None

    @property
    def sha256(self):
        """Lowercase hex SHA-256 of the certificate's DER (the form boards report)."""
        return fingerprint(self.cert)


# ---------------------------------------------------------------------------------------
# Pure helpers: names, keys, validity, descriptions

def check_name(value, what="device id"):
    """Return `value` if it is 1..64 characters of A-Z a-z 0-9 _ -, else raise CertError.

    Device ids become certificate CNs, MQTT topics and file names, so they are held to the
    same rule as the firmware's config.json.

        check_name("board-1")        # -> "board-1"
        check_name("board 1")        # CertError: device id 'board 1': ' ' at position 6 ...
    """
    if not isinstance(value, str) or not value:
        raise CertError("%s is empty: use 1..64 characters of A-Z a-z 0-9 _ -" % what)
    if len(value) > 64:
        raise CertError("%s %r is %d characters long: at most 64 are allowed"
                        % (what, value[:20] + "...", len(value)))
    if not _NAME_RE.match(value):
        bad = next(i for i, ch in enumerate(value) if not _NAME_RE.match(ch))
        raise CertError("%s %r: %r at position %d is not allowed (use A-Z a-z 0-9 _ -)"
                        % (what, value, value[bad], bad + 1))
    return value


def check_dns_name(value):
    """Return `value` if it is a host name for a SAN (RFC 1123), else raise CertError.

    Labels of 1..63 letters, digits and hyphens (not at either end), dot-separated, 253
    characters at most; a leading "*." wildcard is allowed. A name that no resolver would
    ever look up must not be written into a certificate.

        check_dns_name("base.local")     # -> "base.local"
        check_dns_name("my host")        # CertError: --dns 'my host': ' ' at position 3 ...
    """
    if not value:
        raise CertError("--dns is empty: give a host name such as base.local")
    if len(value) > 253:
        raise CertError("--dns %r is %d characters long: a host name has at most 253"
                        % (value[:20] + "...", len(value)))
    body = value[2:] if value.startswith("*.") else value
    offset = len(value) - len(body)
    for index, label in enumerate(body.split(".")):
        start = offset + sum(len(part) + 1 for part in body.split(".")[:index])
        bad = next((i for i, ch in enumerate(label) if not _LABEL_CHAR_RE.match(ch)), None)
        if bad is not None:
            raise CertError("--dns %r: %r at position %d is not allowed in a host name (use "
                            "A-Z a-z 0-9 - and dots)" % (value, label[bad], start + bad + 1))
        if not label:
            raise CertError("--dns %r has an empty label (two dots, or a dot at an end)"
                            % value)
        if len(label) > 63:
            raise CertError("--dns %r: label %r is %d characters long: at most 63 are allowed"
                            % (value[:20] + "...", label[:10] + "...", len(label)))
        if label[0] == "-" or label[-1] == "-":
            raise CertError("--dns %r: label %r may not start or end with '-'" % (value, label))
    return value


def fingerprint(cert):
    """Lowercase hex SHA-256 of a certificate's DER, without colons."""
    return cert.fingerprint(hashes.SHA256()).hex()


def key_type(public_key):
    """'EC P-256', 'RSA 2048', 'Ed25519', ... for a public or private key."""
    if isinstance(public_key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return "EC " + curve.get(public_key.curve.name, public_key.curve.name)
    if isinstance(public_key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return "RSA %d" % public_key.key_size
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "Ed25519"
    if isinstance(public_key, (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)):
        return "Ed448"
    return type(public_key).__name__


def _new_key(use_rsa):
    if use_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def _utc(value):
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=datetime.timezone.utc)


def parse_time(text, option="--not-before"):
    """Parse an ISO 8601 date or date-time ('2020-01-01', '2020-01-01T12:00:00Z'); UTC if
    no zone is given."""
    try:
        return _utc(datetime.datetime.fromisoformat(text))
    except ValueError:
        raise CertError("%s %r is not an ISO 8601 date such as 2030-01-31 or "
                        "2030-01-31T12:00:00Z" % (option, text)) from None


def validity(days=None, not_before=None, not_after=None):
    """The (not_before, not_after) window, both aware UTC datetimes.

    not_before defaults to an hour ago, or to `days` before `not_after` when only that is
    given (so `not_after` in the past alone makes an expired certificate); not_after
    defaults to not_before + `days`.
    """
    not_before, not_after = _utc(not_before), _utc(not_after)
    span = datetime.timedelta(days=days if days is not None else 825)
    if days is not None and days < 1:
        raise CertError("--days %d: a certificate must be valid for at least one day" % days)
    if not_before is None:
        if not_after is None:
            now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            not_before = now - _BACKDATE
        else:
            not_before = not_after - span
    if not_after is None:
        not_after = not_before + span
    if not_after <= not_before:
        raise CertError("--not-after %s is not later than --not-before %s"
                        % (not_after.isoformat(), not_before.isoformat()))
    return not_before, not_after


def _ext(cert, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def is_self_signed(cert):
    """True if the certificate names itself as issuer and its own key verifies it."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def describe(cert, now=None):
    """A dict of what matters about a certificate (what `inspect --json` prints).

        d = describe(srv.cert)
        d["status"], d["days_left"], d["sha256"], d["sans"], d["ekus"], d["is_ca"]
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        status = "not_yet_valid"
    elif now > not_after:
        status = "expired"
    else:
        status = "valid"
    constraints = _ext(cert, x509.BasicConstraints)
    san = _ext(cert, x509.SubjectAlternativeName)
    sans = []
    if san is not None:
        sans += ["DNS:%s" % name for name in san.get_values_for_type(x509.DNSName)]
        sans += ["IP:%s" % ip for ip in san.get_values_for_type(x509.IPAddress)]
        sans += ["URI:%s" % uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]
    eku = _ext(cert, x509.ExtendedKeyUsage)
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "subject": cert.subject.rfc4514_string(),
        "subject_cn": cns[0].value if cns else None,
        "issuer": cert.issuer.rfc4514_string(),
        "serial": "%x" % cert.serial_number,
        "not_before": not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": status,
        "days_left": (not_after - now).days,
        "sha256": fingerprint(cert),
        "is_ca": bool(constraints and constraints.ca),
        "path_length": constraints.path_length if constraints and constraints.ca else None,
        "self_signed": is_self_signed(cert),
        "key_type": key_type(cert.public_key()),
        "sans": sans,
        "ekus": [_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku] if eku else [],
        "ski": ski.digest.hex() if ski else None,
        "aki": aki.key_identifier.hex() if aki and aki.key_identifier else None,
    }


def _status_words(d):
    if d["status"] == "expired":
        return "EXPIRED %d days ago" % -d["days_left"]
    if d["status"] == "not_yet_valid":
        return "NOT YET VALID (starts %s)" % d["not_before"]
    return "valid, %d days left" % d["days_left"]


def _short_name(name):
    """'CN=R11, O=Let's Encrypt' style: the parts people recognise a CA by."""
    parts = [attr.value for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)
             for attr in name.get_attributes_for_oid(oid)]
    return ", ".join(parts) if parts else name.rfc4514_string() or "(empty name)"


# ---------------------------------------------------------------------------------------
# Files

def _display(path):
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _write(path, data, private=False):
    """Write bytes; a private key file is created 0600 from the start, never widened."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if private:
            # O_EXCL on a fresh name: the key's bytes never sit in a file others could read,
            # even when an older key with looser permissions was there before.
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        else:
            scratch = path.with_name(path.name + ".tmp")
            scratch.write_bytes(data)
            os.replace(scratch, path)
    except OSError as exc:
        raise CertError("cannot write %s: %s" % (_display(path), exc.strerror or exc)) from None


def _read(path, what="file"):
    try:
        with open(path, "rb") as f:
            # Bounded: a certificate bundle is a few hundred KB; /dev/zero never ends.
            data = f.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            raise CertError("%s %s is larger than %d MiB: not a certificate or key file"
                            % (what, _display(path), MAX_INPUT_BYTES >> 20))
        return data
    except FileNotFoundError:
        raise CertError("%s %s does not exist" % (what, _display(path))) from None
    except OSError as exc:
        raise CertError("cannot read %s: %s" % (_display(path), exc.strerror or exc)) from None


def load_certs(path):
    """Every certificate in a file: PEM (one or many blocks, e.g. a CA bundle) or DER.

        roots = load_certs("/etc/ssl/certs/ca-certificates.crt")
    Blocks that do not parse are skipped in a bundle; a file with none raises CertError.
    """
    data = _read(path)
    certs = []
    if b"-----BEGIN" in data:
        with warnings.catch_warnings():
            # System stores still carry a few old roots with non-positive serial numbers;
            # cryptography warns about each on every load, which says nothing to the user.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            for block in _PEM_CERT_RE.findall(data):
                try:
                    certs.append(x509.load_pem_x509_certificate(block))
                except ValueError:
                    continue
        if not certs:
            what = "a private key" if b"PRIVATE KEY-----" in data else "no certificate"
            raise CertError("%s holds %s; expected a PEM or DER certificate"
                            % (_display(path), what))
        return certs
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertError("%s is neither a PEM nor a DER certificate" % _display(path)) from None


def _load_issuer(directory, stem):
    """The CA certificate and key stored as <stem>.pem / <stem>.key in `directory`."""
    directory = Path(directory)
    cert_path, key_path = directory / (stem + ".pem"), directory / (stem + ".key")
    if not cert_path.exists():
        hint = "run `certs.py init-ca`" if stem == "ca" else "run `certs.py intermediate %s`" % stem
        raise CertError("issuer %r not found: %s does not exist (%s first)"
                        % (stem, _display(cert_path), hint))
    cert = load_certs(cert_path)[0]
    try:
        key = serialization.load_pem_private_key(_read(key_path, "issuer key"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CertError("%s is not an unencrypted PEM private key" % _display(key_path)) from None
    constraints = _ext(cert, x509.BasicConstraints)
    if not (constraints and constraints.ca):
        raise CertError("issuer %s is not a CA certificate (basicConstraints CA:false)"
                        % _display(cert_path))
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertError("%s does not belong to %s (the keys differ)"
                        % (_display(key_path), _display(cert_path)))
    return cert, key


def _key_pem(key):
    # "Traditional" encodings: SEC1 for EC, PKCS#1 for RSA; what mbedTLS, axTLS and
    # OpenSSL all read.
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _key_der(key):
    return key.private_bytes(serialization.Encoding.DER,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


# ---------------------------------------------------------------------------------------
# Issuing

def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)])


def _build(subject, key, issuer_cert, issuer_key, window, extensions):
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(window[0])
               .not_valid_after(window[1]))
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),
            critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _ca_key_usage():
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                         decipher_only=False)


def _leaf_key_usage(key):
    # RSA key exchange (the only kind axTLS on the ESP8266 offers) encrypts the premaster
    # secret to the certificate's key, which needs keyEncipherment.
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                         crl_sign=False, encipher_only=False, decipher_only=False)


def _refuse_existing_ca(paths, force):
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise CertError("%s already exists; refusing to replace a CA (everything it signed "
                        "would stop verifying). Pass --force to replace it"
                        % _display(existing[0]))


def make_ca(directory, name="SecureNode Dev Root CA", days=3650, rsa=False, force=False,
            stem="ca", not_before=None, not_after=None):
    """Create a self-signed root CA: <stem>.pem, <stem>.der (what boards pin), <stem>.key.

    basicConstraints CA:true (critical), keyUsage keyCertSign+cRLSign, subjectKeyIdentifier.
    An existing CA is kept unless force=True. A second, unrelated CA (a rogue one) is just
    another stem or directory:

        ca = make_ca(tmp_path)
        rogue = make_ca(tmp_path, name="Rogue CA", stem="rogue")
        make_server(tmp_path, name="evil", issuer="rogue")
    """
    directory = Path(directory)
    stem = check_name(stem, "CA file name")
    paths = [directory / (stem + ext) for ext in (".pem", ".der", ".key")]
    _refuse_existing_ca(paths, force)
    key = _new_key(rsa)
    window = validity(days, not_before, not_after)
    cert = _build(_name(name), key, None, None, window,
                  [(x509.BasicConstraints(ca=True, path_length=None), True),
                   (_ca_key_usage(), True)])
    _write(paths[2], _key_pem(key), private=True)
    _write(paths[0], _pem(cert))
    _write(paths[1], _der(cert))
    return Issued(stem, cert, key, cert_pem=paths[0], cert_der=paths[1], key_pem=paths[2])


def make_intermediate(directory, name, days=1825, rsa=False, issuer="ca", force=False,
                      not_before=None, not_after=None):
    """Create an intermediate CA signed by the root <issuer>: <name>.pem/.der/.key.

    pathlen 0: it signs leaves only, so chains are at most root -> intermediate -> leaf.

        make_ca(tmp_path)
        make_intermediate(tmp_path, "issuing")
        srv = make_server(tmp_path, issuer="issuing")   # srv.chain_pem = leaf + issuing
    """
    directory = Path(directory)
    name = check_name(name, "intermediate name")
    issuer_cert, issuer_key = _load_issuer(directory, issuer)
    if not is_self_signed(issuer_cert):
        raise CertError("issuer %r is itself an intermediate; intermediates are signed by a "
                        "root (pathlen 0 keeps chains at three levels)" % issuer)
    paths = [directory / (name + ext) for ext in (".pem", ".der", ".key")]
    _refuse_existing_ca(paths, force)
    key = _new_key(rsa)
    cert = _build(_name(name), key, issuer_cert, issuer_key,
                  validity(days, not_before, not_after),
                  [(x509.BasicConstraints(ca=True, path_length=0), True),
                   (_ca_key_usage(), True)])
    _write(paths[2], _key_pem(key), private=True)
    _write(paths[0], _pem(cert))
    _write(paths[1], _der(cert))
    return Issued(name, cert, key, cert_pem=paths[0], cert_der=paths[1], key_pem=paths[2])


def _sans(hosts, dns):
    general = []
    for host in hosts:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            raise CertError("--host %r is not an IP address (put names in --dns)"
                            % host) from None
    for name in dns:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            general.append(x509.DNSName(check_dns_name(name)))
            continue
        raise CertError("--dns %r is an IP address (put addresses in --host)" % name)
    if not general:
        raise CertError("a server certificate needs at least one --host or --dns name")
    return general


def _chain_tail(issuer_cert):
    """What a server sends after its leaf: the intermediate, if the issuer is not the root."""
    return [] if is_self_signed(issuer_cert) else [issuer_cert]


def make_server(directory, hosts=None, dns=None, name="server", days=825, rsa=False,
                issuer="ca", not_before=None, not_after=None):
    """Create a TLS server certificate: <name>.pem, .der, .key (0600), <name>-chain.pem.

    SAN holds `hosts` (IP addresses) and `dns` (names); with neither given, 127.0.0.1 and
    localhost. serverAuth EKU, AKI/SKI. `issuer` is the stem of the signing CA in
    `directory` (a root or an intermediate). <name>-chain.pem is leaf + intermediate: what
    the server presents. Validity windows make test material:

        make_server(d, name="expired", not_after=datetime.datetime(2020, 1, 1))
        make_server(d, name="future", not_before=now + datetime.timedelta(days=30))
        make_server(d, name="wrong-host", dns=["wrong.example"])
        make_server(d, name="rsa", rsa=True)           # for axTLS (ESP8266) clients
    """
    directory = Path(directory)
    name = check_name(name, "server name")
    if hosts is None and dns is None:
        hosts, dns = ["127.0.0.1"], ["localhost"]
    hosts, dns = list(hosts or []), list(dns or [])
    general = _sans(hosts, dns)
    issuer_cert, issuer_key = _load_issuer(directory, issuer)
    key = _new_key(rsa)
    # The CN (at most 64 characters, RFC 5280 ub-common-name) is informative only: clients
    # match the SAN. A longer host name leaves the CN to the file stem.
    common_name = next((n for n in dns + hosts if len(n) <= 64), name)
    cert = _build(_name(common_name), key, issuer_cert, issuer_key,
                  validity(days, not_before, not_after),
                  [(x509.BasicConstraints(ca=False, path_length=None), True),
                   (_leaf_key_usage(key), True),
                   (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
                   (x509.SubjectAlternativeName(general), False)])
    paths = {ext: directory / (name + ext) for ext in (".pem", ".der", ".key", "-chain.pem")}
    _write(paths[".key"], _key_pem(key), private=True)
    _write(paths[".pem"], _pem(cert))
    _write(paths[".der"], _der(cert))
    _write(paths["-chain.pem"],
           b"".join(_pem(c) for c in [cert] + _chain_tail(issuer_cert)))
    return Issued(name, cert, key, cert_pem=paths[".pem"], cert_der=paths[".der"],
                  key_pem=paths[".key"], chain_pem=paths["-chain.pem"])


def make_device(directory, device_id, rsa=False, days=825, issuer="ca",
                not_before=None, not_after=None):
    """Create a board's client certificate, CN = device id, clientAuth EKU.

    ECDSA P-256 by default; rsa=True makes RSA 2048 for RSA-only TLS stacks (ESP8266 axTLS).
    Writes <id>.crt.pem, <id>.crt.der, <id>.key.der (SEC1 for EC, PKCS#1 for RSA: what
    MicroPython's mbedTLS and axTLS load) and <id>.key.pem; keys 0600.

        dev = make_device(tmp_path, "board-1")
        dev.cert_der, dev.key_der     # copy to the board as device.crt.der / device.key.der
    """
    directory = Path(directory)
    device_id = check_name(device_id, "device id")
    issuer_cert, issuer_key = _load_issuer(directory, issuer)
    key = _new_key(rsa)
    cert = _build(_name(device_id), key, issuer_cert, issuer_key,
                  validity(days, not_before, not_after),
                  [(x509.BasicConstraints(ca=False, path_length=None), True),
                   (_leaf_key_usage(key), True),
                   (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    paths = {ext: directory / (device_id + ext)
             for ext in (".crt.pem", ".crt.der", ".key.der", ".key.pem")}
    _write(paths[".key.der"], _key_der(key), private=True)
    _write(paths[".key.pem"], _key_pem(key), private=True)
    _write(paths[".crt.pem"], _pem(cert))
    _write(paths[".crt.der"], _der(cert))
    return Issued(device_id, cert, key, cert_pem=paths[".crt.pem"], cert_der=paths[".crt.der"],
                  key_pem=paths[".key.pem"], key_der=paths[".key.der"])


# ---------------------------------------------------------------------------------------
# Pinning: fetch the chain a server presents and walk it to its root

def parse_hostport(text):
    """'host:port' or '[v6]:port' -> (host, port); CertError names what is wrong."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text or "")
    if not match:
        raise CertError("%r is not HOST:PORT (e.g. test.mosquitto.org:8883 or [::1]:8883)"
                        % text)
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise CertError("port %d in %r is out of range 1..65535" % (port, text))
    return host, port


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def fetch_chain(host, port, servername=None, timeout=10.0):
    """Connect, send SNI, and return the certificates the server presents, leaf first.

    Nothing is verified here (the caller decides what to trust). `servername` defaults to
    `host` unless that is an IP address (SNI carries names only).

        presented = fetch_chain("test.mosquitto.org", 8883)
    Raises CertError (exit_status EXIT_PEER) when the peer cannot be reached or the TLS
    handshake fails before the server's certificates arrive.
    """
    from OpenSSL import SSL    # only `pin` needs pyOpenSSL

    peer = "%s:%d" % (host, port)
    if servername is None and not _is_ip(host):
        servername = host
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise CertError("%s: cannot resolve %r: %s" % (peer, host, exc.strerror), EXIT_PEER) \
            from None
    except (socket.timeout, TimeoutError):
        raise CertError("%s: no answer within %gs" % (peer, timeout), EXIT_PEER) from None
    except OSError as exc:
        raise CertError("%s: cannot connect: %s" % (peer, exc.strerror or exc), EXIT_PEER) \
            from None
    # No verification in the handshake: we only want to see what the server sends.
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    conn = SSL.Connection(context, sock)
    if servername:
        conn.set_tlsext_host_name(servername.encode("idna"))
    conn.set_connect_state()
    failure = None
    try:
        while True:
            try:
                conn.do_handshake()
                break
            except (SSL.WantReadError, SSL.WantWriteError) as want:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CertError("%s: TLS handshake not finished within %gs"
                                    % (peer, timeout), EXIT_PEER) from None
                reading = isinstance(want, SSL.WantReadError)
                select.select([sock] if reading else [], [] if reading else [sock], [], left)
            except SSL.Error as exc:
                # A server demanding a client certificate (TLS 1.2) rejects us after it has
                # sent its own chain, which is all we need.
                failure = _ssl_reason(exc)
                break
            except OSError as exc:
                failure = exc.strerror or str(exc) or "connection closed"
                break
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
    finally:
        sock.close()
    if not chain:
        raise CertError("%s: TLS handshake failed before the server sent a certificate: %s"
                        % (peer, failure or "no certificate"), EXIT_PEER)
    return list(chain)


def _ssl_reason(exc):
    try:
        return "; ".join(str(item[2]) for item in exc.args[0]) or "TLS error"
    except (IndexError, TypeError):
        return str(exc) or "TLS error"


def _spki(cert):
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert, candidate):
    """True if `candidate` issued `cert`: issuer name, key identifiers and signature agree."""
    if cert.issuer != candidate.subject:
        return False
    aki, ski = _ext(cert, x509.AuthorityKeyIdentifier), _ext(candidate, x509.SubjectKeyIdentifier)
    if aki is not None and aki.key_identifier and ski is not None \
            and aki.key_identifier != ski.digest:
        return False
    try:
        cert.verify_directly_issued_by(candidate)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _find_issuer(cert, candidates):
    now = datetime.datetime.now(datetime.timezone.utc)
    found = [c for c in candidates if c is not cert and _signed_by(cert, c)]
    # Of several (a re-issued root with the same key), prefer one valid now, then the
    # longest-lived.
    found.sort(key=lambda c: (c.not_valid_before_utc <= now <= c.not_valid_after_utc,
                              c.not_valid_after_utc), reverse=True)
    return found[0] if found else None


@dataclasses.dataclass
class Link:
    """One certificate of a walked chain: its role and where it came from."""
    role: str            # "leaf", "intermediate" or "root"
    cert: x509.Certificate
    source: str          # "presented" or the trust store file it was found in
    note: str = ""


def walk_chain(presented, trusted, store_name="trust store"):
    """Order the presented certificates from the leaf up and find the root.

    Each certificate's issuer is looked for first among the presented ones, then in
    `trusted` (a list of certificates), matched by issuer name and AKI/SKI and its signature
    verified. A presented certificate whose subject and key match a self-signed trusted root
    (a cross-signed copy of it) ends the walk at that root. Returns (links, missing): links
    leaf first, the last being the root if found; `missing` is None or the certificate whose
    issuer could not be found.

        links, missing = walk_chain(fetch_chain(host, port), load_certs(bundle))
    """
    links = [Link("leaf", presented[0], "presented")]
    pool = list(presented[1:])
    trusted_roots = [c for c in trusted if c.subject == c.issuer and is_self_signed(c)]
    current = presented[0]
    for _ in range(len(presented) + 8):      # a chain longer than this loops
        if is_self_signed(current):
            links[-1].role = "root"
            if len(links) == 1:
                links[-1].note = "self-signed leaf"
            return links, None
        twin = next((r for r in trusted_roots if r is not current and r.subject ==
                     current.subject and _spki(r) == _spki(current)), None)
        if twin is not None and len(links) > 1:
            links[-1] = Link("root", twin, store_name,
                             "replaces the presented cross-signed copy issued by %s"
                             % _short_name(current.issuer))
            return links, None
        issuer = _find_issuer(current, pool)
        source = "presented"
        if issuer is None:
            issuer = _find_issuer(current, trusted)
            source = store_name
        if issuer is None:
            return links, current
        if issuer in pool:
            pool.remove(issuer)
        links.append(Link("intermediate", issuer, source))
        current = issuer
    raise CertError("the presented chain does not end (a loop of issuers?)", EXIT_NO_ROOT)


# ---------------------------------------------------------------------------------------
# Commands: one function each, taking the parsed arguments; they print and return a status

def _report_written(issued, paths):
    d = describe(issued.cert)
    print("%s  %s  (%s, %s, until %s)" % (issued.name, d["subject"], d["key_type"],
                                          "CA" if d["is_ca"] else "leaf", d["not_after"]))
    for path in paths:
        if path is not None:
            print("  wrote %s" % _display(path))


def cmd_init_ca(args):
    ca = make_ca(args.dir, name=args.name, days=args.days, rsa=args.rsa, force=args.force)
    _report_written(ca, [ca.cert_pem, ca.cert_der, ca.key_pem])
    print("  boards pin %s (config.json \"tls\": {\"ca\": [\"ca.der\"]})" % ca.cert_der.name)
    return EXIT_OK


def cmd_intermediate(args):
    issued = make_intermediate(args.dir, args.name, days=args.days, rsa=args.rsa,
                               force=args.force)
    _report_written(issued, [issued.cert_pem, issued.cert_der, issued.key_pem])
    return EXIT_OK


def cmd_server(args):
    issued = make_server(args.dir, hosts=args.host, dns=args.dns, name=args.name,
                         days=args.days, rsa=args.rsa, issuer=args.issuer,
                         not_before=args.not_before and parse_time(args.not_before),
                         not_after=args.not_after and parse_time(args.not_after, "--not-after"))
    _report_written(issued, [issued.cert_pem, issued.cert_der, issued.key_pem,
                             issued.chain_pem])
    print("  SAN %s" % ", ".join(describe(issued.cert)["sans"]))
    return EXIT_OK


def cmd_device(args):
    issued = make_device(args.dir, args.device_id, rsa=args.rsa, days=args.days,
                         issuer=args.issuer)
    _report_written(issued, [issued.cert_pem, issued.cert_der, issued.key_der,
                             issued.key_pem])
    return EXIT_OK


def cmd_inspect(args):
    certs = load_certs(args.file)
    for index, cert in enumerate(certs):
        d = describe(cert)
        if args.json:
            print(json.dumps(dict(file=str(args.file), index=index, **d)))
            continue
        if index:
            print()
        print("%s%s" % (_display(args.file), "  [%d of %d]" % (index + 1, len(certs))
                        if len(certs) > 1 else ""))
        ca = "no"
        if d["is_ca"]:
            ca = "yes, " + ("no path length limit" if d["path_length"] is None
                            else "pathlen %d" % d["path_length"])
        rows = [("subject", d["subject"]), ("issuer", d["issuer"]
                + ("  (self-signed)" if d["self_signed"] else "")),
                ("not before", d["not_before"]),
                ("not after", "%s  (%s)" % (d["not_after"], _status_words(d))),
                ("sha256", d["sha256"]), ("CA", ca), ("key", d["key_type"]),
                ("SAN", ", ".join(d["sans"]) or "-"), ("EKU", ", ".join(d["ekus"]) or "-"),
                ("serial", d["serial"])]
        for label, value in rows:
            print("  %-11s %s" % (label, value))
    return EXIT_OK


def _trust_store(args):
    """[(certificates, name)] for --bundle and the system store, in that order."""
    stores = []
    for bundle in args.bundle or []:
        stores.append((load_certs(bundle), _display(bundle)))
    if not args.no_system:
        if SYSTEM_BUNDLE.exists():
            stores.append((load_certs(SYSTEM_BUNDLE), str(SYSTEM_BUNDLE)))
        elif not args.bundle:
            raise CertError("no trust store: %s does not exist; pass --bundle FILE"
                            % SYSTEM_BUNDLE)
    return stores


def _walk_stores(presented, stores):
    """Walk against all stores at once; name the file each store certificate came from."""
    everything = [c for certs, _ in stores for c in certs]
    links, missing = walk_chain(presented, everything)
    for link in links:
        if link.source == "trust store":
            link.source = next(name for certs, name in stores if link.cert in certs)
    return links, missing


def _print_link(link):
    d = describe(link.cert)
    where = "presented by the server" if link.source == "presented" else "from " + link.source
    print("  %-12s %s" % (link.role, d["subject"]))
    print("  %-12s issuer %s" % ("", d["issuer"]))
    print("  %-12s %s, %s, expires %s (%s)" % ("", where, d["key_type"], d["not_after"],
                                              _status_words(d)))
    print("  %-12s sha256 %s" % ("", d["sha256"]))
    if link.note:
        print("  %-12s note: %s" % ("", link.note))


_PICK_WARNING = """\
WARNING: pinning the %s, not the root. A leaf certificate changes on every renewal (a
Let's Encrypt leaf every 90 days at most, often with a new key) and intermediates are rotated
too (Let's Encrypt issues from several, picked at random, and replaces them): the board will
refuse the server the day it changes, and only new flash contents fix that. A root lasts
decades. Pin the root unless you control the server and its renewals."""


def cmd_pin(args):
    host, port = parse_hostport(args.hostport)
    out = Path(args.out) if args.out else Path(args.dir) / ("pinned-%s.der"
                                                           % re.sub(r"[^\w.-]", "_", host))
    stores = _trust_store(args)
    presented = fetch_chain(host, port, servername=args.servername, timeout=args.timeout)
    sni = args.servername or (None if _is_ip(host) else host)
    print("%s:%d (SNI %s) presented %d certificate%s"
          % (host, port, sni or "none", len(presented), "" if len(presented) == 1 else "s"))
    links, missing = _walk_stores(presented, stores)
    for link in links:
        _print_link(link)
    root = links[-1] if links[-1].role == "root" else None
    if args.pick == "root":
        if root is None:
            print("certs pin: error: root not found: the top certificate %r was issued by "
                  "%r, which is in none of: %s. Nothing written; pass --bundle FILE holding "
                  "that CA" % (missing.subject.rfc4514_string(), missing.issuer.rfc4514_string(),
                               ", ".join(name for _, name in stores) or "(no trust store)"),
                  file=sys.stderr)
            return EXIT_NO_ROOT
        chosen = root
        if root.source == "presented":
            trusted = any(_der(root.cert) == _der(c) for certs, _ in stores for c in certs)
            found = ("the server presented this root itself (self-signed); it is %s. Check "
                     "its sha256 against one obtained another way before trusting it"
                     % ("also in the trust store" if trusted else
                        "NOT in the trust store, so nothing vouches for it but the server"))
        else:
            found = ("servers do not send their root, so it was taken from %s, matched by "
                     "issuer name and key identifier, signature verified" % root.source)
        print("pinned: root %r" % _short_name(root.cert.subject))
        print("  why:   the root is the trust anchor the chain ends in; it outlives the leaves "
              "and intermediates rotated under it (this one is valid until %s)"
              % describe(root.cert)["not_after"][:10])
        print("  found: %s" % found)
    else:
        if args.pick == "leaf":
            chosen = links[0]
        else:
            intermediates = [link for link in links if link.role == "intermediate"]
            if not intermediates:
                raise CertError("--pick intermediate: %s:%d presents no intermediate (the "
                                "leaf is issued by the root directly)" % (host, port))
            chosen = intermediates[-1]     # the one nearest the root rotates least
        print(_PICK_WARNING % args.pick, file=sys.stderr)
        print("pinned: %s %r (--pick %s)" % (args.pick, _short_name(chosen.cert.subject),
                                             args.pick))
    _write(out, _der(chosen.cert))
    print("wrote %s (%d bytes, sha256 %s); list it in config.json \"tls\": {\"ca\": [\"%s\"]}"
          % (_display(out), len(_der(chosen.cert)), fingerprint(chosen.cert), out.name))
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# Command line

COMMANDS = {
    "init-ca": cmd_init_ca,
    "intermediate": cmd_intermediate,
    "server": cmd_server,
    "device": cmd_device,
    "inspect": cmd_inspect,
    "pin": cmd_pin,
}

_HELP = {
    "init-ca": ("create the self-signed root CA (ca.pem, ca.der, ca.key)", """\
Create the root CA every board pins. Writes ca.pem (certificate), ca.der (the same
certificate in DER: copy it to the board and list it in config.json "tls": {"ca": ["ca.der"]})
and ca.key (0600; never leaves this machine, never committed). An existing CA is kept: every
server and device certificate it signed would stop verifying if it were replaced.

  certs.py init-ca
  certs.py init-ca --rsa --name "Lab Root CA" --force"""),
    "intermediate": ("create an intermediate CA under the root (3-level chains)", """\
Create an intermediate CA signed by the root (pathlen 0: it signs leaves only). Writes
NAME.pem, NAME.der and NAME.key. Issue a server from it with `server --issuer NAME`; the
server's NAME-chain.pem then holds leaf + intermediate, as public servers present.

  certs.py intermediate issuing && certs.py server --issuer issuing --name srv3"""),
    "server": ("create a TLS server certificate (SAN, serverAuth)", """\
Create a server certificate signed by the root (or --issuer, an intermediate). SAN holds
every --host (IP address) and --dns (name); with neither, 127.0.0.1 and localhost. Writes
NAME.pem, NAME.der, NAME.key (0600) and NAME-chain.pem (what the server presents: give it to
mosquitto as certfile). ESP8266 boards (axTLS) only do RSA key exchange: serve them an --rsa
certificate. --not-before/--not-after (ISO 8601, UTC unless a zone is given) make expired or
not-yet-valid test material.

  certs.py server --host 127.0.0.1 --dns localhost
  certs.py server --name expired --not-after 2021-01-01"""),
    "device": ("create a board's client certificate (CN = device id)", """\
Create a device (client) certificate, CN = DEVICE_ID (1..64 of A-Z a-z 0-9 _ -), clientAuth.
ECDSA P-256 by default; --rsa for RSA-only TLS stacks (ESP8266 axTLS). Writes
DEVICE_ID.crt.pem, DEVICE_ID.crt.der, DEVICE_ID.key.der (SEC1 EC or PKCS#1 RSA DER, what
MicroPython loads) and DEVICE_ID.key.pem; keys 0600. Copy the .der pair to the board as
device.crt.der / device.key.der.

  certs.py device board-1
  certs.py device esp8266-7 --rsa"""),
    "inspect": ("show what a certificate says (text or --json)", """\
Show subject, issuer, validity (and whether it is expired or not yet valid), SHA-256
fingerprint (lowercase hex, no colons: the form boards report), CA flag and path length, key
type, SANs and EKUs. Reads PEM (every certificate in the file) or DER. --json prints one JSON
object per certificate, one per line.

  certs.py inspect certs/ca.der
  certs.py inspect certs/server-chain.pem --json"""),
    "pin": ("fetch a server's chain and save its root CA as DER for a board", """\
Connect to HOST:PORT (sending SNI), take the chain the server presents and walk it up to the
root: the server normally sends leaf + intermediates, so the root is looked up in --bundle
and/or the system store (%s), matched by issuer name and key identifier, with the signature
verified. Prints each certificate's role, expiry and sha256, then writes the root as DER
(default DIR/pinned-HOST.der). If the root is not in the trust store it says which issuer is
missing, writes nothing and exits 3.

Pin the root: it lasts decades, while leaves are renewed every few months and intermediates
rotate. --pick leaf|intermediate pins those instead, with a warning.

A service that may move between roots (say ISRG Root X1 and X2) is pinned to both:

  certs.py pin broker.example:8883 --out certs/isrg-x1.der
  certs.py pin broker-ecdsa.example:8883 --out certs/isrg-x2.der
  config.json: "tls": {"ca": ["isrg-x1.der", "isrg-x2.der"]}""" % SYSTEM_BUNDLE),
}


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number of days" % text) from None
    if not 1 <= value <= MAX_DAYS:
        raise argparse.ArgumentTypeError("%d: must be 1..%d" % (value, MAX_DAYS))
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text) from None
    # nan passes "<= 0" and inf overflows the socket's timeout: both refused here.
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S:
        raise argparse.ArgumentTypeError("%s: must be more than 0 and at most %d seconds"
                                         % (text, MAX_TIMEOUT_S))
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="certs.py", description=__doc__.split("\n\n")[0],
        epilog="Run `certs.py COMMAND --help` for each command. Exit status: 0 done, 1 peer "
               "unreachable or TLS failed, 2 usage or input error, 3 pin: root not found.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="where material is read and written (default: %(default)s)")
    # --dir is also accepted after the command; SUPPRESS keeps the global value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name):
        summary, text = _HELP[name]
        return sub.add_parser(name, parents=[common], help=summary, description=text,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def key_options(p, days):
        p.add_argument("--days", type=_positive_int, default=days,
                       help="validity in days (default %(default)s)")
        p.add_argument("--rsa", action="store_true",
                       help="RSA %d key instead of ECDSA P-256" % _RSA_BITS)

    p = command("init-ca")
    p.add_argument("--name", default="SecureNode Dev Root CA", help="CN (default %(default)r)")
    key_options(p, 3650)
    p.add_argument("--force", action="store_true", help="replace an existing CA")

    p = command("intermediate")
    p.add_argument("name", metavar="NAME", help="file name stem and CN")
    key_options(p, 1825)
    p.add_argument("--force", action="store_true", help="replace an existing intermediate")

    p = command("server")
    p.add_argument("--host", action="append", metavar="IP",
                   help="IP address for the SAN (repeatable)")
    p.add_argument("--dns", action="append", metavar="NAME",
                   help="DNS name for the SAN (repeatable)")
    p.add_argument("--name", default="server", help="file name stem (default %(default)s)")
    key_options(p, 825)
    p.add_argument("--issuer", default="ca", metavar="NAME",
                   help="signing CA's file stem: ca (the root) or an intermediate")
    p.add_argument("--not-before", metavar="ISO", help="start of validity, e.g. 2030-01-01")
    p.add_argument("--not-after", metavar="ISO", help="end of validity, e.g. 2021-01-01")

    p = command("device")
    p.add_argument("device_id", metavar="DEVICE_ID", help="the board's id (certificate CN)")
    key_options(p, 825)
    p.add_argument("--issuer", default="ca", metavar="NAME", help="signing CA's file stem")

    p = command("inspect")
    p.add_argument("file", type=Path, metavar="FILE", help="certificate, PEM or DER")
    p.add_argument("--json", action="store_true", help="one JSON object per certificate")

    p = command("pin")
    p.add_argument("hostport", metavar="HOST:PORT")
    p.add_argument("--servername", metavar="NAME", help="SNI name (default HOST)")
    p.add_argument("--bundle", action="append", type=Path, metavar="FILE",
                   help="PEM file of trusted CAs to find the root in (repeatable)")
    p.add_argument("--no-system", action="store_true",
                   help="do not look in the system store %s" % SYSTEM_BUNDLE)
    p.add_argument("--out", metavar="PATH", help="where to write the DER (default "
                   "DIR/pinned-HOST.der)")
    p.add_argument("--timeout", type=_positive_float, default=10.0, metavar="S",
                   help="connect + handshake timeout in seconds (default %(default)s)")
    p.add_argument("--pick", choices=("root", "intermediate", "leaf"), default="root",
                   help="what to pin (default root; the others come with a warning)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CertError as exc:
        print("certs %s: error: %s" % (args.command, exc), file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("certs %s: interrupted" % args.command, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
