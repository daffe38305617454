"""A scripted, misbehaving MQTT broker over TLS (the test PKI, client certificate required),
and a listener that never accepts: peers for tests/test_mqtt_hostile.py.

Each connection plays one behaviour, chosen by its index (``script(index) -> name``):

- ``normal``: CONNACK, a PUBACK for each PUBLISH, PINGRESP for PINGREQ; closes on DISCONNECT
- ``refuse``: CONNACK with return code 5 (not authorised)
- ``stall``: reads CONNECT and says nothing
- ``drop``: CONNACK, then closes the connection
- ``withhold``: acknowledges the status PUBLISH (retained) but never a reading
- ``wrong_id``: answers a reading with the PUBACK for another packet id
- ``duplicate``: sends every PUBACK twice
- ``long_length``: answers a reading with a remaining length of 5 bytes
- ``huge_length``: answers a reading with a PUBLISH announcing 268,435,455 bytes
- ``garbage``: answers a reading with bytes that are no MQTT packet
- ``unsolicited``: after CONNACK delivers a QoS 1 PUBLISH the client never subscribed to
- ``no_pingresp``: ``normal``, but never answers PINGREQ
- ``chatty``: ``normal``, plus a PINGRESP nobody asked for right after each PUBACK, and
  reads slowly (what is unread on the board at close would make its kernel send RST)

Everything is recorded per connection: when it was accepted, each packet the client sent
(type, flags, packet id, payload), the PUBACK ids we sent, and how it ended (``eof`` when
the client closed cleanly, ``reset`` for a RST, ``server`` when we closed first).

Example::

    with HostileBroker(pki, lambda i: "drop") as broker:
        board = launch("b1", broker.port)
        ...
        assert len(broker.connections) < 20
"""

import socket
import ssl
import threading
import time

from host_sim.servers.mosquitto import free_port

CONNECT, PUBLISH, PUBACK, PINGREQ, DISCONNECT = 1, 3, 4, 12, 14
_IO_S = 10.0  # the broker's own patience; tests are bounded by the board's deadlines


class Connection:
    def __init__(self, index):
        self.index = index
        self.accepted = time.monotonic()
        self.behaviour = None
        self.packets = []        # (monotonic time, type, flags, packet id, payload)
        self.pubacks_sent = []   # packet ids we acknowledged
        self.pubacks_from_client = []
        self.end = None

    def of(self, kind):
        return [p for p in self.packets if p[1] == kind]


class _Closed(Exception):
    pass


class HostileBroker:
    def __init__(self, pki, script, port=None):
        self.port = port or free_port()
        self.script = script if callable(script) else (lambda index: script)
        self.connections = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(pki.server.chain_pem), str(pki.server.key_pem))
        self._ctx.load_verify_locations(cafile=str(pki.ca.cert_pem))
        self._ctx.verify_mode = ssl.CERT_REQUIRED  # as Mosquitto: a device certificate
        self._listener = None
        self._threads = []

    def __enter__(self):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def published(self, retained=False):
        """Every PUBLISH the board sent, over all connections: (connection, flags, id, payload)."""
        with self._lock:
            conns = list(self.connections)
        return [(c, p[2], p[3], p[4]) for c in conns for p in c.of(PUBLISH)
                if bool(p[2] & 1) == retained]

    def acked_payloads(self):
        """Payloads of the readings this broker acknowledged with their own packet id."""
        out = []
        with self._lock:
            conns = list(self.connections)
        for c in conns:
            ids = set(c.pubacks_sent)
            out += [p[4] for p in c.of(PUBLISH) if p[3] in ids and not p[2] & 1]
        return out

    # --- serving ----------------------------------------------------------------------
    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            with self._lock:
                record = Connection(len(self.connections))
                self.connections.append(record)
            record.behaviour = self.script(record.index)
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn, record):
        conn.settimeout(_IO_S)
        try:
            tls = self._ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            record.end = "handshake_failed"
            return
        tls.settimeout(0.5)  # reads wake up twice a second to notice the fixture stopping
        try:
            self._play(tls, record)
            if record.end is None:
                record.end = "server"
        except _Closed:
            record.end = "eof"
        except ConnectionResetError:
            record.end = "reset"
        except (ssl.SSLError, OSError) as exc:
            record.end = "reset" if "reset" in str(exc).lower() else "error: %s" % exc
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def _play(self, tls, record):
        behaviour = record.behaviour
        connect = self._packet(tls, record)
        if connect[1] != CONNECT:
            return
        if behaviour == "stall":
            while not self._stop.is_set():
                self._packet(tls, record)  # until the board gives up and closes
        if behaviour == "refuse":
            tls.sendall(b"\x20\x02\x00\x05")
            return
        tls.sendall(b"\x20\x02\x00\x00")
        if behaviour == "drop":
            return
        if behaviour == "unsolicited":
            tls.sendall(b"\x32\x0d\x00\x07foreign\x7f\x01hi")  # QoS 1, id 0x7f01
        while not self._stop.is_set():
            if behaviour == "chatty":
                time.sleep(0.3)  # a slow reader: the board's close comes meanwhile
            packet = self._packet(tls, record)
            kind, flags, packet_id = packet[1], packet[2], packet[3]
            if kind == DISCONNECT:
                self._after_disconnect(tls, record)
                return
            if kind == PINGREQ and behaviour != "no_pingresp":
                tls.sendall(b"\xd0\x00")
            if kind == PUBACK:
                record.pubacks_from_client.append(packet_id)
            if kind != PUBLISH:
                continue
            reading = not flags & 1  # the status is the retained one
            if reading and behaviour == "withhold":
                continue
            if reading and behaviour == "wrong_id":
                tls.sendall(bytes([0x40, 2, (packet_id + 100) >> 8 & 0xFF,
                                   (packet_id + 100) & 0xFF]))
                continue
            if reading and behaviour == "long_length":
                tls.sendall(b"\x40\xff\xff\xff\xff\x7f")
                continue
            if reading and behaviour == "huge_length":
                tls.sendall(b"\x30\xff\xff\xff\x7f" + b"\x00" * 64)
                continue
            if reading and behaviour == "garbage":
                tls.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                continue
            puback = bytes([0x40, 2, packet_id >> 8, packet_id & 0xFF])
            record.pubacks_sent.append(packet_id)
            tls.sendall(puback * (2 if reading and behaviour == "duplicate" else 1))
            if behaviour == "chatty":
                tls.sendall(b"\xd0\x00")

    def _after_disconnect(self, tls, record):
        # As Mosquitto does: end our side, then see how the client's side ends: FIN (its
        # receive buffer was empty) or RST (it closed with bytes unread).
        tls.shutdown(socket.SHUT_WR)  # the TLS object is dropped: recv reads the raw socket
        tls.settimeout(3.0)
        try:
            while tls.recv(64):
                pass
            record.end = "eof"
        except ConnectionResetError:
            record.end = "reset"
        except socket.timeout:
            record.end = "client never closed"

    def _read(self, tls, n):
        data = b""
        while len(data) < n:
            try:
                chunk = tls.recv(n - len(data))
            except socket.timeout:
                if self._stop.is_set():
                    raise _Closed()
                continue
            except ssl.SSLZeroReturnError:
                raise _Closed()
            except ssl.SSLEOFError:
                raise _Closed()
            if not chunk:
                raise _Closed()
            data += chunk
        return data

    def _packet(self, tls, record):
        return self._packet_after(tls, record, self._read(tls, 1)[0])

    def _packet_after(self, tls, record, first):
        # The rest of a packet whose first byte (type and flags) has been read.
        length, shift = 0, 0
        for _ in range(4):
            byte = self._read(tls, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = self._read(tls, length) if length else b""
        kind, flags, packet_id, payload = first >> 4, first & 15, 0, body
        if kind == PUBLISH:
            topic_end = 2 + (body[0] << 8 | body[1])
            if flags & 6:
                packet_id = body[topic_end] << 8 | body[topic_end + 1]
                payload = body[topic_end + 2:]
            else:
                payload = body[topic_end:]
        elif kind == PUBACK:
            packet_id = body[0] << 8 | body[1]
        record.packets.append((time.monotonic(), kind, flags, packet_id, payload))
        return record.packets[-1]


class NeverAccepts:
    """A loopback listener whose accept queue is full: SYNs to it go unanswered, so a
    connect() waits until its own deadline (what a blackholed broker address does)."""

    def __enter__(self):
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        self._fillers = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self._fillers.append(s)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", self.port))
            raise RuntimeError("the accept queue did not fill: connects still succeed")
        except socket.timeout:
            pass
        finally:
            probe.close()
        return self

    def __exit__(self, *exc):
        for s in self._fillers:
            s.close()
        self._listener.close()
