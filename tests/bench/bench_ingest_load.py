"""tools/ingest.py's capacity under a slow-connection load, next to its normal latency.

The endpoint runs as its own process (`ingest.py serve`, real TLS). A legitimate board
(from 127.0.0.2) opens fresh connections (TLS + WebSocket handshake + one reading) and sends
readings on one connection, acknowledged one by one:
- normal: nothing else connected;
- under load: SILENT TCP connections from one address that never start TLS (those within
  the per-address cap are held until the handshake deadline, the rest closed at the accept)
  and IDLE authenticated boards that send nothing, from other addresses.
Reported per phase: connection setup (median, worst), reading round trip (median, p99),
readings/s, and the server's RSS and thread count from /proc.

    .venv/bin/python tests/bench/bench_ingest_load.py
"""

import asyncio
import contextlib
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from websockets.asyncio.client import connect as connect_async  # noqa: E402

from collector_fixtures import proc_status  # noqa: E402
from conftest import Pki  # noqa: E402

SILENT = 500
IDLE = 100
CONNECTS = 20
READINGS = 2000
TOKENS = {"legit": "legit-token-0123456789abcdef"}
TOKENS.update({"idle-%d" % n: "idle-token-%d-0123456789abcdef" % n for n in range(IDLE)})


def start_ingest(pki, workdir):
    (workdir / "tokens.json").write_text(json.dumps(TOKENS))
    proc = subprocess.Popen(
        [sys.executable, str(HERE.parent.parent / "tools" / "ingest.py"), "serve", "--tokens",
         str(workdir / "tokens.json"), "--cert", str(pki.server.chain_pem), "--key",
         str(pki.server.key_pem), "--port", "0", "--max-per-address", str(IDLE + 10)],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    port = json.loads(proc.stdout.readline())["port"]
    # Drain the event log so a full pipe never stalls the server.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, port


def client(pki, port, device, source):
    """websockets' asyncio client (its sync client stalls about one handshake in 150)."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert_pem))
    return connect_async("wss://localhost:%d/ingest/%s" % (port, device), ssl=context,
                         local_addr=(source, 0), open_timeout=30,
                         additional_headers={"Authorization": "Bearer " + TOKENS[device]})


class IdleBoards:
    """IDLE authenticated connections that send nothing, held by one asyncio loop in a thread."""

    def __init__(self, pki, port):
        self.pki, self.port = pki, port
        self.loop = asyncio.new_event_loop()
        self.connections = []

    async def _open(self):
        for n in range(IDLE):
            self.connections.append(await client(self.pki, self.port, "idle-%d" % n,
                                                 "127.0.0.3"))

    async def _close(self):
        for ws in self.connections:
            await ws.close()

    def __enter__(self):
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(120)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def _measure(pki, port, pid, first_seq):
    setups = []
    for n in range(CONNECTS):
        t0 = time.perf_counter()
        async with client(pki, port, "legit", "127.0.0.2") as ws:
            await ws.send(json.dumps({"id": "legit", "seq": first_seq + n, "voltage": 230.0}))
            json.loads(await ws.recv())
        setups.append(time.perf_counter() - t0)
    trips = []
    async with client(pki, port, "legit", "127.0.0.2") as ws:
        t_all = time.perf_counter()
        for n in range(READINGS):
            t0 = time.perf_counter()
            await ws.send(json.dumps({"id": "legit", "seq": first_seq + CONNECTS + n,
                                      "voltage": 230.0, "freq": 50.0}))
            json.loads(await ws.recv())
            trips.append(time.perf_counter() - t0)
        rate = READINGS / (time.perf_counter() - t_all)
    trips.sort()
    threads, rss_kib = proc_status(pid)
    return {"setup_median_ms": statistics.median(setups) * 1000,
            "setup_max_ms": max(setups) * 1000,
            "trip_median_ms": statistics.median(trips) * 1000,
            "trip_p99_ms": trips[int(len(trips) * 0.99)] * 1000, "rate": rate,
            "rss_mib": rss_kib / 1024, "threads": threads}


def measure(pki, port, pid, first_seq):
    return asyncio.run(_measure(pki, port, pid, first_seq))


def _still_open(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    pki = Pki(workdir)
    proc, port = start_ingest(pki, workdir)
    rows = []
    try:
        rows.append(("normal", measure(pki, port, proc.pid, 1)))
        with contextlib.ExitStack() as stack:
            stack.enter_context(IdleBoards(pki, port))
            silent = [stack.enter_context(socket.create_connection(("127.0.0.1", port)))
                      for _ in range(SILENT)]
            time.sleep(0.5)
            held = sum(1 for s in silent if _still_open(s))
            rows.append(("%d silent TCP (%d held) + %d idle boards" % (len(silent), held, IDLE),
                         measure(pki, port, proc.pid, 100000)))
    finally:
        proc.terminate()
        proc.wait(10)
    lines = ["# Ingest: capacity under a slow-connection load", "",
             "A board from 127.0.0.2: %d fresh connections (TLS + WebSocket handshake + one "
             "reading), then %d readings on one connection, each acknowledged before the "
             "next. Under load: %d TCP connections from one address that never start TLS "
             "(up to the per-address cap of %d held until the 10 s handshake deadline, the "
             "rest closed at the accept) and %d authenticated boards that send nothing. "
             "RSS and threads are the ingest process's, from /proc, at the end of the phase."
             % (CONNECTS, READINGS, SILENT, IDLE + 10, IDLE), "",
             "| phase | setup median ms | setup worst ms | round trip median ms | "
             "round trip p99 ms | readings/s | server RSS MiB | server threads |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        lines.append("| %s | %.1f | %.1f | %.2f | %.2f | %.0f | %.1f | %d |" % (
            name, r["setup_median_ms"], r["setup_max_ms"], r["trip_median_ms"],
            r["trip_p99_ms"], r["rate"], r["rss_mib"], r["threads"]))
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ingest_load.md").write_text(text)


if __name__ == "__main__":
    main()
