"""`make sim`: a simulated fleet delivering readings to a real Mosquitto over pinned MQTTS.

Starts an SNTP server, Mosquitto (TLS, client certificates, per-device ACL) and a subscriber
on 127.0.0.1, then N simulated ESP32 boards, each running the unmodified firmware in its own
process with its own flash: under CPython with stand-ins (``--runtime cpython``) or under the
real MicroPython unix port with a LittleFS2 flash image (``--runtime micropython``, with
``--board`` choosing the GC heap profile). Ends with a table per board: readings published,
acknowledged, received by the subscriber, and the range of the values. Exits 0 only if every
reading arrived exactly as sent. Everything it started, it stops.

    python -m host_sim.fleet --boards 3 --readings 10 --runtime micropython
"""

import argparse
import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from host_sim.flash import board_command, prepare_flash
from host_sim.servers.mosquitto import Broker, BrokerError
from host_sim.servers.ntp import NtpServer

ROOT = Path(__file__).resolve().parent.parent
# Each board sees a different grid, so the table shows the maths working, not a constant.
GRIDS = [(230.0, 50.0), (120.0, 60.0), (240.0, 50.0), (220.0, 60.0), (110.0, 60.0)]
SUBSCRIBER = "sim-subscriber"
STATUS_DISTURBED = 0x10  # the reading's status bit for a sampling window with gaps


class FleetError(Exception):
    pass


def board_config(device_id, broker_port, readings, interval_ms):
    return {
        "device_id": device_id,
        "wifi": {"ssid": "simnet", "key": "simkey", "timeout_ms": 10000},
        "ntp": {"host": "127.0.0.1", "timeout_ms": 2000},
        "mqtt": {"host": "localhost", "port": broker_port, "keepalive_s": 60},
        "tls": {"ca": ["ca.der"], "cert": "device.crt.der", "key": "device.key.der"},
        "timeouts_ms": {"dns": 5000, "connect": 5000, "handshake": 10000, "io": 5000},
        "sample": {"interval_ms": interval_ms, "adc_pin": 34, "volts_per_count": 0.0125,
                   "window_ms": 100, "samples": 200},
        "backoff": {"min_ms": 200, "max_ms": 5000},
        "run": {"max_readings": readings},
    }


class Subscriber:
    """Collects every reading the broker delivers, keyed by device id."""

    def __init__(self, certs, port):
        self.readings = {}
        self.duplicates = 0
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER,
                                  protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=str(certs / "ca.pem"),
                            certfile=str(certs / ("%s.crt.pem" % SUBSCRIBER)),
                            keyfile=str(certs / ("%s.key.pem" % SUBSCRIBER)))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("localhost", port)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.stop()
            raise FleetError("subscriber could not connect to the broker on port %d" % port)

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason == 0:
            client.subscribe("devices/+/readings", qos=1)
            self.connected.set()

    def _on_message(self, client, userdata, msg):
        device = msg.topic.split("/")[1]
        reading = json.loads(msg.payload)
        with self._lock:
            seen = self.readings.setdefault(device, {})
            if reading["seq"] in seen:
                self.duplicates += 1
            seen[reading["seq"]] = reading

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


class BoardProcess:
    """One simulated board: its process, and the events it printed."""

    def __init__(self, device_id, argv, verbose):
        self.device_id = device_id
        self.events = []
        self.verbose = verbose
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                event = {"event": "console", "text": line}
            self.events.append(event)
            if self.verbose or event.get("event") in ("error", "state", "tls_ok", "halted"):
                print("  %-8s %s" % (self.device_id, _brief(event)), flush=True)

    def of(self, kind):
        return [e for e in self.events if e.get("event") == kind]

    def finished(self):
        return self.proc.poll() is not None or bool(self.of("halted"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)


def _brief(event):
    fields = {k: v for k, v in event.items() if k not in ("event", "t_ms")}
    return "%s %s" % (event.get("event"), json.dumps(fields) if fields else "")


def _range(values, fmt):
    return (fmt % min(values) + ".." + fmt % max(values)) if values else "-"


def summarise(boards, subscriber, readings):
    rows, ok = [], True
    for board in boards:
        published = {e["seq"] for e in board.of("published")}
        acked = {e["seq"] for e in board.of("acked")}
        got = subscriber.readings.get(board.device_id, {})
        mine = [got[seq] for seq in sorted(acked) if seq in got]
        # Windows the host's scheduler interrupted are flagged by the board (status 0x10)
        # and only roughly right: counted, and kept out of the value ranges.
        clean = [r for r in mine if not r["status"] & STATUS_DISTURBED]
        complete = len(acked) == readings and acked <= set(got) and all(
            got[s]["id"] == board.device_id for s in acked)
        ok = ok and complete
        rows.append((board.device_id, len(published), len(acked), len(mine),
                     _range([r["voltage"] for r in clean], "%.1f"),
                     _range([r["freq"] for r in clean], "%.2f"), len(mine) - len(clean),
                     "ok" if complete else "MISSING"))
    header = ("board", "published", "acked", "received", "voltage V", "freq Hz", "disturbed",
              "result")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, header))
    print("\n" + line + "\n" + "-" * len(line))
    for r in rows:
        print("  ".join("%-*s" % (w, v) for w, v in zip(widths, r)))
    if subscriber.duplicates:
        print("(subscriber saw %d duplicate deliveries: QoS 1 resends)" % subscriber.duplicates)
    return ok


class IngestReadings:
    """The ingest endpoint's readings in the Subscriber's shape, for summarise()."""

    duplicates = 0

    def __init__(self, ingest):
        self._ingest = ingest

    @property
    def readings(self):
        return {device: {r["seq"]: r for r in got} for device, got in self._ingest.readings.items()}

    def stop(self):
        pass


@contextlib.contextmanager
def ingest_endpoint(transport, certs, tokens):
    """tools/ingest.py's endpoint for --transport wss (nothing for the MQTT transports)."""
    if transport != "wss":
        yield None
        return
    from tools.ingest import IngestServer
    chain = certs / "server-chain.pem"
    with IngestServer(tokens, chain if chain.exists() else certs / "server.pem",
                      certs / "server.key") as ingest:
        print("ingest  wss://127.0.0.1:%d/ingest/<board> (TLS, per-device bearer tokens)"
              % ingest.port)
        yield ingest


def transport_config(transport, device_id, broker, ingest, tokens):
    """The config.json fields that point a board at the chosen transport."""
    if transport == "wss":
        return {"transport": "wss", "wss": {"host": "localhost", "port": ingest.port,
                                            "token": tokens[device_id]}}
    if transport == "mqtt_wss":
        return {"transport": "mqtt_wss",
                "wss": {"host": "localhost", "port": broker.websockets_port}}
    return {}


def _runtime_label(args):
    if getattr(args, "runtime", "cpython") != "micropython":
        return "esp32, CPython with stand-ins"
    from host_sim.mp.launcher import PROFILES
    return "real MicroPython, board %s: %d-byte GC heap" % (args.board, PROFILES[args.board])


def run(args):
    certs = Path(args.certs)
    transport = getattr(args, "transport", "mqtts")
    runtime = getattr(args, "runtime", "cpython")
    tokens = {"board-%d" % (i + 1): secrets.token_urlsafe(32) for i in range(args.boards)}
    needed = ["ca.pem", "ca.der", "server.pem", "server.key", SUBSCRIBER + ".crt.pem"]
    needed += ["board-%d.crt.der" % (i + 1) for i in range(args.boards)]
    missing = [n for n in needed if not (certs / n).exists()]
    if missing:
        raise FleetError("missing in %s: %s; run `make certs`" % (certs, ", ".join(missing)))
    workdir = ROOT / ".sim"
    boards, subscriber = [], None
    with NtpServer() as ntp, Broker(certs / "ca.pem", certs / "server-chain.pem"
                                    if (certs / "server-chain.pem").exists()
                                    else certs / "server.pem",
                                    certs / "server.key", subscribers=[SUBSCRIBER],
                                    websockets=transport == "mqtt_wss") as broker, \
            ingest_endpoint(transport, certs, tokens) as ingest:
        print("broker  mosquitto on 127.0.0.1:%d (TLS, client certificates, per-device ACL)"
              % broker.port)
        print("ntp     127.0.0.1:%d" % ntp.address[1])
        if broker.websockets_port:
            print("        MQTT over wss on 127.0.0.1:%d (protocol websockets, same ACL)"
                  % broker.websockets_port)
        subscriber = IngestReadings(ingest) if ingest else Subscriber(certs, broker.port)
        try:
            for i in range(args.boards):
                device_id = "board-%d" % (i + 1)
                volts, hz = GRIDS[i % len(GRIDS)]
                flash = workdir / device_id
                config = board_config(device_id, broker.port, args.readings, args.interval_ms)
                config.update(transport_config(transport, device_id, broker, ingest, tokens))
                prepare_flash(flash, config, {
                    "ca.der": certs / "ca.der",
                    "device.crt.der": certs / ("%s.crt.der" % device_id),
                    "device.key.der": certs / ("%s.key.der" % device_id),
                })
                options = {}
                if runtime == "micropython":
                    # A fresh flash image each run, as the CPython runtime's flash directory
                    # is laid out afresh: no outbox left over from an earlier run.
                    shutil.rmtree(str(flash) + ".state", ignore_errors=True)
                    options = {"runtime": runtime, "board": args.board}
                argv = board_command(flash, port="esp32", ntp="127.0.0.1:%d" % ntp.address[1],
                                     mains_v=volts, mains_hz=hz, noise_v=1.0,
                                     device_seed=device_id, **options)
                boards.append(BoardProcess(device_id, argv, args.verbose))
                print("board   %s started (%s, %.0f V %.0f Hz mains)"
                      % (device_id, _runtime_label(args), volts, hz))
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline and not all(b.finished() for b in boards):
                time.sleep(0.2)
            # Give the broker a moment to deliver the last acknowledged readings.
            settle = time.monotonic() + 5
            while time.monotonic() < settle and any(
                    len(subscriber.readings.get(b.device_id, {})) < len(b.of("acked"))
                    for b in boards):
                time.sleep(0.1)
        finally:
            for board in boards:
                board.stop()
            subscriber.stop()
    if not all(b.finished() for b in boards):
        print("\ntimed out after %ss waiting for the boards" % args.timeout)
    return 0 if summarise(boards, subscriber, args.readings) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m host_sim.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boards", type=int, default=3, help="how many boards (default 3)")
    parser.add_argument("--readings", type=int, default=10, help="readings per board")
    parser.add_argument("--interval-ms", type=int, default=500, help="sampling interval")
    parser.add_argument("--certs", default=str(ROOT / "certs"), help="certificate directory")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for boards")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every board event")
    parser.add_argument("--transport", choices=("mqtts", "wss", "mqtt_wss"), default="mqtts",
                        help="mqtts (default); wss: readings to tools/ingest.py over wss with "
                             "bearer tokens; mqtt_wss: MQTT over Mosquitto's websockets listener")
    parser.add_argument("--runtime", choices=("cpython", "micropython"), default="cpython",
                        help="cpython: the firmware under CPython with stand-ins (default); "
                             "micropython: under the real MicroPython unix port (real socket, "
                             "ssl on Mbed TLS, LittleFS2 flash)")
    parser.add_argument("--board", choices=("esp32", "esp32-spiram", "esp8266"),
                        default="esp32-spiram",
                        help="GC heap profile for --runtime micropython (default esp32-spiram: "
                             "the firmware does not fit an ESP32's 112K yet)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FleetError, BrokerError) as exc:
        print("sim: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
