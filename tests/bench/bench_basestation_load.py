"""The base station's capacity under a slow-connection load, next to its normal latency.

A real `python -m tools.basestation serve` process (default limits: 64 connections at once,
8 per address, 5 s for the TLS handshake, 10 s per request) answers a board's request
(`POST /v1/auth/request` on a fresh TLS connection, from 127.0.0.2) while an attacker keeps
2,000 connections open that never finish a handshake, either from one address or spread
over 250 addresses (8 each); a connection the base station cuts is reopened at once. Each
row: how many of the board's requests were answered, their latency, and the process's peak
RSS and thread count (/proc/<pid>/status, sampled every 20 ms).

    .venv/bin/python tests/bench/bench_basestation_load.py
"""

import os
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from conftest import Pki  # noqa: E402
from provision_helpers import StationProcess, password_broker, post  # noqa: E402

REQUESTS = 40
SLOW = 2000


class SlowLoad:
    """Keeps `count` silent TCP connections open from `sources`, reopening cut ones."""

    def __init__(self, port, count, sources, first_bytes=b""):
        self.port, self.count, self.sources = port, count, sources
        self.first_bytes = first_bytes
        self.opened = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, sel, index):
        source = self.sources[index % len(self.sources)]
        try:
            sock = socket.socket()
            sock.settimeout(1.0)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", self.port))
            if self.first_bytes:
                sock.send(self.first_bytes)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        sel.register(sock, selectors.EVENT_READ, index)
        self.opened += 1

    def _run(self):
        sel = selectors.DefaultSelector()
        for index in range(self.count):
            self._open(sel, index)
        self._ready.set()
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                try:
                    data = key.fileobj.recv(1024)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    self._open(sel, key.data)
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(60)       # all opened once (some already cut and reopened)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Sampler:
    def __init__(self, station):
        self.station, self.rss_kb, self.threads = station, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            rss, _, threads = self.station.status()
            self.rss_kb, self.threads = max(self.rss_kb, rss), max(self.threads, threads)
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def board_requests(pki, port, tag):
    latencies, answered = [], 0
    for i in range(REQUESTS):
        t0 = time.perf_counter()
        try:
            # Each board from an address of its own, as on a LAN.
            status, _ = post(pki, port, "/v1/auth/request", {
                "device_id": "%s-%d" % (tag, i), "name": "bench", "firmware": "0.1.0",
                "nonce": os.urandom(16).hex()}, source_ip="127.0.%d.%d" % (100 + len(tag),
                                                                          i + 1))
        except OSError:
            continue
        if status in (202, 429):
            answered += 1
            latencies.append((time.perf_counter() - t0) * 1000)
    return answered, latencies


def row(label, station, load, pki, tag):
    with Sampler(station) as sampled:
        if load is None:
            answered, lat = board_requests(pki, station.port, tag)
            opened = 0
        else:
            with load:
                answered, lat = board_requests(pki, station.port, tag)
                opened = load.opened
    lat = sorted(lat) or [float("nan")]
    p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    return ("| %s | %d | %d/%d | %.1f | %.1f | %.1f | %.0f | %d |" % (
        label, opened, answered, REQUESTS, statistics.median(lat), p95, lat[-1],
        sampled.rss_kb / 1024, sampled.threads))


def main():
    lines = ["| load | attacker connections opened | board requests answered | median ms "
             "| p95 ms | max ms | peak RSS MB | peak threads |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pki").mkdir()
        pki = Pki(Path(tmp) / "pki")
        with password_broker(pki) as broker:
            with StationProcess(pki, broker, Path(tmp) / "state") as station:
                lines.append(row("none", station, None, pki, "calm"))
                lines.append(row("%d silent, one address" % SLOW, station,
                                 SlowLoad(station.port, SLOW, ["127.0.0.1"]), pki, "one"))
                sources = ["127.0.%d.%d" % (10 + i // 250, 1 + i % 250) for i in range(250)]
                lines.append(row("%d silent, 250 addresses" % SLOW, station,
                                 SlowLoad(station.port, SLOW, sources), pki, "many"))
                lines.append(row("%d half-open TLS handshakes, 250 addresses" % SLOW, station,
                                 SlowLoad(station.port, SLOW, sources, b"\x16\x03\x01"), pki,
                                 "halfopen"))
    table = "\n".join(lines)
    print(table)
    out = HERE / "results" / "basestation_load.md"
    out.write_text("# Base station under a slow-connection load "
                   "(tests/bench/bench_basestation_load.py)\n\n"
                   "Default limits: 1,024 connections open at once, 8 per address, 16 worker "
                   "threads for complete requests, TLS handshake 5 s, whole request 10 s. "
                   "Each board request comes from an address of its own; 'answered' is 202 "
                   "(or 429 busy), a refused connection is not answered. The attacker reopens "
                   "every connection the base station closes.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
