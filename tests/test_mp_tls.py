"""Every TLS refusal on real Mbed TLS (the MicroPython unix port's ssl): no application byte
reaches a peer the board must not trust, and each refusal has its own named error kind.

Certificate dates are judged by the host clock here (Mbed TLS reads it on this port), so the
expired and not-yet-valid certificates are dated relative to now (conftest's Pki).
"""
import types

import pytest

from host_sim.servers.tls_recorder import RecordingTlsServer
from mp_fixtures import mp_launch  # noqa: F401  (fixture)
from tools import certs

FAST = {"timeouts_ms.io": 1500, "timeouts_ms.handshake": 3000, "timeouts_ms.connect": 2000,
        "backoff.min_ms": 100, "backoff.max_ms": 400}


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A self-signed certificate for "localhost": no chain to the pinned root at all."""
    ca = certs.make_ca(tmp_path_factory.mktemp("selfsigned"), name="localhost", stem="self")
    return types.SimpleNamespace(chain_pem=ca.cert_pem, key_pem=ca.key_pem)


@pytest.mark.parametrize("server, kind", [
    ("rogue", "unknown_ca"),
    ("self_signed", "unknown_ca"),
    ("wrong_host", "hostname_mismatch"),
    ("expired", "cert_expired"),
    ("future", "cert_not_yet_valid"),
])
def test_each_refusal_sends_no_application_byte_and_is_named(mp_launch, pki, self_signed,
                                                             server, kind):
    issued = self_signed if server == "self_signed" else getattr(pki, server)
    with RecordingTlsServer(issued.chain_pem, issued.key_pem) as peer:
        config = dict(FAST, transport="jsonl", jsonl={"host": "localhost", "port": peer.port})
        board = mp_launch("mp-" + server.replace("_", "-"), 1, config=config)
        error = board.wait_for("error", timeout=30, kind=kind)
        board.wait_for("backoff", timeout=10)
        board.stop()
        assert peer.received == b"", "the peer received application data"
    assert set(board.errors()) <= {kind, "time_sync"}
    assert "localhost" in error["detail"] and pki.ca.sha256 in error["detail"]
    assert not board.of("tls_ok")


def test_server_that_never_answers_the_hello_times_out_by_the_handshake_deadline(mp_launch,
                                                                                pki):
    with RecordingTlsServer(pki.server.chain_pem, pki.server.key_pem, speak_tls=False) as peer:
        config = dict(FAST, transport="jsonl", jsonl={"host": "localhost", "port": peer.port})
        board = mp_launch("mp-silent-hello", 1, config=config)
        board.wait_for("error", timeout=30, kind="handshake_timeout")
        board.stop()
        assert peer.connections >= 1 and peer.received == b""
