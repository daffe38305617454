"""host_sim/tun_relay.py without root: the delay line (timer heap order, delay, queue bound,
loss), the packet parser, the flight accounting the latency bench counts round trips with,
and the relay thread itself over datagram socketpairs standing in for the two TUN devices.
The namespace harness proper needs root and /dev/net/tun: it runs in `make bench`
(tests/bench/bench_latency.py --part netns)."""

import os
import socket
import struct
import sys
import time
from pathlib import Path

from hypothesis import given, settings, strategies as st

from host_sim.tun_relay import (DOWN, UP, DelayLine, FlightLog, RelayError, TunRelay,
                                 parse_ipv4)

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
import bench_latency  # noqa: E402

BOARD, SERVER = "10.77.0.1", "10.77.0.2"
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def _ip(src, dst, proto, body):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + body


def tcp(way, flags, payload=b"", board_port=40000, server_port=8883):
    src, dst = (BOARD, SERVER) if way == UP else (SERVER, BOARD)
    sport, dport = (board_port, server_port) if way == UP else (server_port, board_port)
    head = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 65535, 0, 0)
    return _ip(src, dst, 6, head + payload)


def udp(way, payload, board_port=40001, server_port=123):
    src, dst = (BOARD, SERVER) if way == UP else (SERVER, BOARD)
    sport, dport = (board_port, server_port) if way == UP else (server_port, board_port)
    return _ip(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


# ---------------------------------------------------------------- delay line

def test_due_order_is_time_order_then_arrival_order_across_directions():
    line = DelayLine(0.05)
    line.push(b"late", UP, now=2.0)
    line.push(b"first", DOWN, now=1.0)
    line.push(b"tie-1", UP, now=1.5)
    line.push(b"tie-2", DOWN, now=1.5)
    assert line.due(1.0499) == []
    assert [p for _, _, p, _ in line.due(10)] == [b"first", b"tie-1", b"tie-2", b"late"]
    assert len(line) == 0 and line.passed == 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.sampled_from([UP, DOWN])), max_size=60),
       st.floats(0, 0.5), st.floats(0, 6))
def test_nothing_leaves_before_its_delay_and_everything_due_leaves(pushes, delay, now):
    line = DelayLine(delay, max_packets=1000)
    for i, (t, way) in enumerate(sorted(pushes)):
        assert line.push(i, way, t, tag=t) is None
    out = line.due(now)
    assert all(tag + delay == due <= now for due, _, _, tag in out)
    assert [d for d, _, _, _ in out] == sorted(d for d, _, _, _ in out)
    # What is left is exactly what is not yet due.
    assert len(out) + len(line) == len(pushes)
    assert line.next_due() is None or line.next_due() > now


def test_queue_is_bounded_and_frees_as_packets_leave():
    line = DelayLine(0.05, max_packets=3)
    assert [line.push(b"x", UP, 0.0) for _ in range(4)] == [None, None, None, "full"]
    assert line.dropped == {"loss": 0, "full": 1} and len(line) == 3
    assert len(line.due(0.05)) == 3
    assert line.push(b"y", DOWN, 0.06) is None


def test_loss_drops_about_the_asked_share_and_is_repeatable():
    line = DelayLine(0, loss=0.25, seed=7)
    verdicts = [line.push(b"p", UP, 0) for _ in range(4000)]
    assert 800 < verdicts.count("loss") < 1200 and line.dropped["loss"] == verdicts.count("loss")
    again = DelayLine(0, loss=0.25, seed=7)
    assert [again.push(b"p", UP, 0) for _ in range(4000)] == verdicts
    assert DelayLine(0, loss=0).push(b"p", UP, 0) is None


def test_bad_settings_are_refused():
    for args in ((-1,), (0.05, 1.0), (0.05, 0, 0)):
        try:
            DelayLine(*args)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (args,))


# ---------------------------------------------------------------- parsing and flights

def test_parse_tcp_udp_and_not_ipv4():
    p = parse_ipv4(tcp(UP, PSH | ACK, b"\x16\x03\x01hello"))
    assert p[:8] == (6, BOARD, 40000, SERVER, 8883, PSH | ACK, 8, 0x16)
    assert p[8] == b"\x16\x03\x01hello"
    assert parse_ipv4(udp(DOWN, b"\x1c" + bytes(47)))[:8] == (17, SERVER, 123, BOARD, 40001,
                                                             0, 48, 0x1C)
    assert parse_ipv4(b"\x60" + bytes(47)) is None        # IPv6
    assert parse_ipv4(b"\x45\x00") is None                 # truncated


def _log(packets, t0=100.0, delay=0.05, undelivered=()):
    log = FlightLog()
    for i, pkt in enumerate(packets):
        index = log.note(t0 + i * 0.01, UP if parse_ipv4(pkt)[1] == BOARD else DOWN, pkt)
        if i not in undelivered:
            log.note_delivered(index, t0 + i * 0.01 + delay)
    return log


def test_flights_change_at_each_direction_change_and_pure_acks_are_none():
    log = _log([
        tcp(UP, SYN), tcp(DOWN, SYN | ACK), tcp(UP, ACK),        # handshake; ACK is no flight
        tcp(UP, PSH | ACK, b"\x16" * 100),                       # ClientHello
        tcp(DOWN, ACK),                                          # pure ACK: still the board's turn
        tcp(DOWN, PSH | ACK, b"\x16" * 1400), tcp(DOWN, PSH | ACK, b"\x16" * 300),
        tcp(UP, PSH | ACK, b"\x17" * 50), tcp(DOWN, FIN | ACK),
    ])
    flow = log.flows()[0]
    got = [(f.way, f.packets, f.payload) for f in log.flights(flow)]
    assert got == [(UP, 1, 0), (DOWN, 1, 0), (UP, 1, 100), (DOWN, 2, 1700), (UP, 1, 50),
                   (DOWN, 1, 0)]
    fl = log.flights(flow)
    assert fl[3].firsts == (0x16, 0x16) and abs(fl[3].t_last_out - (100.06 + 0.05)) < 1e-9


def test_a_packet_never_delivered_is_not_in_a_flight_and_flows_are_kept_apart():
    log = _log([udp(UP, b"\x1b" + bytes(47)), tcp(UP, SYN), udp(DOWN, b"\x1c" + bytes(47)),
                tcp(DOWN, SYN | ACK), tcp(UP, PSH | ACK, b"x" * 10)], undelivered=(4,))
    ntp, mqtt = log.flows(proto=17), log.flows(proto=6)
    assert [(f.way, f.payload) for f in log.flights(ntp[0])] == [(UP, 48), (DOWN, 48)]
    assert [(f.way, f.payload) for f in log.flights(mqtt[0])] == [(UP, 0), (DOWN, 0)]


def test_opened_flows_skip_a_connection_from_before_the_log():
    log = _log([tcp(DOWN, ACK, board_port=40000),              # straggler of the last run
                tcp(UP, SYN, board_port=40002), tcp(DOWN, SYN | ACK, board_port=40002)])
    assert [f[2] for f in log.flows(proto=6)] == [40000, 40002]
    assert [f[2] for f in log.flows(proto=6, opened=True)] == [40002]


def test_bench_labels_tls12_round_trips_from_flights():
    """The bench's step labels on a TLS 1.2 + MQTT exchange: TCP 1, TLS 2, CONNECT 1, then
    the PUBACK flight the board printed "acked" after; a later flight is not counted."""
    exchange = [tcp(UP, SYN), tcp(DOWN, SYN | ACK),
                tcp(UP, PSH | ACK, b"\x16" * 150), tcp(DOWN, PSH | ACK, b"\x16" * 1250),
                tcp(UP, PSH | ACK, b"\x16" * 700), tcp(DOWN, PSH | ACK, b"\x14" * 51),
                tcp(UP, PSH | ACK, b"\x17" * 110), tcp(DOWN, PSH | ACK, b"\x17" * 33),
                tcp(UP, PSH | ACK, b"\x17" * 340), tcp(DOWN, PSH | ACK, b"\x17" * 66),
                tcp(UP, PSH | ACK, b"\x17" * 31), tcp(DOWN, FIN | ACK)]
    log = FlightLog()
    for i, pkt in enumerate(exchange):       # each packet 50 ms after the one before
        index = log.note(i * 0.05, UP if i % 2 == 0 else DOWN, pkt)
        log.note_delivered(index, i * 0.05 + 0.05)
    flights = log.flights(log.flows()[0])
    steps, total_ms = bench_latency.label_steps(flights, acked_at=0.5 + 0.001)
    assert [(s["step"], s["round_trips"]) for s in steps] == [
        ("TCP", 1), ("TLS", 2), ("CONNECT", 1), ("first PUBACK", 1)]
    assert round(total_ms) == 500 and [round(s["ms"]) for s in steps] == [100, 200, 100, 100]


# ---------------------------------------------------------------- the relay thread

def test_relay_thread_delays_both_directions_in_order_and_logs_every_packet():
    a_kernel, a_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b_kernel, b_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a_dev, b_dev):
        s.setblocking(False)
    relay = TunRelay(delay_ms=60).relay_between(os.dup(a_dev.fileno()), os.dup(b_dev.fileno()))
    a_dev.close()
    b_dev.close()
    try:
        ups = [tcp(UP, PSH | ACK, bytes([i]) * (i + 1)) for i in range(5)]
        sent = time.monotonic()
        for pkt in ups:
            a_kernel.send(pkt)
        b_kernel.send(udp(DOWN, b"reply"))
        for sock in (a_kernel, b_kernel):
            sock.settimeout(2)
        got_b = [b_kernel.recv(2048) for _ in ups]
        got_a = a_kernel.recv(2048)
        elapsed = time.monotonic() - sent
        relay.check()
    finally:
        relay.close()
        a_kernel.close()
        b_kernel.close()
    assert got_b == ups and got_a == udp(DOWN, b"reply")
    assert 0.06 <= elapsed < 1.5
    log = relay.log
    assert [p.way for p in log.packets] == [UP] * 5 + [DOWN]
    held = [out - p.t_read for p, out in zip(log.packets, log.delivered)]
    assert all(0.06 <= h < 1.0 for h in held), held


def test_check_reports_a_dead_relay_thread():
    a_kernel, a_dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a_dev.setblocking(False)
    relay = TunRelay(delay_ms=1).relay_between(os.dup(a_dev.fileno()), os.dup(a_dev.fileno()))
    a_dev.close()
    relay.check()
    relay.log = None                     # the next packet's logging raises in the thread
    a_kernel.send(tcp(UP, SYN))
    deadline = time.monotonic() + 2
    while relay._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        relay.check()
    except RelayError as exc:
        assert "relay thread failed" in str(exc)
    else:
        raise AssertionError("check() passed on a dead relay")
    finally:
        relay.close()
        a_kernel.close()
