# Just enough of an X.509 DER reader to explain a failed TLS handshake.
#
# mbedTLS on a board reports every verification failure as one code (-9984).
# The firmware then re-handshakes without verification, takes the server's
# leaf with getpeercert(True) and reads it here: validity against the board's
# clock, the names against the host it dialled, the issuer against its pinned
# roots. Everything is read through memoryview slices of the caller's buffer,
# and every length is checked against its enclosing element: a peer's bytes
# must produce a Cert or an X509Error, never an IndexError.
from micropython import const

_SEQUENCE = const(0x30)
_SET = const(0x31)
_INTEGER = const(0x02)
_BOOLEAN = const(0x01)
_OID = const(0x06)
_OCTET_STRING = const(0x04)
_UTC_TIME = const(0x17)
_GENERALIZED_TIME = const(0x18)
_UTF8_STRING = const(0x0C)
_PRINTABLE_STRING = const(0x13)
_T61_STRING = const(0x14)
_IA5_STRING = const(0x16)
_BMP_STRING = const(0x1E)
_CTX0_CONSTRUCTED = const(0xA0)  # [0] EXPLICIT version
_CTX3_CONSTRUCTED = const(0xA3)  # [3] EXPLICIT extensions
_SAN_DNS = const(0x82)  # GeneralName dNSName [2] IMPLICIT IA5String
_SAN_IP = const(0x87)  # GeneralName iPAddress [7] IMPLICIT OCTET STRING

# OID contents (after tag and length): 2.5.4.3, 2.5.29.17, 2.5.29.19.
_OID_CN = b"\x55\x04\x03"
_OID_SAN = b"\x55\x1d\x11"
_OID_BASIC_CONSTRAINTS = b"\x55\x1d\x13"

# Lengths above 2**24 bytes are no certificate a board will ever hold.
_MAX_LENGTH_BYTES = const(3)


class X509Error(Exception):
    """The bytes are not a certificate this reader understands; says where it broke."""


class Cert:
    """What x509_peek.parse() found in a certificate.

    not_before, not_after: unix seconds (int). subject_cn, issuer_cn: str or None.
    subject_dn, issuer_dn: memoryview of the raw DER Name (compare with
    bytes(leaf.issuer_dn) == bytes(root.subject_dn)). dns_names: [str];
    ip_addresses: [bytes] (4 or 16 bytes each); has_san: the certificate has
    a subjectAltName extension; is_ca: basicConstraints cA is true.
    """

    def __init__(self):
        self.not_before = 0
        self.not_after = 0
        self.subject_cn = None
        self.issuer_cn = None
        self.subject_dn = None
        self.issuer_dn = None
        self.dns_names = []
        self.ip_addresses = []
        self.has_san = False
        self.is_ca = False


def parse(der):
    """Read a DER certificate (bytes, bytearray or memoryview); raise X509Error if malformed.

    >>> cert = parse(sock.getpeercert(True))
    >>> cert.subject_cn, cert.dns_names, cert.not_after > board_unix_s
    ('broker', ['broker', 'localhost'], True)
    """
    buf = memoryview(der)
    tag, start, end = _tlv(buf, 0, len(buf), "certificate")
    _expect(tag, _SEQUENCE, "certificate")
    if end != len(buf):
        raise X509Error("certificate: %d bytes after its end" % (len(buf) - end))
    tag, pos, tbs_end = _tlv(buf, start, end, "tbsCertificate")
    _expect(tag, _SEQUENCE, "tbsCertificate")
    # signatureAlgorithm and signatureValue must follow: a cut-off tail is malformed.
    tag, _, sig_end = _tlv(buf, tbs_end, end, "signatureAlgorithm")
    _expect(tag, _SEQUENCE, "signatureAlgorithm")
    _tlv(buf, sig_end, end, "signatureValue")

    cert = Cert()
    tag, vstart, vend = _tlv(buf, pos, tbs_end, "version")
    if tag == _CTX0_CONSTRUCTED:
        pos = vend
        tag, vstart, vend = _tlv(buf, pos, tbs_end, "serialNumber")
    _expect(tag, _INTEGER, "serialNumber")
    pos = vend
    tag, _, pos = _tlv(buf, pos, tbs_end, "signature")
    _expect(tag, _SEQUENCE, "signature")

    issuer_at = pos
    tag, nstart, pos = _tlv(buf, pos, tbs_end, "issuer")
    _expect(tag, _SEQUENCE, "issuer")
    cert.issuer_dn = buf[issuer_at:pos]
    cert.issuer_cn = _common_name(buf, nstart, pos, "issuer")

    tag, vstart, pos = _tlv(buf, pos, tbs_end, "validity")
    _expect(tag, _SEQUENCE, "validity")
    vend = pos
    tag, tstart, tend = _tlv(buf, vstart, vend, "notBefore")
    cert.not_before = _time(buf, tag, tstart, tend, "notBefore")
    tag, tstart, tend = _tlv(buf, tend, vend, "notAfter")
    cert.not_after = _time(buf, tag, tstart, tend, "notAfter")

    subject_at = pos
    tag, nstart, pos = _tlv(buf, pos, tbs_end, "subject")
    _expect(tag, _SEQUENCE, "subject")
    cert.subject_dn = buf[subject_at:pos]
    cert.subject_cn = _common_name(buf, nstart, pos, "subject")

    tag, _, pos = _tlv(buf, pos, tbs_end, "subjectPublicKeyInfo")
    _expect(tag, _SEQUENCE, "subjectPublicKeyInfo")

    # Optional issuerUniqueID [1], subjectUniqueID [2], then extensions [3].
    while pos < tbs_end:
        tag, xstart, pos = _tlv(buf, pos, tbs_end, "tbsCertificate")
        if tag == _CTX3_CONSTRUCTED:
            _extensions(buf, xstart, pos, cert)
    return cert


def hostname_matches(host, cert):
    """True if cert names host, checked as mbedTLS does (RFC 6125 basics).

    subjectAltName first; the CN only when there is no subjectAltName at all.
    A wildcard is allowed only as the whole leftmost label and covers exactly
    one label. An IP address literal matches only an iPAddress entry.

    >>> hostname_matches("broker.local", parse(der))
    True
    """
    ip = _parse_ip(host)
    if ip is not None:
        for entry in cert.ip_addresses:
            if bytes(entry) == ip:
                return True
        return False
    host = _ascii_lower(host)
    if host is None:
        return False
    if host.endswith("."):
        host = host[:-1]
    if not host:
        return False
    if cert.has_san:
        for name in cert.dns_names:
            if _name_matches(name, host):
                return True
        return False
    return cert.subject_cn is not None and _name_matches(cert.subject_cn, host)


def _tlv(buf, pos, end, what):
    # One DER element at pos, inside [pos, end): (tag, value_start, value_end).
    if pos + 2 > end:
        raise X509Error("%s: truncated at byte %d" % (what, pos))
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise X509Error("%s: multi-byte tag at byte %d" % (what, pos))
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        count = n & 0x7F
        # 0x80 is BER's indefinite length: DER forbids it.
        if count == 0 or count > _MAX_LENGTH_BYTES:
            raise X509Error("%s: bad length at byte %d" % (what, pos - 1))
        if pos + count > end:
            raise X509Error("%s: truncated at byte %d" % (what, pos))
        n = 0
        for i in range(count):
            n = (n << 8) | buf[pos + i]
        pos += count
    if n > end - pos:
        raise X509Error("%s: length %d runs past its container at byte %d" % (what, n, pos))
    return tag, pos, pos + n


def _expect(tag, wanted, what):
    if tag != wanted:
        raise X509Error("%s: expected tag 0x%02x, got 0x%02x" % (what, wanted, tag))


def _equals(buf, start, end, const_bytes):
    # Compare in place: no copy of the slice.
    if end - start != len(const_bytes):
        return False
    for i in range(len(const_bytes)):
        if buf[start + i] != const_bytes[i]:
            return False
    return True


def _common_name(buf, pos, end, what):
    # Name ::= SEQUENCE OF SET OF SEQUENCE {type OID, value ANY}; first CN wins.
    found = None
    while pos < end:
        tag, rdn, pos = _tlv(buf, pos, end, what)
        _expect(tag, _SET, what)
        while rdn < pos:
            tag, atv, rdn = _tlv(buf, rdn, pos, what)
            _expect(tag, _SEQUENCE, what)
            tag, ostart, oend = _tlv(buf, atv, rdn, what)
            _expect(tag, _OID, what)
            tag, sstart, send = _tlv(buf, oend, rdn, what)
            if found is None and _equals(buf, ostart, oend, _OID_CN):
                found = _string(buf, tag, sstart, send, what + " CN")
    return found


def _string(buf, tag, start, end, what):
    if tag == _BMP_STRING:
        # UCS-2 big-endian.
        if (end - start) & 1:
            raise X509Error("%s: odd-length BMPString" % what)
        chars = []
        for i in range(start, end, 2):
            chars.append(chr((buf[i] << 8) | buf[i + 1]))
        return "".join(chars)
    if tag not in (_UTF8_STRING, _PRINTABLE_STRING, _IA5_STRING, _T61_STRING):
        raise X509Error("%s: unsupported string tag 0x%02x" % (what, tag))
    try:
        return str(bytes(buf[start:end]), "utf-8")
    except (UnicodeError, ValueError):
        raise X509Error("%s: not valid UTF-8" % what)


def _time(buf, tag, start, end, what):
    # RFC 5280 4.1.2.5: UTCTime YYMMDDHHMMSSZ (YY < 50 is 20YY) until 2049,
    # GeneralizedTime YYYYMMDDHHMMSSZ after; always UTC ("Z"), seconds present.
    if tag == _UTC_TIME:
        digits = 12
    elif tag == _GENERALIZED_TIME:
        digits = 14
    else:
        raise X509Error("%s: expected a time, got tag 0x%02x" % (what, tag))
    if end - start != digits + 1 or buf[end - 1] != 0x5A:  # "Z"
        raise X509Error("%s: not a UTC time of the DER form" % what)
    values = []
    for i in range(start, end - 1, 2):
        hi = buf[i] - 0x30
        lo = buf[i + 1] - 0x30
        if not (0 <= hi <= 9 and 0 <= lo <= 9):
            raise X509Error("%s: non-digit in time" % what)
        values.append(hi * 10 + lo)
    if tag == _UTC_TIME:
        year = values[0] + (1900 if values[0] >= 50 else 2000)
        values = values[1:]
    else:
        year = values[0] * 100 + values[1]
        values = values[2:]
    month, day, hour, minute, second = values
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)
            and hour <= 23 and minute <= 59 and second <= 59):
        raise X509Error("%s: date or time out of range" % what)
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def _days_in_month(year, month):
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_civil(year, month, day):
    # Days since 1970-01-01 in the proleptic Gregorian calendar, integers only
    # (a board's time module may count from 2000 and lacks timegm).
    if month <= 2:
        year -= 1
    era = year // 400
    yoe = year - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _extensions(buf, pos, end, cert):
    # [3] EXPLICIT SEQUENCE OF Extension {extnID, critical BOOLEAN DEFAULT FALSE, extnValue}
    tag, pos, end = _tlv(buf, pos, end, "extensions")
    _expect(tag, _SEQUENCE, "extensions")
    while pos < end:
        tag, ext, pos = _tlv(buf, pos, end, "extension")
        _expect(tag, _SEQUENCE, "extension")
        tag, ostart, oend = _tlv(buf, ext, pos, "extension")
        _expect(tag, _OID, "extension id")
        tag, vstart, vend = _tlv(buf, oend, pos, "extension")
        if tag == _BOOLEAN:
            tag, vstart, vend = _tlv(buf, vend, pos, "extension")
        _expect(tag, _OCTET_STRING, "extension value")
        if _equals(buf, ostart, oend, _OID_SAN):
            _subject_alt_names(buf, vstart, vend, cert)
        elif _equals(buf, ostart, oend, _OID_BASIC_CONSTRAINTS):
            tag, bstart, bend = _tlv(buf, vstart, vend, "basicConstraints")
            _expect(tag, _SEQUENCE, "basicConstraints")
            if bstart < bend:
                tag, cstart, cend = _tlv(buf, bstart, bend, "basicConstraints")
                if tag == _BOOLEAN:
                    if cend - cstart != 1:
                        raise X509Error("basicConstraints: bad BOOLEAN")
                    cert.is_ca = buf[cstart] != 0


def _subject_alt_names(buf, pos, end, cert):
    tag, pos, end = _tlv(buf, pos, end, "subjectAltName")
    _expect(tag, _SEQUENCE, "subjectAltName")
    cert.has_san = True
    while pos < end:
        tag, start, pos = _tlv(buf, pos, end, "subjectAltName")
        if tag == _SAN_DNS:
            cert.dns_names.append(_string(buf, _IA5_STRING, start, pos, "subjectAltName dNSName"))
        elif tag == _SAN_IP:
            if pos - start not in (4, 16):
                raise X509Error("subjectAltName: iPAddress of %d bytes" % (pos - start))
            cert.ip_addresses.append(buf[start:pos])


def _ascii_lower(s):
    # Hostnames are ASCII (IDNs arrive as xn-- labels); str.lower() on
    # MicroPython only folds ASCII anyway, so refuse anything else outright.
    out = []
    for c in s:
        o = ord(c)
        if o > 0x7E or o < 0x21:
            return None
        if 0x41 <= o <= 0x5A:
            c = chr(o + 0x20)
        out.append(c)
    return "".join(out)


def _name_matches(pattern, host):
    pattern = _ascii_lower(pattern)
    if not pattern:
        return False
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if pattern == host:
        return True
    if not pattern.startswith("*."):
        return False
    # "*.example.com": the wildcard is one whole label, never a part of one,
    # and needs two labels after it so that "*.com" matches nothing.
    rest = pattern[1:]
    if "*" in rest or rest.count(".") < 2:
        return False
    dot = host.find(".")
    return dot > 0 and host[dot:] == rest


def _parse_ip(host):
    # IPv4 dotted quad or IPv6 text -> packed bytes; None for a DNS name.
    if ":" in host:
        return _parse_ipv6(host)
    parts = host.split(".")
    if len(parts) != 4:
        return None
    out = bytearray(4)
    for i in range(4):
        p = parts[i]
        if not p or len(p) > 3 or not _all_in(p, "0123456789"):
            return None
        v = int(p)
        if v > 255:
            return None
        out[i] = v
    return bytes(out)


def _parse_ipv6(host):
    # An IPv6 literal is never a DNS name; if it does not parse, it matches nothing.
    if host.count("::") > 1:
        return b""
    if "::" in host:
        head, tail = host.split("::")
        head = head.split(":") if head else []
        tail = tail.split(":") if tail else []
        if len(head) + len(tail) > 7:
            return b""
        groups = head + ["0"] * (8 - len(head) - len(tail)) + tail
    else:
        groups = host.split(":")
    if len(groups) != 8:
        return b""
    out = bytearray(16)
    for i in range(8):
        g = groups[i]
        if not g or len(g) > 4 or not _all_in(g.lower(), "0123456789abcdef"):
            return b""
        v = int(g, 16)
        out[2 * i] = v >> 8
        out[2 * i + 1] = v & 0xFF
    return bytes(out)


def _all_in(s, allowed):
    for c in s:
        if c not in allowed:
            return False
    return True
