"""The two simulator runtimes side by side, and the GC heap the firmware needs on the real one.

Host figures (a desktop CPU on loopback), labelled as such: not what an ESP32 takes (published
ESP32 TLS handshakes take 0.9-1.3 s). Both runtimes run the same firmware files:

- TLS handshake: securenode.net.open_tcp + PinnedTls.wrap_socket to the real Mosquitto
  (pinned root, client certificate), timed with ticks_us inside the board, N in a row.
  CPython runtime: the ssl stand-in on pyOpenSSL; MicroPython: the port's ssl on Mbed TLS.
- Connect and first PUBACK: the unmodified firmware booting to MQTTS, from its own events
  (ticks_ms): "connecting" -> "mqtt_connected" (DNS, TCP, TLS, CONNECT/CONNACK), first
  "published" -> "acked" (one PUBLISH/PUBACK round trip), and "connecting" -> first "acked"
  (which also holds the first 100 ms sampling window). Median of several boots.
- Minimum GC heap per transport on real MicroPython: the smallest ``--heap`` (bisected, 2 KB
  steps, the stand-ins' allowance on top as always) with which a board boots, connects and
  gets 3 readings acknowledged; source (.py) and mpy-cross bytecode (.mpy).

    .venv/bin/python tests/bench/bench_runtime.py [--quick]

Writes tests/bench/results/runtime.md.
"""

import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from conftest import Pki  # noqa: E402
from host_sim.fleet import BoardProcess, board_config  # noqa: E402
from host_sim.flash import board_command, prepare_flash  # noqa: E402
from host_sim.mp.launcher import PROFILES  # noqa: E402
from host_sim.servers.mosquitto import Broker  # noqa: E402
from host_sim.servers.ntp import NtpServer  # noqa: E402

RESULTS = HERE / "results" / "runtime.md"
HANDSHAKES = 20
BOOTS = 5

HANDSHAKE_MAIN = """
import json, time
from securenode import net, wifi
wifi.join("simnet", "simkey", 10000)   # the CPython runtime's sockets need an association
from securenode.pinned_tls import PinnedTls
def read(p):
    with open(p, "rb") as f:
        return f.read()
tls = PinnedTls([read("ca.der")], read("device.crt.der"), read("device.key.der"),
                "localhost", 10000, 5000)
times = []
for _ in range(%d):
    sock = net.open_tcp("localhost", %d, 5000)
    t0 = time.ticks_us()
    s = tls.wrap_socket(sock)
    times.append(time.ticks_diff(time.ticks_us(), t0))
    s.close()
print(json.dumps({"handshake_us": times}))
"""

# clock=host: the handshake bench does no NTP, and a CPython-runtime board boots in 2000.
RUNTIMES = (("cpython", "CPython + stand-ins (pyOpenSSL)", {"clock": "host"}),
            ("micropython", "MicroPython unix port (Mbed TLS)",
             {"runtime": "micropython", "board": "esp32-spiram", "clock": "host"}))


def board_files(pki, device_id):
    dev = pki.device(device_id)
    return {"ca.der": pki.ca.cert_der, "device.crt.der": dev.cert_der,
            "device.key.der": dev.key_der}


def run_board(argv, until, timeout_s=60):
    board = BoardProcess("bench", argv, verbose=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until(board) and board.proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.1)
    board.stop()
    return board


def handshake_times(work, pki, broker, ntp, runtime_options):
    flash = work / ("hs-%s" % runtime_options.get("runtime", "cpython"))
    prepare_flash(flash, board_config("bench-hs", broker.port, 0, 1000),
                  board_files(pki, "bench-hs"))
    (flash / "main.py").write_text(HANDSHAKE_MAIN % (HANDSHAKES, broker.port))
    board = run_board(board_command(flash, ntp="127.0.0.1:%d" % ntp.address[1],
                                    **runtime_options),
                      lambda b: any("handshake_us" in e for e in b.events), 120)
    got = [e for e in board.events if "handshake_us" in e]
    if not got:
        raise SystemExit("handshake bench failed: %s" % board.events[-5:])
    return [us / 1000 for us in got[0]["handshake_us"]]


def boot_times(work, pki, broker, ntp, runtime_options):
    rows = []
    for i in range(BOOTS):
        flash = work / ("boot-%s-%d" % (runtime_options.get("runtime", "cpython"), i))
        prepare_flash(flash, board_config("bench-boot", broker.port, 1, 200),
                      board_files(pki, "bench-boot"))
        board = run_board(board_command(flash, ntp="127.0.0.1:%d" % ntp.address[1],
                                        **runtime_options),
                          lambda b: b.of("halted"))
        t = {}
        for e in board.events:
            kind = e.get("event")
            if kind == "state" and e["state"] == "connecting":
                t.setdefault("connecting", e["t_ms"])
            elif kind in ("mqtt_connected", "published", "acked"):
                t.setdefault(kind, e["t_ms"])
        if len(t) < 4:
            raise SystemExit("boot bench failed: %s" % board.events[-5:])
        rows.append((t["mqtt_connected"] - t["connecting"], t["acked"] - t["published"],
                     t["acked"] - t["connecting"]))
    return [statistics.median(col) for col in zip(*rows)]


class Transports:
    """The servers each transport needs, and the config fields that point a board there."""

    def __init__(self, pki, broker, ingest, jsonl):
        self.pki, self.broker, self.ingest, self.jsonl = pki, broker, ingest, jsonl

    def config(self, transport, device_id):
        if transport == "wss":
            return {"transport": "wss", "wss": {"host": "localhost", "port": self.ingest.port,
                                                "token": self.ingest.tokens[device_id]}}
        if transport == "mqtt_wss":
            return {"transport": "mqtt_wss",
                    "wss": {"host": "localhost", "port": self.broker.websockets_port}}
        if transport == "jsonl":
            return {"transport": "jsonl", "jsonl": {"host": "localhost",
                                                    "port": self.jsonl.port}}
        return {}


def delivers(work, pki, ntp, transports, transport, bytecode, heap_bytes):
    device_id = "bench-heap"
    flash = work / ("heap-%s-%s-%d" % (transport, bytecode, heap_bytes))
    cfg = board_config(device_id, transports.broker.port, 3, 200)
    cfg.update(transports.config(transport, device_id))
    prepare_flash(flash, cfg, board_files(pki, device_id))
    board = run_board(board_command(flash, runtime="micropython", heap=str(heap_bytes),
                                    bytecode=bytecode, ntp="127.0.0.1:%d" % ntp.address[1]),
                      lambda b: b.of("halted") or b.of("fatal"), 40)
    return bool(board.of("halted")) and not board.of("fatal") and len(board.of("acked")) == 3


def min_heap(work, pki, ntp, transports, transport, bytecode, step=2048):
    lo, hi = 16 * 1024, 512 * 1024       # lo fails (assumed), hi must deliver
    if not delivers(work, pki, ntp, transports, transport, bytecode, hi):
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if delivers(work, pki, ntp, transports, transport, bytecode, mid):
            hi = mid
        else:
            lo = mid
    return hi


def main(argv):
    quick = "--quick" in argv
    global HANDSHAKES, BOOTS
    if quick:
        HANDSHAKES, BOOTS = 5, 2
    from tools.ingest import IngestServer
    try:
        from tools.collector_jsonl import JsonlServer
        from mp_fixtures import MemoryStore
    except ImportError:
        JsonlServer = None
    work = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    (work / "pki").mkdir()
    pki = Pki(work / "pki")
    lines = []
    with NtpServer() as ntp, Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                                    websockets=True) as broker:
        rows = []
        for name, label, options in RUNTIMES:
            hs = handshake_times(work, pki, broker, ntp, options)
            connect, puback, first = boot_times(work, pki, broker, ntp, options)
            rows.append((label, statistics.median(hs), min(hs), max(hs), connect, puback,
                         first))
            print("%-36s handshake median %.1f ms, connect %.0f ms, first PUBACK %.0f ms"
                  % (label, rows[-1][1], connect, first), flush=True)
        lines += [
            "# The two simulator runtimes side by side (host figures)",
            "",
            "Measured on this host (desktop CPU, loopback, a real Mosquitto with TLS client "
            "certificates): these are *host* figures, not a board's (published ESP32 "
            "MicroPython TLS handshakes take 0.9-1.3 s). Same firmware files on both "
            "runtimes. TLS handshake = `PinnedTls.wrap_socket` after `net.open_tcp`, %d in "
            "a row, timed with ticks_us inside the board. Connect = firmware events "
            "\"connecting\" -> \"mqtt_connected\" (DNS, TCP, TLS, CONNECT/CONNACK); "
            "PUBACK = first \"published\" -> \"acked\"; connecting -> first PUBACK also holds "
            "the first 100 ms sampling window. Medians of %d boots (ticks_ms)."
            % (HANDSHAKES, BOOTS),
            "",
            "| runtime | TLS handshake median ms | min..max ms | connect ms | "
            "PUBLISH->PUBACK ms | connecting -> first PUBACK ms |",
            "|---|---|---|---|---|---|",
        ]
        for label, med, lo, hi, connect, puback, first in rows:
            lines.append("| %s | %.1f | %.1f..%.1f | %.0f | %s | %.0f |"
                         % (label, med, lo, hi, connect,
                            "%.0f" % puback if puback >= 1 else "< 1", first))
        if not quick:
            tokens = {"bench-heap": secrets.token_urlsafe(24)}
            jsonl = None
            if JsonlServer is not None:
                jsonl = JsonlServer(MemoryStore(), "127.0.0.1", 0, pki.ca.cert_pem,
                                    pki.server.chain_pem, pki.server.key_pem).start()
            try:
                with IngestServer(tokens, pki.server.chain_pem, pki.server.key_pem) as ingest:
                    ingest.tokens = tokens
                    transports = Transports(pki, broker, ingest, jsonl)
                    heap_rows = []
                    names = ["mqtts", "wss", "mqtt_wss"] + (["jsonl"] if jsonl else [])
                    for transport in names:
                        found = [min_heap(work, pki, ntp, transports, transport, bytecode)
                                 for bytecode in ("py", "mpy")]
                        heap_rows.append((transport, found))
                        print("min heap %-9s py %s  mpy %s" % (transport, *found), flush=True)
            finally:
                if jsonl is not None:
                    jsonl.stop()
            esp32 = PROFILES["esp32"]
            lines += [
                "",
                "## Minimum GC heap on real MicroPython, per transport",
                "",
                "Smallest `--heap` (bisected in 2 KB steps between 16 KB and 512 KB, one run "
                "per step) with which a board boots, connects and gets 3 readings "
                "acknowledged, no `fatal`. The stand-ins' own heap (machine, network, "
                "ntptime: C on a board) is given on top, so these compare with a board's "
                "GC heap: the `esp32` profile is %d bytes (`-X heapsize=112K`; an ESP32 "
                "without PSRAM has 111,936). Mbed TLS allocates from C malloc on this port, "
                "as from the IDF heap on an ESP32, so it is not in these figures. The "
                "firmware as of this run; it changes with every memory fix." % esp32,
                "",
                "| transport | source (.py) | bytecode (.mpy) | fits an ESP32 (112K)? |",
                "|---|---|---|---|",
            ]
            for transport, (py, mpy) in heap_rows:
                fits = [k for k, v in (("py", py), ("mpy", mpy)) if v and v <= esp32]
                lines.append("| %s | %s | %s | %s |" % (
                    transport, "%d KB" % (py // 1024) if py else "> 512 KB",
                    "%d KB" % (mpy // 1024) if mpy else "> 512 KB",
                    ("yes (" + ", ".join(fits) + ")") if fits else "no"))
    text = "\n".join(lines) + "\n"
    if not quick:
        RESULTS.write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
