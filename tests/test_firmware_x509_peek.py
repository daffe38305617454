"""securenode/x509_peek.py on real certificates made with `cryptography`, and on broken
ones: the same answers (or the same X509Error) on CPython and on real MicroPython."""

import copy
import datetime
import ipaddress
import json
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

UTC = datetime.timezone.utc


def _name(cn, org=None):
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "GB")]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _cert(subject, issuer, issuer_key, not_before, not_after, san=None, ca=None, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _dns(*names):
    return [x509.DNSName(n) for n in names]


def _ip(*addrs):
    return [x509.IPAddress(ipaddress.ip_address(a)) for a in addrs]


@pytest.fixture(scope="module")
def certs():
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name("SecureNode Test Root", org="SecureNode")
    made = {}
    made["root"], _ = _cert(root_name, root_name, root_key,
                            datetime.datetime(2024, 1, 1, tzinfo=UTC),
                            datetime.datetime(2055, 6, 30, 12, 0, 0, tzinfo=UTC),  # Generalized
                            ca=True, key=root_key)
    made["server"], _ = _cert(_name("broker"), root_name, root_key,
                              datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                              datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),  # UTCTime
                              san=_dns("broker.local", "*.sim.example", "Localhost")
                              + _ip("127.0.0.1", "::1"), ca=False)
    made["legacy_cn_only"], _ = _cert(_name("legacy.example"), root_name, root_key,
                                      datetime.datetime(1950, 1, 1, tzinfo=UTC),
                                      datetime.datetime(2050, 1, 1, tzinfo=UTC))
    made["ip_only"], _ = _cert(_name("10.0.0.5"), root_name, root_key,
                               datetime.datetime(2025, 2, 28, 23, 59, 59, tzinfo=UTC),
                               datetime.datetime(2026, 2, 28, tzinfo=UTC),
                               san=_ip("10.0.0.5", "2001:db8::17"))
    made["san_without_dns"], _ = _cert(_name("cn.example"), root_name, root_key,
                                       datetime.datetime(2024, 2, 29, tzinfo=UTC),
                                       datetime.datetime(2030, 1, 1, tzinfo=UTC),
                                       san=[x509.UniformResourceIdentifier("urn:x")])
    made["bad_wildcards"], _ = _cert(_name(None), root_name, root_key,
                                     datetime.datetime(2024, 1, 1, tzinfo=UTC),
                                     datetime.datetime(2030, 1, 1, tzinfo=UTC),
                                     san=_dns("*.com", "b*.example.com", "*.*.example.org"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    made["rsa_no_cn"], _ = _cert(_name(None, org="Only Org"), root_name, root_key,
                                 datetime.datetime(2024, 1, 1, tzinfo=UTC),
                                 datetime.datetime(2034, 1, 1, tzinfo=UTC),
                                 san=_dns("rsa.example"), key=rsa_key)
    return {name: c.public_bytes(serialization.Encoding.DER) for name, c in made.items()}, made


def _malformed(der, cert):
    """Broken variants of a real certificate: name -> (bytes, expected X509Error text)."""
    nb = cert.not_valid_before_utc.strftime("%y%m%d%H%M%S").encode()
    assert der.count(b"\x17\x0d" + nb + b"Z") == 1
    at = der.index(b"\x17\x0d" + nb + b"Z")
    month13 = der[:at + 4] + b"13" + der[at + 6:]
    letter = der[:at + 2] + b"2X" + der[at + 4:]
    no_zulu = der[:at + 14] + b"+" + der[at + 15:]
    feb30 = der[:at + 4] + b"0230" + der[at + 8:]
    return {
        "empty": (b"", "certificate: truncated at byte 0"),
        "one_byte": (b"\x30", "certificate: truncated at byte 0"),
        "not_a_sequence": (b"\x02" + der[1:], "certificate: expected tag 0x30, got 0x02"),
        "trailing_byte": (der + b"\x00", "certificate: 1 bytes after its end"),
        "indefinite_length": (b"\x30\x80" + der[4:],
                              "certificate: bad length at byte 1"),
        "length_of_4_bytes": (b"\x30\x84\x00\x00" + der[2:],
                              "certificate: bad length at byte 1"),
        "multi_byte_tag": (b"\x1f" + der[1:], "certificate: multi-byte tag at byte 0"),
        "outer_length_too_long": (der[:2] + bytes([der[2], der[3] + 1]) + der[4:],
                                  "certificate: length %d runs past its container at byte 4"
                                  % ((der[2] << 8 | der[3]) + 1)),
        "month_13": (month13, "notBefore: date or time out of range"),
        "february_30": (feb30, "notBefore: date or time out of range"),
        "letter_in_time": (letter, "notBefore: non-digit in time"),
        "time_not_utc": (no_zulu, "notBefore: not a UTC time of the DER form"),
    }


VECTORS = r'''
import json
from securenode import x509_peek as xp

def hexs(b):
    return "".join("%02x" % x for x in bytes(b))

def describe(c):
    return {"not_before": c.not_before, "not_after": c.not_after, "subject_cn": c.subject_cn,
            "issuer_cn": c.issuer_cn, "issuer_dn": hexs(c.issuer_dn),
            "subject_dn": hexs(c.subject_dn), "dns_names": c.dns_names,
            "ip_addresses": [hexs(a) for a in c.ip_addresses], "has_san": c.has_san,
            "is_ca": c.is_ca, "dn_is_view": type(c.issuer_dn).__name__}

def attempt(der):
    try:
        xp.parse(der)
        return "ok"
    except xp.X509Error as e:
        return "X509Error: %s" % e
    except Exception as e:
        return "CRASH %s: %s" % (type(e).__name__, e)

job = json.loads(JOB)
out = {"certs": {}, "hosts": [], "malformed": {}, "prefixes": {}, "fuzz": {}}
parsed = {}
for name in job["certs"]:
    with open(name + ".der", "rb") as f:
        der = f.read()
    parsed[name] = xp.parse(der)
    out["certs"][name] = describe(parsed[name])
    if name in job["prefix_certs"]:
        # Every truncation of a real certificate.
        seen = {}
        for n in range(len(der)):
            r = attempt(der[:n])
            key = r.split(":")[0] if r.startswith("X509Error") else r
            seen[key] = seen.get(key, 0) + 1
        out["prefixes"][name] = seen
        # Deterministic byte corruption (an LCG both ports compute alike).
        seen = {}
        lcg = 7
        buf = bytearray(der)
        for _ in range(600):
            flips = []
            for _ in range(1 + lcg % 3):
                lcg = (lcg * 1103515245 + 12345) & 0x7FFFFFFF
                pos = (lcg >> 4) % len(buf)
                flips.append((pos, buf[pos]))
                buf[pos] = (lcg >> 12) & 0xFF
            r = attempt(buf)
            key = r.split(":")[0] if r.startswith("X509Error") else r
            seen[key] = seen.get(key, 0) + 1
            for pos, old in reversed(flips):
                buf[pos] = old
        out["fuzz"][name] = seen
for cert_name, host in job["hosts"]:
    out["hosts"].append(xp.hostname_matches(host, parsed[cert_name]))
for name in job["malformed"]:
    with open("bad/" + name + ".der", "rb") as f:
        out["malformed"][name] = attempt(f.read())
# memoryview and bytearray input, and a leaf issued by the root: raw DN bytes match.
with open("server.der", "rb") as f:
    der = f.read()
out["views"] = [describe(xp.parse(memoryview(der))), describe(xp.parse(bytearray(der)))]
out["issued_by_root"] = bytes(parsed["server"].issuer_dn) == bytes(parsed["root"].subject_dn)
print(json.dumps(out))
'''

# (cert, host, expected)
HOSTS = [
    ("server", "broker.local", True),
    ("server", "BROKER.Local.", True),
    ("server", "localhost", True),
    ("server", "broker", False),  # the CN is ignored when a SAN exists
    ("server", "node1.sim.example", True),
    ("server", "a.b.sim.example", False),  # a wildcard covers exactly one label
    ("server", "sim.example", False),
    ("server", ".sim.example", False),
    ("server", "127.0.0.1", True),
    ("server", "127.0.0.2", False),
    ("server", "::1", True),
    ("server", "0:0:0:0:0:0:0:1", True),
    ("server", "::2", False),
    ("server", "127.1", False),
    ("server", "", False),
    ("server", "bröker.local", False),
    ("legacy_cn_only", "legacy.example", True),  # no SAN: the CN counts
    ("legacy_cn_only", "LEGACY.EXAMPLE", True),
    ("legacy_cn_only", "other.example", False),
    ("ip_only", "10.0.0.5", True),
    ("ip_only", "2001:DB8::17", True),
    ("ip_only", "2001:db8:0:0:0:0:0:17", True),
    ("ip_only", "10.0.0.6", False),
    ("san_without_dns", "cn.example", False),  # a SAN of other kinds still hides the CN
    ("bad_wildcards", "example.com", False),
    ("bad_wildcards", "x.com", False),  # "*.com" must match nothing
    ("bad_wildcards", "broker.example.com", False),  # partial-label wildcards are refused
    ("bad_wildcards", "a.b.example.org", False),
    ("rsa_no_cn", "rsa.example", True),
    ("root", "SecureNode Test Root", False),
]

PREFIX_CERTS = ["server", "rsa_no_cn"]


@pytest.fixture(scope="module")
def results(certs, tmp_path_factory):
    ders, made = certs
    files = {name + ".der": der for name, der in ders.items()}
    malformed = _malformed(ders["server"], made["server"])
    for name, (der, _) in malformed.items():
        files["bad/%s.der" % name] = der
    files.update(firmware_files("x509_peek"))
    job = {"certs": sorted(ders), "hosts": [[c, h] for c, h, _ in HOSTS],
           "malformed": sorted(malformed), "prefix_certs": PREFIX_CERTS}
    code = "JOB = %r\n" % json.dumps(job) + VECTORS
    return run_both(files, code, tmp_path_factory.mktemp("flash")), malformed


def test_cpython_and_micropython_agree(results):
    cpy, mpy = copy.deepcopy(results[0])
    for r in (cpy, mpy):
        for view in r["views"]:
            view.pop("dn_is_view")
        for c in r["certs"].values():
            c.pop("dn_is_view")
    assert cpy == mpy


def _cn(name):
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attrs[0].value if attrs else None


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_fields_match_what_cryptography_wrote(results, certs, port):
    (outputs, _), (ders, made) = results, certs
    for name, cert in made.items():
        got = outputs[port]["certs"][name]
        assert got["not_before"] == int(cert.not_valid_before_utc.timestamp()), name
        assert got["not_after"] == int(cert.not_valid_after_utc.timestamp()), name
        assert got["subject_cn"] == _cn(cert.subject), name
        assert got["issuer_cn"] == _cn(cert.issuer), name
        assert got["issuer_dn"] == cert.issuer.public_bytes().hex(), name
        assert got["subject_dn"] == cert.subject.public_bytes().hex(), name
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        assert got["has_san"] == (san is not None), name
        assert got["dns_names"] == (san.get_values_for_type(x509.DNSName) if san else []), name
        assert got["ip_addresses"] == (
            [a.packed.hex() for a in san.get_values_for_type(x509.IPAddress)] if san else [])
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        assert got["is_ca"] == ca, name


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_both_time_encodings_and_pre_1970_dates(results, port):
    (outputs, _) = results
    certs = outputs[port]["certs"]
    assert certs["server"]["not_after"] == 2524607999  # UTCTime 491231235959Z
    assert certs["root"]["not_after"] == 2697969600  # GeneralizedTime 20550630120000Z
    assert certs["legacy_cn_only"]["not_before"] == -631152000  # UTCTime 500101000000Z
    assert certs["ip_only"]["not_before"] == 1740787199  # 2025-02-28T23:59:59Z


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_raw_dns_are_views_and_link_leaf_to_root(results, port):
    (outputs, _) = results
    assert outputs[port]["issued_by_root"] is True
    assert outputs[port]["certs"]["server"]["dn_is_view"] == "memoryview"
    assert outputs[port]["views"][0] == outputs[port]["views"][1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_hostname_matching_follows_rfc6125_as_mbedtls_does(results, port):
    (outputs, _) = results
    got = outputs[port]["hosts"]
    wrong = [(c, h, want) for (c, h, want), g in zip(HOSTS, got) if g != want]
    assert not wrong


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_malformed_der_raises_x509error_naming_the_problem(results, port):
    (outputs, malformed) = results
    for name, (_, message) in malformed.items():
        assert outputs[port]["malformed"][name] == "X509Error: " + message, name


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("cert", PREFIX_CERTS)
def test_every_truncation_is_an_x509error(results, certs, port, cert):
    (outputs, _), (ders, _) = results, certs
    assert outputs[port]["prefixes"][cert] == {"X509Error": len(ders[cert])}


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("cert", PREFIX_CERTS)
def test_corrupted_bytes_never_crash_the_reader(results, port, cert):
    (outputs, _) = results
    seen = outputs[port]["fuzz"][cert]
    assert set(seen) <= {"ok", "X509Error"}, seen
    assert seen.get("X509Error", 0) > 100  # the corruption does reach the parser
