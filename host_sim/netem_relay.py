"""A delaying TCP relay on loopback: what `netem delay` would do, on a kernel without netem.

Every chunk read from one side is written to the other ``delay_ms`` later (in order), so a
request and its answer cost 2 x delay_ms: RTT 100 ms at the default 50. It works at the TCP
level: the client's own SYN/SYN-ACK is answered by this host's kernel at once, so the TCP
handshake's round trip is *not* delayed; a latency report adds it as 1 RTT (``tcp_rtt``).

It also records, per connection, each chunk's time and direction; ``flights()`` groups them
into flights (consecutive chunks one way) so a report can count round trips: each flight
towards the client that answers one from it ends a round trip.

Loopback only; one thread per direction per connection; ``close()`` stops everything.
host_sim/tun_relay.py delays whole IP packets between two network namespaces instead (the
handshake included); tests/bench/bench_latency.py runs both and tests/test_outbox_chaos.py
uses this one.

Example::

    with DelayRelay(("127.0.0.1", broker.port), delay_ms=50) as relay:
        board = launch("b1", relay.port)        # the board talks to the relay
        ...
        print(relay.connections[0].flights())   # [("up", t_s, bytes), ("down", ...), ...]
"""

import argparse
import heapq
import socket
import threading
import time

_CHUNK = 65536


class Connection:
    def __init__(self, accepted):
        self.accepted = accepted
        self.chunks = []   # (monotonic time read, "up" client->server | "down", bytes)
        self.lock = threading.Lock()

    def flights(self):
        """[(direction, first chunk's time after accept in s, bytes)], one per flight."""
        out = []
        with self.lock:
            chunks = list(self.chunks)
        for t, way, n in chunks:
            if out and out[-1][0] == way:
                out[-1][2] += n
            else:
                out.append([way, t - self.accepted, n])
        return [tuple(f) for f in out]


class DelayRelay:
    def __init__(self, upstream, delay_ms=50, port=0):
        self.upstream = upstream
        self.delay_s = delay_ms / 1000
        self.connections = []
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._threads = []
        self._sockets = []

    @property
    def rtt_ms(self):
        return 2000 * self.delay_s

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def start(self):
        self._spawn(self._accept_loop)
        return self

    def close(self):
        self._stop.set()
        self._listener.close()
        for s in list(self._sockets):
            try:
                s.close()
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=2)

    def _spawn(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            record = Connection(time.monotonic())
            self.connections.append(record)
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets.append(s)
            self._spawn(self._pump, client, server, record, "up")
            self._spawn(self._pump, server, client, record, "down")

    def _pump(self, src, dst, record, way):
        # Reader and a delayed writer in one thread: chunks wait in a heap until due.
        pending = []   # (due time, order, bytes or None for EOF)
        order = 0
        src.settimeout(0.01)
        eof = False
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    _, _, data = heapq.heappop(pending)
                    if data is None:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                if eof:
                    time.sleep(max(0.0, min(0.01, pending[0][0] - now)) if pending else 0.01)
                    continue
                wait = min(0.01, pending[0][0] - now) if pending else 0.01
                src.settimeout(max(0.0005, wait))
                try:
                    data = src.recv(_CHUNK)
                except socket.timeout:
                    continue
                now = time.monotonic()
                if data:
                    with record.lock:
                        record.chunks.append((now, way, len(data)))
                else:
                    eof = True
                    data = None
                order += 1
                heapq.heappush(pending, (now + self.delay_s, order, data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def main(argv=None):
    p = argparse.ArgumentParser(description="Relay 127.0.0.1:PORT to UPSTREAM, holding each "
                                "chunk DELAY ms each way (RTT = 2 x DELAY).")
    p.add_argument("upstream", help="host:port to relay to (loopback)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: any)")
    p.add_argument("--delay-ms", type=int, default=50)
    args = p.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    relay = DelayRelay((host or "127.0.0.1", int(port)), args.delay_ms, args.port).start()
    print("relaying 127.0.0.1:%d -> %s, %d ms each way" % (relay.port, args.upstream,
                                                           args.delay_ms), flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        relay.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
