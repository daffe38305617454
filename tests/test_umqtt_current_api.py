"""The adapter gives pinned, host-name-checked TLS with the *current* umqtt.simple API too.

PyPI carries only umqtt.simple 1.3.4 (``ssl=True, ssl_params={...}``, ``ussl.wrap_socket``);
``mip install umqtt.simple`` puts the current micropython-lib version on a board, which takes
``ssl=<SSLContext>`` and calls ``ssl.wrap_socket(sock, server_hostname=self.server)``. That
version cannot be fetched here, so this test derives it from the vendored 1.3.4 by applying
exactly the upstream change to TLS handling (each edit must match once, or the test fails).
"""

from pathlib import Path

from host_sim.servers.tls_recorder import RecordingTlsServer

ROOT = Path(__file__).resolve().parent.parent

LEGACY = ROOT / "firmware" / "lib" / "umqtt" / "simple.py"

UPSTREAM_TLS_CHANGE = [
    ("ssl=False, ssl_params={}):", "ssl=None):"),
    ("        self.ssl_params = ssl_params\n", ""),
    ("            import ussl\n"
     "            self.sock = ussl.wrap_socket(self.sock, **self.ssl_params)\n",
     "            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)\n"),
]


def current_umqtt_source():
    source = LEGACY.read_text()
    for old, new in UPSTREAM_TLS_CHANGE:
        assert source.count(old) == 1, "vendored umqtt.simple changed: %r not found once" % old
        source = source.replace(old, new)
    return source


def test_current_api_connects_verified_and_delivers(launch, broker):
    board = launch("board-current", broker.port, config={"run.max_readings": 2},
                   umqtt_source=current_umqtt_source())
    connected = board.wait_for("mqtt_connected", timeout=30)
    assert connected["umqtt_api"] == "current"
    assert board.wait_for("tls_ok")["verified"] is True
    board.wait_for("halted", timeout=30, reason="done")


def test_current_api_still_refuses_a_rogue_ca(launch, pki):
    with RecordingTlsServer(pki.rogue.chain_pem, pki.rogue.key_pem) as rogue:
        board = launch("board-current-rogue", rogue.port, umqtt_source=current_umqtt_source(),
                       config={"timeouts_ms.io": 1500, "backoff.min_ms": 100})
        board.wait_for("error", timeout=30, kind="unknown_ca")
        board.stop()
        assert rogue.received == b""


def test_current_api_handshake_has_its_own_deadline(launch, pki):
    with RecordingTlsServer(pki.server.chain_pem, pki.server.key_pem, speak_tls=False) as mute:
        board = launch("board-current-mute", mute.port, umqtt_source=current_umqtt_source(),
                       config={"timeouts_ms.handshake": 1000, "backoff.min_ms": 100})
        started = board.wait_for("state", timeout=30, state="connecting")
        error = board.wait_for("error", timeout=30, kind="handshake_timeout")
        assert error["t_ms"] - started["t_ms"] < 1000 + 1500
        assert "1000 ms" in error["detail"]
