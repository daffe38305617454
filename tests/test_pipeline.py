"""Pipelined QoS 1 on the real simulated board, seen from the broker's side (loopback).

A window broker (tests/hostile_broker.py's TLS and recording, its own play) holds PUBACKs
back until ``hold`` readings are outstanding (or the board goes quiet), then sends them in
reverse order: the board must keep at most ``mqtt.inflight`` PUBLISHes unacknowledged, match
PUBACKs that arrive out of order, and let readings leave its outbox strictly in order, each
published once. The retained status and the first reading are in flight together, and the
first reading is sampled before the handshake.
"""

import json
import socket
import time

import pytest

from hostile_broker import CONNECT, DISCONNECT, PINGREQ, PUBLISH, HostileBroker, _Closed
from mp_fixtures import mp_launch  # noqa: F401  (fixture: the real MicroPython runtime)
from host_sim.servers.mosquitto import free_port

INFLIGHT = 4
FAST = {"timeouts_ms.io": 3000, "timeouts_ms.connect": 1000, "timeouts_ms.handshake": 3000,
        "backoff.min_ms": 100, "backoff.max_ms": 300,
        "sample.interval_ms": 50, "sample.window_ms": 25, "sample.samples": 16,
        "mqtt.inflight": INFLIGHT}


def seq_of(payload):
    return json.loads(payload)["seq"]


class WindowBroker(HostileBroker):
    """Behaviours: ``reverse`` (hold PUBACKs until ``hold`` PUBLISHes are outstanding or
    0.2 s pass without one, then acknowledge them newest first) and ``status_last`` (keep the
    status PUBACK until a reading has arrived, at most 3 s; then as ``normal``)."""

    def __init__(self, pki, script, port=None, hold=INFLIGHT):
        HostileBroker.__init__(self, pki, script, port)
        self.hold = hold
        self.max_outstanding = 0      # PUBLISHes sent to us and not yet acknowledged, at most
        self.ack_order = []           # packet ids in the order we acknowledged them
        self.reading_before_status_ack = None

    def _next(self, tls, record, wait_s):
        # A packet, or None when none begins within wait_s.
        tls.settimeout(wait_s)
        try:
            first = tls.recv(1)
        except socket.timeout:
            return None
        finally:
            tls.settimeout(0.5)
        if not first:
            raise _Closed()
        return self._packet_after(tls, record, first[0])

    def _ack(self, tls, record, ids):
        for packet_id in ids:
            tls.sendall(bytes([0x40, 2, packet_id >> 8, packet_id & 0xFF]))
            record.pubacks_sent.append(packet_id)
            self.ack_order.append(packet_id)

    def _play(self, tls, record):
        connect = self._packet(tls, record)
        if connect[1] != CONNECT:
            return
        tls.sendall(b"\x20\x02\x00\x00")
        outstanding = []
        status_id = None
        status_since = None
        while not self._stop.is_set():
            packet = self._next(tls, record, 0.2)
            if packet is None:
                if record.behaviour == "reverse" and outstanding:
                    self._ack(tls, record, outstanding[::-1])
                    outstanding = []
                if status_id is not None and time.monotonic() - status_since > 3:
                    self.reading_before_status_ack = False
                    self._ack(tls, record, [status_id])
                    status_id = None
                continue
            kind, flags, packet_id = packet[1], packet[2], packet[3]
            if kind == DISCONNECT:
                self._after_disconnect(tls, record)
                return
            if kind == PINGREQ:
                tls.sendall(b"\xd0\x00")
            if kind != PUBLISH:
                continue
            if record.behaviour == "status_last":
                if flags & 1 and self.reading_before_status_ack is None:
                    status_id, status_since = packet_id, time.monotonic()
                    continue
                if status_id is not None:
                    self.reading_before_status_ack = True
                    self._ack(tls, record, [status_id])
                    status_id = None
                self._ack(tls, record, [packet_id])
                continue
            outstanding.append(packet_id)
            self.max_outstanding = max(self.max_outstanding, len(outstanding))
            if len(outstanding) >= self.hold:
                self._ack(tls, record, outstanding[::-1])
                outstanding = []


def wait_stored(board, count, timeout=30):
    deadline = time.monotonic() + timeout
    while len(board.of("stored")) < count:
        assert time.monotonic() < deadline, "board stored fewer than %d readings" % count
        time.sleep(0.05)


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_a_backlog_goes_out_a_window_at_a_time_and_leaves_the_outbox_in_order(
        runtime, launch, mp_launch, pki):
    port = free_port()
    start = mp_launch if runtime == "micropython" else launch
    board = start("pipe-window", port, config=dict(FAST, **{"run.max_readings": 40}))
    wait_stored(board, 25)  # nothing listens yet: the readings wait in the outbox
    with WindowBroker(pki, "reverse", port=port) as broker:
        board.wait_for("halted", timeout=60, reason="done")
    acked = [e["seq"] for e in board.of("acked")]
    assert acked == list(range(1, 41)), acked  # in order, each once
    seqs = [seq_of(p[3]) for p in broker.published()]  # readings (the status is retained)
    assert sorted(seqs) == list(range(1, 41)) and len(set(seqs)) == len(seqs), seqs
    # The window was used (PUBLISHes waited together) and never exceeded; the PUBACKs of
    # each window came newest first, so the board matched them out of order.
    assert broker.max_outstanding == INFLIGHT
    assert len(broker.connections) == 1
    assert not {"protocol", "ack_timeout"} & set(board.errors())


def test_window_of_one_sends_one_publish_per_puback(launch, pki):
    port = free_port()
    board = launch("pipe-one", port, config=dict(FAST, **{"run.max_readings": 10,
                                                          "mqtt.inflight": 1}))
    wait_stored(board, 8)
    with WindowBroker(pki, "reverse", port=port, hold=2) as broker:
        board.wait_for("halted", timeout=60, reason="done")
    assert [e["seq"] for e in board.of("acked")] == list(range(1, 11))
    assert broker.max_outstanding == 1


def test_status_and_first_reading_are_in_flight_together(launch, pki):
    with WindowBroker(pki, "status_last") as broker:
        board = launch("pipe-status", broker.port, config=dict(FAST, **{"run.max_readings": 3}))
        board.wait_for("halted", timeout=60, reason="done")
    # The broker kept the status PUBACK back; the first reading came anyway.
    assert broker.reading_before_status_ack is True
    assert [e["seq"] for e in board.of("acked")] == [1, 2, 3]
    assert board.of("status"), "the status was acknowledged in the end"
    # The first reading was sampled before the connection was opened, not after CONNACK.
    kinds = [e["event"] for e in board.events if e.get("event") in ("stored", "tls_ok")]
    assert kinds[0] == "stored", kinds


@pytest.mark.parametrize("value", [0, 33, "8"])
def test_inflight_outside_1_to_32_is_a_config_error_naming_the_field(launch, value):
    board = launch("pipe-cfg", free_port(), config={"mqtt.inflight": value})
    error = board.wait_for("error", timeout=30, kind="config")
    assert "mqtt.inflight" in error["detail"]
    board.wait_for("halted", timeout=10, reason="config")
