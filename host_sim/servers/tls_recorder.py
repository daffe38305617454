"""A TLS server that records what clients send and answers nothing: the rogue peer.

Tests point boards at it to prove what a board does *not* do: a server whose certificate
chains to another CA must never see an MQTT CONNECT byte; a server that completes TLS and
then stays silent must make the board time out, not hang. With ``speak_tls=False`` it accepts
TCP and never answers the ClientHello (a handshake that never finishes).

Example::

    with RecordingTlsServer(rogue_chain_pem, rogue_key_pem) as rogue:
        ...  # point a board at 127.0.0.1:rogue.port
        assert rogue.received == b""
"""

import socket
import ssl
import threading

from host_sim.servers.mosquitto import free_port


class RecordingTlsServer:
    def __init__(self, chain_pem, key_pem, speak_tls=True, port=None):
        self.port = port or free_port()
        self.speak_tls = speak_tls
        self.received = b""
        self.connections = 0
        self.handshakes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(chain_pem), str(key_pem))
        # Ask for the client's certificate as Mosquitto does, but accept any: we only watch.
        self._ctx.verify_mode = ssl.CERT_NONE
        self._listener = None
        self._threads = []

    def start(self):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn):
        conn.settimeout(0.2)
        try:
            if not self.speak_tls:
                while not self._stop.is_set():
                    try:
                        if not conn.recv(4096):
                            return
                    except socket.timeout:
                        continue
                return
            conn.settimeout(5)
            try:
                tls = self._ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate: exactly what tests look for
            with self._lock:
                self.handshakes += 1
            tls.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    data = tls.recv(4096)
                except socket.timeout:
                    continue
                except (ssl.SSLError, OSError):
                    return
                if not data:
                    return
                with self._lock:
                    self.received += data
        finally:
            conn.close()

    def stop(self):
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
