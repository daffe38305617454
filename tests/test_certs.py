"""tools/certs.py: what each command writes, what inspect says, and how pin picks a root.

Material is made in tmp_path; `pin` runs against real TLS servers on free loopback ports,
started in a thread and always stopped. CLI behaviour (exit status, messages) is checked
through subprocesses, exactly as scripts and the Makefile see it.
"""

import contextlib
import datetime
import hashlib
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools import certs

REPO = Path(__file__).resolve().parent.parent
CERTS_PY = REPO / "tools" / "certs.py"
UTC = datetime.timezone.utc

pytestmark = pytest.mark.timeout(60)


def run_cli(*args, check_status=None):
    proc = subprocess.run([sys.executable, str(CERTS_PY), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    if check_status is not None:
        assert proc.returncode == check_status, (proc.stdout, proc.stderr)
    return proc


def assert_one_line_error(proc, status, *fragments):
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def load(path):
    data = Path(path).read_bytes()
    if data.startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def ext(cert, kind):
    return cert.extensions.get_extension_for_class(kind)


def cn(cert):
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


# ---------------------------------------------------------------------------------------
# Material made by the CLI, once per worker

@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    run_cli("--dir", d, "init-ca", check_status=0)
    run_cli("--dir", d, "server", "--host", "127.0.0.1", "--dns", "localhost", check_status=0)
    run_cli("--dir", d, "device", "board-1", check_status=0)
    run_cli("device", "esp8266-1", "--rsa", "--dir", d, check_status=0)  # --dir after too
    return d


def test_init_ca_writes_self_signed_root_with_ca_flags(cli_dir):
    ca = load(cli_dir / "ca.pem")
    assert load(cli_dir / "ca.der") == ca
    assert cn(ca) == "SecureNode Dev Root CA" and ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    constraints = ext(ca, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ext(ca, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ext(ca, x509.SubjectKeyIdentifier)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 3650


def test_init_ca_refuses_to_replace_a_ca_unless_forced(tmp_path):
    run_cli("--dir", tmp_path, "init-ca", check_status=0)
    before = (tmp_path / "ca.der").read_bytes()
    proc = run_cli("--dir", tmp_path, "init-ca")
    assert_one_line_error(proc, 2, "ca.pem already exists", "--force")
    assert (tmp_path / "ca.der").read_bytes() == before
    run_cli("--dir", tmp_path, "init-ca", "--rsa", "--force", check_status=0)
    replaced = load(tmp_path / "ca.der")
    assert replaced.public_key().key_size == 2048 and (tmp_path / "ca.der").read_bytes() != before


def test_server_cert_has_sans_server_auth_key_ids_and_chain(cli_dir):
    ca, server = load(cli_dir / "ca.pem"), load(cli_dir / "server.pem")
    assert load(cli_dir / "server.der") == server
    server.verify_directly_issued_by(ca)
    san = ext(server, x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert list(ext(server, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not ext(server, x509.BasicConstraints).value.ca
    aki = ext(server, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == ext(ca, x509.SubjectKeyIdentifier).value.digest
    # Issued by the root: the chain a server presents is the leaf alone.
    chain = x509.load_pem_x509_certificates((cli_dir / "server-chain.pem").read_bytes())
    assert chain == [server]
    # Python's ssl (OpenSSL) accepts the pair as a server would load it.
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        cli_dir / "server-chain.pem", cli_dir / "server.key")


def test_device_cert_defaults_to_ecdsa_p256_with_sec1_der_key(cli_dir):
    cert = load(cli_dir / "board-1.crt.der")
    assert load(cli_dir / "board-1.crt.pem") == cert
    assert cn(cert) == "board-1"
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.public_key().curve.name == "secp256r1"
    key_der = (cli_dir / "board-1.key.der").read_bytes()
    key = serialization.load_der_private_key(key_der, password=None)
    assert key.public_key() == cert.public_key()
    # SEC1 "EC PRIVATE KEY", not PKCS#8: re-encoding as traditional DER gives the same bytes.
    assert key_der == key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
    assert b"BEGIN EC PRIVATE KEY" in (cli_dir / "board-1.key.pem").read_bytes()
    cert.verify_directly_issued_by(load(cli_dir / "ca.pem"))


def test_device_cert_rsa_is_2048_with_pkcs1_der_key(cli_dir):
    cert = load(cli_dir / "esp8266-1.crt.der")
    assert cn(cert) == "esp8266-1"
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048
    key_der = (cli_dir / "esp8266-1.key.der").read_bytes()
    key = serialization.load_der_private_key(key_der, password=None)
    assert key_der == key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
    assert b"BEGIN RSA PRIVATE KEY" in (cli_dir / "esp8266-1.key.pem").read_bytes()
    # RSA key exchange (axTLS) needs keyEncipherment.
    assert ext(cert, x509.KeyUsage).value.key_encipherment


def test_private_keys_are_mode_0600_and_never_printed(cli_dir, tmp_path):
    keys = sorted(p.name for p in cli_dir.iterdir() if ".key" in p.name)
    assert keys == ["board-1.key.der", "board-1.key.pem", "ca.key", "esp8266-1.key.der",
                    "esp8266-1.key.pem", "server.key"]
    for name in keys:
        assert stat.S_IMODE((cli_dir / name).stat().st_mode) == 0o600, name
    # Re-issuing over a key left world-readable still ends with a 0600 key.
    certs.make_ca(tmp_path)
    loose = tmp_path / "server.key"
    loose.write_bytes(b"old")
    loose.chmod(0o644)
    proc = run_cli("--dir", tmp_path, "server", check_status=0)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("device_id, problem", [
    ("board 1", "' ' at position 6 is not allowed"),
    ("board/1", "'/' at position 6 is not allowed"),
    ("", "is empty"),
    ("b" * 65, "65 characters long"),
])
def test_device_id_validation_names_the_problem(tmp_path, device_id, problem):
    with pytest.raises(certs.CertError, match="device id") as caught:
        certs.make_device(tmp_path, device_id)
    assert problem in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_bad_device_id_in_one_line_and_writes_nothing(tmp_path):
    certs.make_ca(tmp_path)
    before = sorted(tmp_path.iterdir())
    proc = run_cli("--dir", tmp_path, "device", "../evil")
    assert_one_line_error(proc, 2, "device id '../evil'", "'.' at position 1")
    assert sorted(tmp_path.iterdir()) == before


def test_cli_without_a_ca_says_to_run_init_ca(tmp_path):
    assert_one_line_error(run_cli("--dir", tmp_path, "server"), 2, "ca.pem does not exist",
                          "init-ca")


def test_intermediate_makes_a_three_level_chain(tmp_path):
    root = certs.make_ca(tmp_path)
    issuing = certs.make_intermediate(tmp_path, "issuing")
    server = certs.make_server(tmp_path, name="srv3", issuer="issuing", rsa=True)
    constraints = ext(issuing.cert, x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    issuing.cert.verify_directly_issued_by(root.cert)
    chain = x509.load_pem_x509_certificates(server.chain_pem.read_bytes())
    assert chain == [server.cert, issuing.cert]
    server.cert.verify_directly_issued_by(issuing.cert)
    # An intermediate cannot issue an intermediate (pathlen 0).
    with pytest.raises(certs.CertError, match="intermediate"):
        certs.make_intermediate(tmp_path, "deeper", issuer="issuing")


def test_validity_windows_make_expired_not_yet_valid_and_wrong_host_material(tmp_path):
    certs.make_ca(tmp_path)
    now = datetime.datetime.now(UTC)
    expired = certs.make_server(tmp_path, name="expired",
                                not_after=datetime.datetime(2021, 1, 1))
    future = certs.make_server(tmp_path, name="future", not_before=now + datetime.timedelta(30))
    wrong = certs.make_server(tmp_path, name="wrong", dns=["wrong.example"])
    assert certs.describe(expired.cert)["status"] == "expired"
    assert expired.cert.not_valid_after_utc == datetime.datetime(2021, 1, 1, tzinfo=UTC)
    assert certs.describe(future.cert)["status"] == "not_yet_valid"
    assert certs.describe(wrong.cert)["sans"] == ["DNS:wrong.example"]
    with pytest.raises(certs.CertError, match="not later than"):
        certs.make_server(tmp_path, name="backwards", not_before=now, not_after=now)


# ---------------------------------------------------------------------------------------
# inspect

def test_inspect_text_shows_subject_expiry_fingerprint_san_and_eku(tmp_path):
    certs.make_ca(tmp_path)
    expired = certs.make_server(tmp_path, name="expired", not_after=datetime.datetime(2021, 1, 1))
    proc = run_cli("inspect", expired.cert_pem, check_status=0)
    out = proc.stdout
    assert "CN=localhost" in out and "CN=SecureNode Dev Root CA" in out
    assert "2021-01-01T00:00:00Z" in out and "EXPIRED" in out
    assert expired.sha256 in out
    assert "DNS:localhost, IP:127.0.0.1" in out and "serverAuth" in out
    assert "CA          no" in out and "EC P-256" in out


def test_inspect_json_reports_ca_pathlen_and_sha256_of_der(tmp_path):
    root = certs.make_ca(tmp_path, rsa=True)
    certs.make_intermediate(tmp_path, "issuing")
    proc = run_cli("inspect", "--json", root.cert_der, check_status=0)
    info = json.loads(proc.stdout)
    assert info["sha256"] == hashlib.sha256(root.cert_der.read_bytes()).hexdigest()
    assert info["is_ca"] and info["self_signed"] and info["path_length"] is None
    assert info["status"] == "valid" and 3640 < info["days_left"] <= 3650
    assert info["key_type"] == "RSA 2048" and info["subject_cn"] == "SecureNode Dev Root CA"
    lines = run_cli("inspect", "--json", tmp_path / "issuing.pem",
                    check_status=0).stdout.splitlines()
    assert [json.loads(line)["path_length"] for line in lines] == [0]


def test_inspect_refuses_a_private_key_without_printing_it(tmp_path):
    ca = certs.make_ca(tmp_path)
    proc = run_cli("inspect", ca.key_pem)
    assert_one_line_error(proc, 2, "private key")
    assert "BEGIN" not in proc.stdout + proc.stderr
    assert_one_line_error(run_cli("inspect", tmp_path / "nope.pem"), 2, "nope.pem does not exist")


# ---------------------------------------------------------------------------------------
# pin, against real loopback TLS servers

@contextlib.contextmanager
def tls_server(chain_pem, key_pem):
    """A TLS server on a free loopback port presenting `chain_pem`; yields the port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_pem, key_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)        # until the client hangs up
            except OSError:
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A 3-level chain, and a bundle of unrelated CAs including one that imitates the root's
    name with another key."""
    d = tmp_path_factory.mktemp("pki")
    root = certs.make_ca(d, name="Pin Test Root")
    certs.make_intermediate(d, "issuing")
    server = certs.make_server(d, name="srv", issuer="issuing")
    unrelated = [certs.make_ca(d / name, name=cn_) for name, cn_ in
                 [("other1", "Other Root 1"), ("impostor", "Pin Test Root"),
                  ("other2", "Other Root 2")]]
    bundle_with_root = d / "bundle.pem"
    bundle_with_root.write_bytes(b"".join(u.cert_pem.read_bytes() for u in unrelated[:2])
                                 + root.cert_pem.read_bytes()
                                 + unrelated[2].cert_pem.read_bytes())
    bundle_without_root = d / "bundle-no-root.pem"
    bundle_without_root.write_bytes(b"".join(u.cert_pem.read_bytes() for u in unrelated))
    return dict(dir=d, root=root, server=server, bundle=bundle_with_root,
                bundle_no_root=bundle_without_root,
                issuing=x509.load_pem_x509_certificate((d / "issuing.pem").read_bytes()))


def test_pin_walks_leaf_and_intermediate_to_the_root_in_the_bundle(pki, tmp_path):
    out = tmp_path / "pinned.der"
    with tls_server(pki["server"].chain_pem, pki["server"].key_pem) as port:
        proc = run_cli("pin", "127.0.0.1:%d" % port, "--bundle", pki["bundle"], "--no-system",
                       "--out", out, check_status=0)
    assert out.read_bytes() == pki["root"].cert_der.read_bytes()
    assert "presented 2 certificates" in proc.stdout
    lines = proc.stdout.splitlines()
    roles = [line.split()[0] for line in lines if line.startswith("  ") and
             line.split()[0] in ("leaf", "intermediate", "root")]
    assert roles == ["leaf", "intermediate", "root"]
    assert "pinned: root 'Pin Test Root, SecureNode'" in proc.stdout
    assert "servers do not send their root" in proc.stdout and str(pki["bundle"].name) in proc.stdout
    assert "signature verified" in proc.stdout
    assert pki["root"].sha256 in proc.stdout
    assert "WARNING" not in proc.stderr


def test_pin_takes_a_self_signed_root_the_server_presents(tmp_path):
    root = certs.make_ca(tmp_path, name="Presented Root")
    server = certs.make_server(tmp_path)
    presenting = tmp_path / "leaf-and-root.pem"
    presenting.write_bytes(server.cert_pem.read_bytes() + root.cert_pem.read_bytes())
    with tls_server(presenting, server.key_pem) as port:
        proc = run_cli("--dir", tmp_path, "pin", "localhost:%d" % port, "--no-system",
                       "--bundle", root.cert_pem, check_status=0)
    pinned = tmp_path / "pinned-localhost.der"
    assert pinned.read_bytes() == root.cert_der.read_bytes()
    assert "(SNI localhost)" in proc.stdout
    assert "presented this root itself" in proc.stdout and "also in the trust store" in proc.stdout


def test_pin_without_the_root_exits_3_names_the_issuer_and_writes_nothing(pki, tmp_path):
    with tls_server(pki["server"].chain_pem, pki["server"].key_pem) as port:
        proc = run_cli("--dir", tmp_path, "pin", "127.0.0.1:%d" % port, "--no-system",
                       "--bundle", pki["bundle_no_root"])
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "root not found" in proc.stderr
    # The impostor in the bundle has the root's name but another key: it was refused.
    assert "issued by 'O=SecureNode,CN=Pin Test Root'" in proc.stderr
    assert "Nothing written" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_pin_leaf_on_request_warns_that_leaves_are_renewed(pki, tmp_path):
    out = tmp_path / "leaf.der"
    with tls_server(pki["server"].chain_pem, pki["server"].key_pem) as port:
        proc = run_cli("pin", "127.0.0.1:%d" % port, "--no-system", "--bundle", pki["bundle"],
                       "--out", out, "--pick", "leaf", check_status=0)
    assert out.read_bytes() == pki["server"].cert_der.read_bytes()
    warning = " ".join(proc.stderr.split())
    assert "WARNING: pinning the leaf" in warning and "every 90 days" in warning
    assert "A root lasts decades" in warning


def test_pin_intermediate_on_request_warns_too(pki, tmp_path):
    out = tmp_path / "intermediate.der"
    with tls_server(pki["server"].chain_pem, pki["server"].key_pem) as port:
        proc = run_cli("pin", "127.0.0.1:%d" % port, "--no-system", "--bundle",
                       pki["bundle_no_root"], "--out", out, "--pick", "intermediate",
                       check_status=0)
    assert load(out) == pki["issuing"]
    assert "WARNING: pinning the intermediate" in proc.stderr


def test_pin_connection_refused_is_a_one_line_error(tmp_path):
    # A bound socket that never listens: connecting to its port is refused, and no other
    # test can take the port meanwhile.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        proc = run_cli("--dir", tmp_path, "pin", "127.0.0.1:%d" % port, "--no-system",
                       "--bundle", tmp_path / "unused.pem")
    # The missing bundle is reported before any connection is tried.
    assert_one_line_error(proc, 2, "unused.pem does not exist")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        proc = run_cli("--dir", tmp_path, "pin", "127.0.0.1:%d" % port, "--timeout", "5")
    assert_one_line_error(proc, 1, "127.0.0.1:%d" % port, "cannot connect", "refused")
    assert list(tmp_path.iterdir()) == []


def test_pin_peer_that_speaks_no_tls_is_a_one_line_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def hang_up():
            conn, _ = listener.accept()
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        proc = run_cli("--dir", tmp_path, "pin", "127.0.0.1:%d" % port, "--timeout", "5")
        thread.join(5)
    assert_one_line_error(proc, 1, "127.0.0.1:%d" % port, "TLS handshake failed")


@pytest.mark.parametrize("hostport, fragment", [
    ("localhost", "is not HOST:PORT"),
    ("localhost:http", "is not HOST:PORT"),
    ("localhost:70000", "out of range"),
])
def test_pin_bad_host_port_is_a_one_line_usage_error(tmp_path, hostport, fragment):
    assert_one_line_error(run_cli("--dir", tmp_path, "pin", hostport), 2, fragment)


# ---------------------------------------------------------------------------------------
# walk_chain, without a network

def test_walk_replaces_a_cross_signed_copy_with_the_trusted_self_signed_root(tmp_path):
    old_root = certs.make_ca(tmp_path / "old", name="Old Root")
    new_root = certs.make_ca(tmp_path / "new", name="New Root")
    # What some servers present: the new root's name and key, signed by the old root.
    cross = (x509.CertificateBuilder().subject_name(new_root.cert.subject)
             .issuer_name(old_root.cert.subject).public_key(new_root.key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(new_root.cert.not_valid_before_utc)
             .not_valid_after(new_root.cert.not_valid_after_utc)
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                 new_root.key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 old_root.key.public_key()), critical=False)
             .sign(old_root.key, hashes.SHA256()))
    leaf = certs.make_server(tmp_path / "new", name="leaf", issuer="ca").cert
    links, missing = certs.walk_chain([leaf, cross], [old_root.cert, new_root.cert])
    assert missing is None
    assert [link.role for link in links] == ["leaf", "root"]
    assert links[-1].cert == new_root.cert and "cross-signed" in links[-1].note


@pytest.mark.parametrize("name", sorted(certs.COMMANDS))
def test_help_for_each_command_teaches_with_an_example(name, capsys):
    with pytest.raises(SystemExit) as done:
        certs.main([name, "--help"])
    assert done.value.code == 0
    assert "\n  certs.py %s" % name in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Careless input: one line each, nothing written (issue 13, item 10)

@pytest.mark.parametrize("dns, fragment", [
    ("a" * 65, "is 65 characters long: at most 63"),
    ("", "--dns is empty"),
    ("my host", "' ' at position 3 is not allowed in a host name"),
    ("pay$day.example", "'$' at position 4 is not allowed in a host name"),
    ("a..b", "empty label"),
    ("x" * 254, "254 characters long: a host name has at most 253"),
])
def test_server_refuses_a_host_name_no_resolver_would_use(tmp_path, dns, fragment):
    certs.make_ca(tmp_path)
    before = sorted(tmp_path.iterdir())
    proc = run_cli("--dir", tmp_path, "server", "--dns", dns)
    assert_one_line_error(proc, 2, fragment)
    assert sorted(tmp_path.iterdir()) == before


def test_server_takes_a_long_valid_host_name_and_keeps_the_cn_within_64(tmp_path):
    certs.make_ca(tmp_path)
    long_name = ".".join(["b" * 40, "c" * 40, "example"])
    issued = certs.make_server(tmp_path, dns=[long_name, "*.example.com"], name="long")
    sans = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [long_name, "*.example.com"]
    assert cn(issued.cert) == "*.example.com"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "1e9"])
def test_pin_refuses_a_timeout_that_is_not_a_finite_positive_number(tmp_path, value):
    proc = run_cli("--dir", tmp_path, "pin", "127.0.0.1:1", "--timeout=" + value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --timeout: %s: must be more than 0" % value in proc.stderr.splitlines()[-1]


def test_days_beyond_a_century_are_refused_not_overflowed(tmp_path):
    proc = run_cli("--dir", tmp_path, "init-ca", "--days", "999999999")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "must be 1..36500" in proc.stderr.splitlines()[-1]


def test_inspect_reads_a_bounded_amount_of_an_endless_file(tmp_path):
    proc = subprocess.run(["prlimit", "--as=%d" % (400 << 20), sys.executable, str(CERTS_PY),
                           "inspect", "/dev/zero"], cwd=REPO, capture_output=True, text=True,
                          timeout=30)
    assert_one_line_error(proc, 2, "/dev/zero is larger than 8 MiB")
