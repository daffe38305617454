"""What a board negotiates, seen from the server: the CPython simulator offers what
MicroPython's Mbed TLS offers, so both runtimes end in the same TLS 1.2 session (measured on
the unix port: ECDHE-ECDSA-AES256-GCM-SHA384 on secp256r1), never OpenSSL's TLS 1.3."""

import select
import socket
import threading
import time

import pytest
from OpenSSL import SSL, crypto

from mp_fixtures import mp_launch  # noqa: F401  (fixture: the real MicroPython runtime)


class NegotiationRecorder:
    """A TLS server (the test PKI's broker certificate, OpenSSL defaults: TLS 1.3 allowed,
    post-quantum groups first) that records each client's negotiated session, then closes."""

    def __init__(self, pki):
        self.ctx = SSL.Context(SSL.TLS_METHOD)
        self.ctx.use_certificate_chain_file(str(pki.server.chain_pem))
        self.ctx.use_privatekey_file(str(pki.server.key_pem))
        self.sessions = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()

    def _handshake(self, raw, conn):
        raw.setblocking(False)
        deadline = time.monotonic() + 5
        while True:
            try:
                return conn.do_handshake()
            except SSL.WantReadError:
                if time.monotonic() > deadline:
                    raise OSError("client stalled in the handshake")
                select.select([raw], [], [], 0.1)

    def _serve(self):
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                continue
            conn = SSL.Connection(self.ctx, raw)
            conn.set_accept_state()
            try:
                self._handshake(raw, conn)
                self.sessions.append((conn.get_protocol_version_name(), conn.get_cipher_name(),
                                      conn.get_group_name()))
            except (SSL.Error, OSError) as exc:
                self.sessions.append(("failed", str(exc), None))
            raw.close()


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_board_negotiates_tls12_ecdhe_ecdsa_aes256_gcm_on_p256(runtime, launch, mp_launch,
                                                               pki):
    start = mp_launch if runtime == "micropython" else launch
    with NegotiationRecorder(pki) as server:
        board = start("tls-" + runtime, server.port,
                      config={"timeouts_ms.io": 500, "backoff.min_ms": 100,
                              "backoff.max_ms": 200})
        deadline = time.monotonic() + 30
        while not server.sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        board.stop()
    assert server.sessions, "the board never completed a handshake"
    assert server.sessions[0] == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", "secp256r1")
