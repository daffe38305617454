"""The ssl stand-in against a real local TLS server: verification by the board clock,
pinned roots, hostname, mpy cadata rules, and the esp8266 (axTLS) limits."""
import datetime
import json
import socket
import ssl
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_sim_board import run_board  # noqa: E402
from tools import certs  # noqa: E402

UNIX_2026 = 1767225600
DAY_S = 86400

CLIENT = """
import json, socket, ssl, time
cfg = json.load(open("t.json"))
s = socket.socket()
s.settimeout(cfg.get("timeout", 5))
s.connect(socket.getaddrinfo("127.0.0.1", cfg["port"])[0][-1])
out = {"verify_mode_default": ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).verify_mode,
       "has_required": hasattr(ssl, "CERT_REQUIRED")}
try:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cfg.get("ca"):
        ctx.load_verify_locations(cadata=open(cfg["ca"], "rb").read())
    if cfg.get("mode") is not None:
        ctx.verify_mode = cfg["mode"]
    out["verify_mode"] = ctx.verify_mode
    ss = ctx.wrap_socket(s, server_hostname=cfg.get("host"))
    out["line"] = ss.readline().decode()
    if hasattr(ss, "getpeercert"):
        out["peer_len"] = len(ss.getpeercert(True))
    ss.write(b"app-data!!", 8)
    out["ok"] = True
    ss.close()
except OSError as e:
    out.update(ok=False, errno=e.args[0], msg=str(e.args[1]) if len(e.args) > 1 else "")
except ValueError as e:
    out.update(ok=False, value_error=str(e))
print(json.dumps(out))
"""


class TlsServer:
    """A Python ssl server on 127.0.0.1: greets, then records application bytes."""

    def __init__(self, issued, ciphers=None, max_tls12=False):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(issued.chain_pem, issued.key_pem)
        if ciphers:
            self.ctx.set_ciphers(ciphers)
        if max_tls12:
            self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.handshakes = 0
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            raw.settimeout(5)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as conn:
                    self.handshakes += 1
                    conn.sendall(b"hello\n")
                    while True:
                        data = conn.recv(100)
                        if not data:
                            break
                        self.received += data
            except (OSError, ssl.SSLError) as e:
                self.errors.append(str(e))
            finally:
                raw.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)
    p = {"dir": d, "ca": certs.make_ca(d), "rogue_ca": certs.make_ca(d, name="Rogue", stem="rogue"),
         "server": certs.make_server(d), "rsa": certs.make_server(d, name="rsa", rsa=True),
         "expired": certs.make_server(d, name="expired",
                                      not_before=now - datetime.timedelta(days=400),
                                      not_after=now - datetime.timedelta(days=30)),
         "wrong_host": certs.make_server(d, name="wronghost", dns=["elsewhere.example"])}
    return p


def tls_run(tmp_path, issued, pki, cfg, options=None, server_kw=None):
    with TlsServer(issued, **(server_kw or {})) as server:
        cfg = dict(cfg, port=server.port)
        files = {"t.json": json.dumps(cfg).encode(),
                 "ca.der": pki["ca"].cert_der.read_bytes(),
                 "rogue.der": pki["rogue_ca"].cert_der.read_bytes(),
                 "two.pem": pki["ca"].cert_pem.read_bytes() + pki["rogue_ca"].cert_pem.read_bytes()}
        rc, lines, err = run_board(tmp_path, CLIENT, wifi=True, files=files,
                                   options=dict({"clock": "host"}, **(options or {})))
    assert rc == 0, err
    return lines[0], server


def debug_log(tmp_path):
    path = tmp_path / "flash.state" / "sim_debug.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pinned_root_verifies_and_data_flows(tmp_path, pki):
    r, server = tls_run(tmp_path, pki["server"], pki, {"ca": "ca.der", "mode": 2, "host": "localhost"})
    assert r["ok"] and r["line"] == "hello\n" and r["verify_mode"] == 2
    assert r["peer_len"] == len(pki["server"].cert_der.read_bytes())
    assert server.received == b"app-data"               # write(buf, n) wrote n bytes
    assert r["verify_mode_default"] == 0                 # ssl.py sets CERT_NONE


def test_rogue_ca_fails_generically_and_server_sees_no_app_bytes(tmp_path, pki):
    r, server = tls_run(tmp_path, pki["server"], pki, {"ca": "rogue.der", "mode": 2, "host": "localhost"})
    assert r["ok"] is False and r["errno"] == -9984
    assert r["msg"] == "MBEDTLS_ERR_X509_CERT_VERIFY_FAILED"
    assert server.received == b"" and server.handshakes == 0
    assert [e["reason"] for e in debug_log(tmp_path) if e["kind"] == "tls_verify_failed"] == ["untrusted"]


@pytest.mark.parametrize("issued, clock, reason", [
    ("expired", "host", "expired"),
    ("server", UNIX_2026 + 3650 * DAY_S, "expired"),     # board far in the future
    ("server", "unset", "not_yet_valid"),                # board at 2000-01-01
])
def test_validity_is_judged_by_the_board_clock(tmp_path, pki, issued, clock, reason):
    r, server = tls_run(tmp_path, pki[issued], pki, {"ca": "ca.der", "mode": 2, "host": "localhost"},
                        options={"clock": clock})
    assert r["ok"] is False and r["errno"] == -9984
    assert "valid" not in r["msg"] and "expired" not in r["msg"]   # no reason leaks
    assert server.received == b""
    assert [e["reason"] for e in debug_log(tmp_path) if e["kind"] == "tls_verify_failed"] == [reason]


def test_hostname_mismatch_fails_verification(tmp_path, pki):
    r, server = tls_run(tmp_path, pki["wrong_host"], pki, {"ca": "ca.der", "mode": 2, "host": "localhost"})
    assert r["errno"] == -9984 and server.received == b""
    assert [e["reason"] for e in debug_log(tmp_path) if e["kind"] == "tls_verify_failed"] == ["hostname_mismatch"]


def test_cert_none_accepts_any_server(tmp_path, pki):
    r, server = tls_run(tmp_path, pki["expired"], pki, {"host": "localhost"}, options={"clock": "unset"})
    assert r["ok"] and r["verify_mode"] == 0 and server.received == b"app-data"


def test_cert_required_without_hostname_is_a_value_error(tmp_path, pki):
    r, _ = tls_run(tmp_path, pki["server"], pki, {"ca": "ca.der", "mode": 2})
    assert r["value_error"] == "CERT_REQUIRED requires server_hostname"


def test_valueerror_style_reports_mbedtls_verify_info(tmp_path, pki):
    r, _ = tls_run(tmp_path, pki["expired"], pki, {"ca": "ca.der", "mode": 2, "host": "localhost"},
                   options={"tls_verify_error": "valueerror"})
    assert "expired" in r["value_error"]


@pytest.mark.parametrize("mpy, ok", [("1.24", False), ("1.29", True)])
def test_multi_pem_cadata_depends_on_mpy_version(tmp_path, pki, mpy, ok):
    r, _ = tls_run(tmp_path, pki["server"], pki, {"ca": "two.pem", "mode": 2, "host": "localhost"},
                   options={"mpy": mpy})
    if ok:
        assert r["ok"]
    else:
        assert r["value_error"] == "invalid cert"


def test_invalid_key_and_cert_are_value_errors(tmp_path, pki):
    rc, lines, err = run_board(tmp_path, """
        import json, ssl
        out = []
        for cert, key in ((b"junk", b"junk"), (b"junk", open("k.der", "rb").read())):
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
            except ValueError as e:
                out.append(str(e))
        print(json.dumps({"errors": out}))
    """, files={"k.der": certs._key_der(pki["server"].key)})
    assert rc == 0, err
    assert lines[0]["errors"] == ["invalid key", "invalid cert"]


def test_esp8266_cannot_verify_and_reads_back_cert_none(tmp_path, pki):
    rc, lines, err = run_board(tmp_path, """
        import json, ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = 2
        try:
            ctx.load_verify_locations(cadata=b"x")
            lvl = "ok"
        except AttributeError:
            lvl = "AttributeError"
        import tls
        print(json.dumps({"mode": ctx.verify_mode, "required": hasattr(ssl, "CERT_REQUIRED"),
                          "native_lvl": hasattr(tls.SSLContext(0), "load_verify_locations"),
                          "lvl": lvl}))
    """, options={"port": "esp8266"})
    assert rc == 0, err
    assert lines[0] == {"mode": 0, "required": False, "native_lvl": False, "lvl": "AttributeError"}


def test_esp8266_handshake_fails_with_ecdsa_server(tmp_path, pki):
    r, server = tls_run(tmp_path, pki["server"], pki, {"host": "localhost"},
                        options={"port": "esp8266"})
    assert r["ok"] is False and r["errno"] < 0 and server.received == b""


def test_esp8266_works_with_rsa_server_and_ignores_bad_cert_dates(tmp_path, pki):
    r, server = tls_run(tmp_path, pki["rsa"], pki, {"host": "localhost"},
                        options={"port": "esp8266", "clock": "unset"},
                        server_kw={"ciphers": "AES128-SHA256:AES128-SHA"})
    assert r["ok"] and r["line"] == "hello\n" and "peer_len" not in r
    assert server.received == b"app-data"
    assert [e["version"] for e in debug_log(tmp_path) if e["kind"] == "tls_handshake_ok"] == ["TLSv1.2"]


def test_handshake_obeys_socket_timeout(tmp_path, pki):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        rc, lines, err = run_board(tmp_path, CLIENT, wifi=True, files={
            "t.json": json.dumps({"port": silent.getsockname()[1], "timeout": 0.3,
                                  "host": "localhost"}).encode()})
    finally:
        silent.close()
    assert rc == 0, err
    assert lines[0]["ok"] is False and lines[0]["errno"] == 110
