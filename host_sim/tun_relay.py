"""A packet-level delaying relay between two network namespaces: netem on a kernel without it.

Two TUN devices, one moved into namespace A (the board's side, 10.77.0.1) and one into
namespace B (the servers' side, 10.77.0.2), each a point-to-point link to the other's address.
Every IP packet the kernel of one namespace sends out of its TUN device is read here, held
``delay_ms`` in a timer heap (one heap for both directions, not a sleep per packet) and
written into the other TUN device, so TCP's own SYN/SYN-ACK, UDP (NTP, DNS) and every
retransmission pay the delay like everything else. Optional random loss (seeded) and a
bounded queue (tail drop when ``max_packets`` are held) make it a small netem.

The relay also logs every packet it sees (time read, time delivered, direction, flow, TCP
flags, payload length, first payload byte) so a report can count round trips from the
wire: ``FlightLog.flights()`` groups the packets of one flow that carry something (payload,
SYN or FIN; pure ACKs are not a flight) into flights, one per change of direction.

Needs root, ``ip`` (iproute2) and /dev/net/tun. ``DelayLine`` and ``FlightLog`` are pure and
need neither (tests/test_tun_relay.py). ``python -m host_sim.tun_relay --delay-ms 50 --loss 0.01``
holds the namespaces up for manual use until Ctrl-C. A SIGKILLed owner leaves its two
namespaces behind (``ip netns del sn<hex pid>a`` / ``b``).

Example::

    with TunRelay(delay_ms=50) as net:          # namespaces, devices and the relay thread
        with net.inside("b"):                  # sockets made here live in namespace B
            server = socket.create_server((net.addr_b, 8883))
        board = subprocess.Popen(net.exec_prefix("a") + ["python", "-m", "host_sim.board", ...])
        ...
        print(net.log.flights(net.log.flows()[0]))   # [Flight("up", ...), Flight("down", ...)]
"""

import contextlib
import ctypes
import fcntl
import heapq
import os
import random
import select
import struct
import subprocess
import threading
import time
import traceback
from collections import namedtuple

UP = "up"        # namespace A (board) -> namespace B (servers)
DOWN = "down"    # B -> A

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000
_TCP_FIN, _TCP_SYN, _TCP_ACK = 0x01, 0x02, 0x10
HEAD_BYTES = 160


class RelayError(Exception):
    """The namespaces or TUN devices cannot be set up (not root, no /dev/net/tun, no ip)."""


class DelayLine:
    """Packets held ``delay_s`` each, released in due order (arrival order on ties).

    ``push`` returns None when the packet is queued, else why it was dropped ("loss" or
    "full"); ``due(now)`` pops every packet whose time has come.

    >>> line = DelayLine(0.05, max_packets=2)
    >>> line.push(b"a", UP, now=1.0), line.push(b"b", DOWN, now=1.01), line.push(b"c", UP, 1.02)
    (None, None, 'full')
    >>> line.due(1.055)
    [(1.05, 'up', b'a', None)]
    """

    def __init__(self, delay_s, loss=0.0, max_packets=1024, seed=0):
        if delay_s < 0 or not 0 <= loss < 1 or max_packets < 1:
            raise ValueError("delay_s >= 0, 0 <= loss < 1 and max_packets >= 1")
        self.delay_s = delay_s
        self.loss = loss
        self.max_packets = max_packets
        self._rng = random.Random(seed)
        self._heap = []           # (due, order, way, packet, tag)
        self._order = 0
        self.dropped = {"loss": 0, "full": 0}
        self.passed = 0

    def __len__(self):
        return len(self._heap)

    def push(self, packet, way, now, tag=None):
        if self.loss and self._rng.random() < self.loss:
            self.dropped["loss"] += 1
            return "loss"
        if len(self._heap) >= self.max_packets:
            self.dropped["full"] += 1
            return "full"
        heapq.heappush(self._heap, (now + self.delay_s, self._order, way, packet, tag))
        self._order += 1
        return None

    def next_due(self):
        return self._heap[0][0] if self._heap else None

    def due(self, now):
        out = []
        while self._heap and self._heap[0][0] <= now:
            due_at, _, way, packet, tag = heapq.heappop(self._heap)
            out.append((due_at, way, packet, tag))
        self.passed += len(out)
        return out


Packet = namedtuple("Packet", "t_read way proto src sport dst dport flags payload first head")
Flight = namedtuple("Flight", "way t_first t_last_out packets payload firsts")


def parse_ipv4(data):
    """(proto, src, sport, dst, dport, tcp flags, payload bytes, first payload byte or -1,
    the payload's first HEAD_BYTES), or None for anything that is not IPv4 (the kernel's IPv6
    router solicitations). The head is enough to read a TLS ServerHello's version and key share.

    >>> parse_ipv4(bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ...                   0, 123, 0, 124, 0, 8, 0, 0]))
    (17, '10.0.0.1', 123, '10.0.0.2', 124, 0, 0, -1, b'')
    """
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = min(struct.unpack_from("!H", data, 2)[0], len(data))
    proto = data[9]
    src = "%d.%d.%d.%d" % tuple(data[12:16])
    dst = "%d.%d.%d.%d" % tuple(data[16:20])
    body = data[ihl:total]
    if proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack_from("!HH", body, 0)
        off = (body[12] >> 4) * 4
        payload = body[off:]
        return (6, src, sport, dst, dport, body[13], len(payload),
                payload[0] if payload else -1, bytes(payload[:HEAD_BYTES]))
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack_from("!HH", body, 0)
        payload = body[8:]
        return (17, src, sport, dst, dport, 0, len(payload), payload[0] if payload else -1,
                bytes(payload[:HEAD_BYTES]))
    return (proto, src, 0, dst, 0, 0, max(0, len(body)), -1, b"")


class FlightLog:
    """Every packet the relay passed, with the time it was read and the time it was delivered.

    A flow is (proto, board address, board port, server address, server port). A flight is a
    run of packets of one flow in one direction that carry something: TCP payload, SYN or FIN,
    or any UDP datagram. A pure ACK is no flight (it does not make the other side wait).
    """

    def __init__(self):
        self.packets = []        # Packet, in the order read
        self.delivered = []      # parallel: monotonic time written to the other side, or None
        self._lock = threading.Lock()

    def note(self, t_read, way, data):
        parsed = parse_ipv4(data)
        if parsed is None:
            return None
        with self._lock:
            self.packets.append(Packet(t_read, way, *parsed))
            self.delivered.append(None)
            return len(self.packets) - 1

    def note_delivered(self, index, t_out):
        with self._lock:
            self.delivered[index] = t_out

    @staticmethod
    def flow_of(p):
        if p.way == UP:
            return (p.proto, p.src, p.sport, p.dst, p.dport)
        return (p.proto, p.dst, p.dport, p.src, p.sport)

    def flows(self, proto=None, server_port=None, opened=False):
        """Flows in the order their first packet was seen. With ``opened``, only TCP flows
        whose first packet here is the board's SYN: a connection from before this log
        started (its last ACKs, a FIN) is not one to count round trips on."""
        seen, skipped = [], []
        with self._lock:
            packets = list(self.packets)
        for p in packets:
            f = self.flow_of(p)
            if f in seen or f in skipped:
                continue
            if opened and not (p.proto == 6 and p.way == UP
                               and p.flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN):
                skipped.append(f)
            elif (proto is None or f[0] == proto) and (server_port is None or f[4] == server_port):
                seen.append(f)
        return seen

    def flights(self, flow):
        """[Flight(way, first packet read, last packet delivered, packets, payload bytes,
        first payload byte of each packet)] for one flow; dropped packets (never delivered)
        are left out, as the other side never saw them."""
        out = []
        with self._lock:
            rows = list(zip(self.packets, self.delivered))
        for p, t_out in rows:
            if t_out is None or self.flow_of(p) != flow:
                continue
            if p.proto == 6 and not p.payload and not p.flags & (_TCP_SYN | _TCP_FIN):
                continue
            if out and out[-1].way == p.way:
                last = out[-1]
                out[-1] = last._replace(t_last_out=t_out, packets=last.packets + 1,
                                        payload=last.payload + p.payload,
                                        firsts=last.firsts + (p.first,))
            else:
                out.append(Flight(p.way, p.t_read, t_out, 1, p.payload, (p.first,)))
        return out


def _run(argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RelayError("%s: %s" % (" ".join(argv), (done.stderr or done.stdout).strip()))


def _open_tun(name):
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    except OSError as e:
        raise RelayError("/dev/net/tun: %s (needs root and the tun module)" % e.strerror)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError as e:
        os.close(fd)
        raise RelayError("TUNSETIFF %s: %s" % (name, e.strerror))
    return fd


class TunRelay:
    """Namespaces ``sn<tag>a``/``sn<tag>b`` joined by two TUN devices and the delaying thread."""

    def __init__(self, delay_ms=50, loss=0.0, max_packets=1024, seed=0, subnet="10.77.0"):
        tag = "%x" % (os.getpid() & 0xFFFFF)
        self.ns = {"a": "sn%sa" % tag, "b": "sn%sb" % tag}
        self.dev = {"a": "sn%sA" % tag, "b": "sn%sB" % tag}
        self.addr_a, self.addr_b = subnet + ".1", subnet + ".2"
        self.line = DelayLine(delay_ms / 1000.0, loss, max_packets, seed)
        self.log = FlightLog()
        self._fds = {}
        self._stop = threading.Event()
        self._thread = None
        self._wake_r, self._wake_w = None, None
        self.failure = None
        self._created = []        # namespaces this relay added (close() deletes them)
        self._libc = ctypes.CDLL(None, use_errno=True)

    @property
    def rtt_ms(self):
        return 2000 * self.line.delay_s

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def start(self):
        if os.geteuid() != 0:
            raise RelayError("the namespace relay needs root (ip netns, /dev/net/tun)")
        try:
            for side, peer in (("a", self.addr_b), ("b", self.addr_a)):
                me = self.addr_a if side == "a" else self.addr_b
                _run(["ip", "netns", "add", self.ns[side]])
                self._created.append(self.ns[side])
                self._fds[side] = _open_tun(self.dev[side])
                _run(["ip", "link", "set", self.dev[side], "netns", self.ns[side]])
                inside = ["ip", "-n", self.ns[side]]
                _run(inside + ["link", "set", "lo", "up"])
                _run(inside + ["addr", "add", me, "peer", peer, "dev", self.dev[side]])
                _run(inside + ["link", "set", self.dev[side], "up"])
        except (RelayError, OSError):
            self.close()
            raise
        return self.relay_between(self._fds["a"], self._fds["b"])

    def relay_between(self, fd_a, fd_b):
        """Start the relay thread on two packet fds (TUN devices; a unit test passes
        datagram socketpairs). Returns self."""
        self._fds = {"a": fd_a, "b": fd_b}
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="tun-relay", daemon=True)
        self._thread.start()
        return self

    def close(self):
        self._stop.set()
        if self._wake_w is not None:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in list(self._fds.values()) + [self._wake_r, self._wake_w]:
            if fd is not None:
                os.close(fd)
        self._fds = {}
        self._wake_r = self._wake_w = None
        while self._created:
            subprocess.run(["ip", "netns", "del", self._created.pop()], capture_output=True)

    def exec_prefix(self, side):
        """argv prefix that runs a command inside namespace ``side`` ("a" or "b")."""
        return ["ip", "netns", "exec", self.ns[side]]

    @contextlib.contextmanager
    def inside(self, side):
        """Switch the calling thread into namespace ``side``: sockets it creates and processes
        it starts live there. Other threads are not affected (setns is per thread)."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open("/run/netns/%s" % self.ns[side], os.O_RDONLY)
        try:
            if self._libc.setns(target, _CLONE_NEWNET) != 0:
                raise RelayError("setns %s: %s" % (self.ns[side],
                                                   os.strerror(ctypes.get_errno())))
            try:
                yield
            finally:
                self._libc.setns(home, _CLONE_NEWNET)
        finally:
            os.close(target)
            os.close(home)

    def check(self):
        """RelayError if the relay thread has died (nothing would pass: runs would time out)."""
        if self.failure is not None:
            raise RelayError("relay thread failed: %s" % self.failure.strip().splitlines()[-1])
        if self._thread is None or not self._thread.is_alive():
            raise RelayError("relay thread is not running")

    def _loop(self):
        try:
            self._relay()
        except Exception:      # kept for check(): a thread's exception is otherwise lost
            self.failure = traceback.format_exc(limit=3)

    def _relay(self):
        fd_a, fd_b = self._fds["a"], self._fds["b"]
        out_fd = {UP: fd_b, DOWN: fd_a}
        way_of = {fd_a: UP, fd_b: DOWN}
        line = self.line
        while not self._stop.is_set():
            nxt = line.next_due()
            timeout = 0.05 if nxt is None else max(0.0, min(0.05, nxt - time.monotonic()))
            readable, _, _ = select.select([fd_a, fd_b, self._wake_r], [], [], timeout)
            for fd in readable:
                if fd == self._wake_r:
                    continue
                while True:
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    now = time.monotonic()
                    # The log is kept with the packet: a caller may start a new log
                    # (``relay.log = FlightLog()``) while older packets are still held.
                    log = self.log
                    line.push(data, way_of[fd], now, tag=(log, log.note(now, way_of[fd], data)))
            for _, way, data, (log, index) in line.due(time.monotonic()):
                # Noted before the write: a receiver may act on the packet (and a test see
                # that) before os.write returns here.
                t_out = time.monotonic()
                try:
                    os.write(out_fd[way], data)
                except OSError:
                    continue      # the other side's device went down: the packet is lost
                if index is not None:
                    log.note_delivered(index, t_out)


def main(argv=None):
    """Hold the two namespaces up for manual use until Ctrl-C or SIGTERM, then remove them.

    sudo .venv/bin/python -m host_sim.tun_relay --delay-ms 50 --loss 0.01
    """
    import argparse
    import signal
    import sys
    p = argparse.ArgumentParser(description="Two network namespaces joined by a relay that "
                                "holds every IP packet DELAY ms each way (RTT = 2 x DELAY).")
    p.add_argument("--delay-ms", type=float, default=50)
    p.add_argument("--loss", type=float, default=0.0, help="share of packets dropped, 0..1")
    p.add_argument("--max-packets", type=int, default=1024, help="packets held at most")
    p.add_argument("--seed", type=int, default=0, help="seed of the loss draw")
    args = p.parse_args(argv)
    try:
        net = TunRelay(args.delay_ms, args.loss, args.max_packets, args.seed)
    except ValueError:
        p.error("need --delay-ms >= 0, 0 <= --loss < 1 and --max-packets >= 1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        net.start()
    except RelayError as e:
        print("tun_relay: %s" % e, file=sys.stderr)
        return 1
    try:
        print("namespace %s (%s) <-> namespace %s (%s), %g ms each way; run a command "
              "in one with `%s CMD`; Ctrl-C stops" % (
                  net.ns["a"], net.addr_a, net.ns["b"], net.addr_b, args.delay_ms,
                  " ".join(net.exec_prefix("a"))), flush=True)
        while True:
            time.sleep(1)
            net.check()
    except KeyboardInterrupt:
        pass
    finally:
        net.close()
        print("passed %d, dropped %s" % (net.line.passed, net.line.dropped), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
