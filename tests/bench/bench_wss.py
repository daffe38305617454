"""Bytes on the wire per reading for MQTTS, wss (ingest) and MQTT over wss, and the per-frame
CPU cost of securenode/ws_frame.py on CPython and on real MicroPython (WebAssembly port).

Wire bytes: a counting TCP proxy on 127.0.0.1 sits between a simulated board (the real
firmware) and the real server (Mosquitto, tools/ingest.py). It counts every byte of TCP
payload in both directions, i.e. TLS records with their headers, MACs and padding, plus the
TLS and WebSocket handshakes. Each transport runs twice, with SHORT and LONG readings on one
connection; (bytes(LONG) - bytes(SHORT)) / (LONG - SHORT) is the steady-state cost of one
reading (reading + acknowledgement), and what is left of SHORT is the connection's setup.

    .venv/bin/python tests/bench/bench_wss.py      (~1 minute; makes its own certificates)
"""

import json
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "firmware_shims"))

from firmware_harness import firmware_files, run_micropython  # noqa: E402
from host_sim.fleet import BoardProcess, board_config  # noqa: E402
from host_sim.flash import board_command, prepare_flash  # noqa: E402
from host_sim.servers.mosquitto import Broker  # noqa: E402
from host_sim.servers.ntp import NtpServer  # noqa: E402
from tools import certs  # noqa: E402
from tools.ingest import IngestServer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "wss.md"
SHORT, LONG = 5, 25
DEVICE = "board-1"
TOKEN = "bench-token-" + "x" * 32


class CountingProxy:
    """Forwards 127.0.0.1:port -> 127.0.0.1:target and counts TCP payload bytes."""

    def __init__(self, target):
        self.target = target
        self.up = 0
        self.down = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"),
                             daemon=True).start()

    def _pipe(self, src, dst, direction):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


class Pki:
    """A throwaway CA, server and device certificate for one bench run."""

    def __init__(self, directory):
        self.ca = certs.make_ca(directory)
        self.server = certs.make_server(directory)
        self.device = certs.make_device(directory, DEVICE)


def run_board(pki, ntp, port, readings, extra):
    cfg = board_config(DEVICE, port, readings, 100)
    cfg.update(extra)
    flash = prepare_flash(ROOT / ".sim" / "bench-wss", cfg, {
        "ca.der": pki.ca.cert_der, "device.crt.der": pki.device.cert_der,
        "device.key.der": pki.device.key_der})
    board = BoardProcess(DEVICE, board_command(flash, ntp="127.0.0.1:%d" % ntp.address[1],
                                               device_seed=DEVICE), verbose=False)
    deadline = time.monotonic() + 60
    while not board.finished() and time.monotonic() < deadline:
        time.sleep(0.1)
    board.stop()
    acked = len(board.of("acked"))
    if acked != readings:
        raise SystemExit("bench: %d of %d readings acked; errors: %s"
                         % (acked, readings, board.of("error")[:3]))
    payload = len(board.of("published")[0]["payload"])
    return payload


def measure(pki, ntp, target, extra_for):
    totals = {}
    for n in (SHORT, LONG):
        proxy = CountingProxy(target)
        payload = run_board(pki, ntp, proxy.port, n, extra_for(proxy.port))
        time.sleep(0.3)
        totals[n] = (proxy.up, proxy.down)
        proxy.close()
    per_up = (totals[LONG][0] - totals[SHORT][0]) / (LONG - SHORT)
    per_down = (totals[LONG][1] - totals[SHORT][1]) / (LONG - SHORT)
    setup = sum(totals[SHORT]) - SHORT * (per_up + per_down)
    return payload, per_up, per_down, setup


def wire_rows():
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pki = Pki(Path(tmp))
        with NtpServer() as ntp, Broker(pki.ca.cert_pem, pki.server.chain_pem,
                                        pki.server.key_pem, websockets=True) as broker, \
                IngestServer({DEVICE: TOKEN}, pki.server.chain_pem,
                             pki.server.key_pem) as ingest:
            rows += _measure_all(pki, ntp, broker, ingest)
    return rows


def _measure_all(pki, ntp, broker, ingest):
    wss = {"transport": "wss", "wss": {"host": "localhost", "token": TOKEN}}
    mqtt_wss = {"transport": "mqtt_wss", "wss": {"host": "localhost"}}

    def pointing(base):
        def extra(port):
            cfg = json.loads(json.dumps(base))
            if cfg:
                cfg["wss"]["port"] = port
            return cfg
        return extra

    return [("MQTTS (QoS 1)",) + measure(pki, ntp, broker.port, pointing({})),
            ("wss ingest (text + ack)",) + measure(pki, ntp, ingest.port, pointing(wss)),
            ("MQTT over wss (QoS 1)",) + measure(pki, ntp, broker.websockets_port,
                                                 pointing(mqtt_wss))]


CPU_SCRIPT = r'''
import io, time
from securenode import ws_frame as wf
# Milliseconds over many rounds: the WebAssembly port's clock has millisecond resolution.
try:
    ticks, diff = time.ticks_ms, time.ticks_diff
except AttributeError:
    ticks = lambda: int(time.perf_counter() * 1e3)
    diff = lambda a, b: a - b
out = bytearray(14 + 1024)
mask = b"\x11\x22\x33\x44"
res = []
for size, rounds in ((90, 3000), (1000, 400)):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    t0 = ticks()
    for _ in range(rounds):
        n = wf.encode_frame(out, 2, payload, mask)
    enc = diff(ticks(), t0) * 1000 / rounds
    frame = bytes([0x82, 126, size >> 8, size & 255]) if size > 125 else bytes([0x82, size])
    wire = frame + payload
    reader = wf.MessageReader(4096)
    t0 = ticks()
    for _ in range(rounds):
        reader.read(io.BytesIO(wire))
    dec = diff(ticks(), t0) * 1000 / rounds
    text = bytes([0x81]) + frame[1:] + b"a" * size
    t0 = ticks()
    for _ in range(rounds):
        reader.read(io.BytesIO(text))
    dect = diff(ticks(), t0) * 1000 / rounds
    res.append("%d %.1f %.1f %.1f" % (size, enc, dec, dect))
print("|".join(res))
'''


def cpu_rows():
    import os
    import subprocess
    import tempfile
    files = firmware_files("ws_frame")
    with tempfile.TemporaryDirectory() as tmp:
        for path, text in files.items():
            target = Path(tmp) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "firmware_shims"))
        cpy = subprocess.run([sys.executable, "-c", CPU_SCRIPT], cwd=tmp, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    _, out, _ = run_micropython(files, CPU_SCRIPT)
    mpy = out.strip().splitlines()[-1]
    rows = []
    for name, line in (("CPython %d.%d" % sys.version_info[:2], cpy),
                       ("MicroPython (WebAssembly, Node)", mpy)):
        for item in line.split("|"):
            size, enc, dec, dect = item.split()
            rows.append((name, int(size), float(enc), float(dec), float(dect)))
    return rows


def main():
    wire = wire_rows()
    cpu = cpu_rows()
    lines = ["# WebSocket transports: bytes on the wire and frame codec CPU", "",
             "Bytes per reading: TCP payload counted at a loopback proxy between a simulated "
             "board and the real server, both directions (TLS records, with their 5-byte "
             "headers and AEAD tags, carry everything). Steady state: (bytes with %d readings "
             "- bytes with %d) / %d on one connection; setup = TCP payload of TLS handshake, "
             "WebSocket upgrade and MQTT CONNECT/CONNACK (+ the retained status message on "
             "MQTT), i.e. what the %d-reading run used beyond %d x per-reading."
             % (LONG, SHORT, LONG - SHORT, SHORT, SHORT), "",
             "| transport | reading JSON bytes | board -> server per reading | server -> board "
             "per reading | total per reading | connection setup (bytes) |",
             "|---|---|---|---|---|---|"]
    for name, payload, up, down, setup in wire:
        lines.append("| %s | %d | %.0f | %.0f | %.0f | %.0f |"
                     % (name, payload, up, down, up + down, setup))
    lines += ["", "umqtt.simple writes one PUBLISH in five stream writes (header, topic length, "
              "topic, packet id, payload); sent as they come, each would be its own TLS record "
              "(22 bytes of overhead per record under TLS 1.3 here, 29 with TLS 1.2 AES-GCM: "
              "255 bytes per MQTTS reading before the change). `mqtt_link._DeadlineStream` and "
              "`mqtt_wss_link.WsStream` gather umqtt's writes until it reads, so a PUBLISH "
              "leaves in one record (over wss, in one 6-byte-header WebSocket frame). The wss "
              "ingest link sends the bare reading JSON in one frame and gets `{\"ack\": seq}` "
              "back."]
    lines += ["", "Per-frame CPU cost of `securenode/ws_frame.py` (microseconds per frame; "
              "encode = header + masking into a preallocated buffer, decode = "
              "`MessageReader.read` from an in-memory stream, text adds the UTF-8 check). "
              "The WebAssembly port interprets bytecode as a board does but on a desktop CPU; "
              "no hardware numbers here. Encoding is dominated by the byte-wise masking loop.", "",
              "| runtime | payload bytes | encode us | decode binary us | decode text us |",
              "|---|---|---|---|---|"]
    for name, size, enc, dec, dect in cpu:
        lines.append("| %s | %d | %.1f | %.1f | %.1f |" % (name, size, enc, dec, dect))
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
