"""Round trips to the first reading, and a 1,000-reading backlog drained a window at a time,
at RTT 100 ms, on both runtimes (CPython simulator and the real MicroPython unix port).

Two networks, both adding 50 ms each way (this kernel has no netem):

- netns: the board in network namespace A, Mosquitto and the NTP server in namespace B, joined
  by host_sim/tun_relay.py, which holds every IP packet 50 ms in each direction. TCP's
  SYN/SYN-ACK and the NTP datagrams are delayed like everything else, and the round trips are
  counted from the packets the relay passed (flights of the board's flows), not assumed.
  Needs root, `ip netns` and /dev/net/tun (CI's `make bench`, not `make test`).
- loopback: host_sim/netem_relay.py, a TCP relay on 127.0.0.1 holding each chunk 50 ms; it
  cannot delay the TCP handshake, which is counted as 1 RTT. Kept for comparison.

WiFi is the simulator's own join delay (no radio here). DNS: the netns board is configured with
the broker's address (no lookup); the loopback board resolves "localhost" locally.

Each part writes its figures to results/latency_<part>.json; the table (results/latency.md)
and the drain plot (results/latency_drain.png) are drawn from both files, so one part can be
re-run alone:

    .venv/bin/python tests/bench/bench_latency.py                 (both, about 3 minutes)
    .venv/bin/python tests/bench/bench_latency.py --part netns     (about 1.5 minutes)
"""

import argparse
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent / "firmware_shims"))

from firmware_harness import firmware_files, run_cpython  # noqa: E402
from host_sim.fleet import BoardProcess, board_config  # noqa: E402
from host_sim.flash import board_command, prepare_flash  # noqa: E402
from host_sim.netem_relay import DelayRelay  # noqa: E402
from host_sim.servers.mosquitto import Broker  # noqa: E402
from host_sim.servers.ntp import NtpServer  # noqa: E402
from host_sim.tun_relay import DOWN, UP, FlightLog, RelayError, TunRelay  # noqa: E402
from tools import certs  # noqa: E402

RESULTS = HERE / "results"
DELAY_MS = 50
RTT_MS = 2 * DELAY_MS
BACKLOG = 1000
WINDOWS = (4, 8, 16)
OUTBOX = {"budget_bytes": 262144, "segment_bytes": 4096, "ack_batch": 8}
MAX_RECORD = 512  # config.py's _OUTBOX_MAX_RECORD: what app.py opens the outbox with
NS_SUBNET = "10.77.0"          # namespace A (board) .1, namespace B (servers) .2
NS_MQTT_PORT = 8883
NS_NTP_PORT = 123
RUNTIMES = ("cpython", "micropython")
PKI = []          # CA PEM, server chain PEM, server key PEM: made once in main()
# TLS named groups a ServerHello's key_share may carry (IANA TLS Supported Groups).
GROUPS = {0x0017: "P-256", 0x0018: "P-384", 0x001D: "X25519", 0x11EC: "X25519MLKEM768"}

PREFILL = r'''
from securenode import outbox
box = outbox.Outbox("outbox", %d, %d, %d, %d)
box.open()
for seq in range(1, %d + 1):
    box.append(seq, b'{"id":"%s","seq":%%d,"timestamp":1795600000,"status":0,"voltage":230.0,"freq":50.00}' %% seq)
print(box.depth)
'''


class TimedEvents(list):
    """A board's event list that also notes when (host monotonic s) each event arrived, to
    line the board's prints up with the relay's packet times."""

    def __init__(self):
        super().__init__()
        self.times = []

    def append(self, event):
        self.times.append(time.monotonic())
        super().append(event)


def run_board(tmp, device_id, mqtt_host, port, ntp_addr, config, runtime, timeout_s, until,
              prefix=()):
    cfg = board_config(device_id, port, readings=0, interval_ms=1000)
    cfg["mqtt"]["host"] = mqtt_host
    for dotted, value in config.items():
        if dotted == "prefill":
            continue
        section, _, field = dotted.rpartition(".")
        cfg.setdefault(section, {})[field] = value
    dev = certs.make_device(tmp, device_id)
    flash = tmp / ("flash-" + device_id)
    prepare_flash(flash, cfg, {"ca.der": (tmp / "ca.der").read_bytes(),
                               "device.crt.der": dev.cert_der, "device.key.der": dev.key_der})
    if config.get("prefill"):
        o = cfg["outbox"]
        out = run_cpython(firmware_files("outbox", "outbox_open"), PREFILL % (
            o["budget_bytes"], o["segment_bytes"], MAX_RECORD, o["ack_batch"],
            config["prefill"], device_id), flash)
        assert out.strip().splitlines()[-1] == str(config["prefill"]), out
    options = {"ntp": "%s:%d" % ntp_addr, "device_seed": device_id}
    if runtime == "micropython":
        # The tests' MicroPython board (tests/mp_fixtures.py): memory is not measured here.
        options.update(runtime="micropython", board="esp32-spiram")
    # Held until its event list is the timed one, so no event goes untimed.
    board = BoardProcess(device_id, list(prefix) + board_command(flash, **options),
                         verbose=False, held=True)
    board.events = TimedEvents()
    board.release()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not until(board):
            time.sleep(0.05)
        assert until(board), "%s: did not finish in %d s: %s" % (
            device_id, timeout_s, board.events[-5:])
    finally:
        board.stop()
    return board


def first(board, kind, **fields):
    for e in board.events:
        if e.get("event") == kind and all(e.get(k) == v for k, v in fields.items()):
            return e
    return None


def arrival(board, kind, **fields):
    for e, t in zip(board.events, board.events.times):
        if e.get("event") == kind and all(e.get(k) == v for k, v in fields.items()):
            return t
    return None


def sim_steps(board):
    """WiFi join as the simulator fakes it (board clock): not a network round trip here."""
    return {"wifi_ms": first(board, "wifi_up")["t_ms"] - first(board, "state",
                                                               state="joining")["t_ms"],
            "sampled_before_connect": first(board, "stored")["t_ms"] <= first(
                board, "state", state="connecting")["t_ms"] + 1000,
            "connack_to_ack_ms": first(board, "acked")["t_ms"] - first(board, "tls_ok")["t_ms"]}


# ---------------------------------------------------------------- loopback (TCP relay) part

def loop_round_trips(tmp, broker, ntp, runtime, attempt):
    with DelayRelay(("127.0.0.1", broker.port), DELAY_MS) as relay:
        board = run_board(tmp, "lat-%s-%d" % (runtime, attempt), "localhost", relay.port,
                          ntp.address, {"run.max_readings": 1}, runtime, 60,
                          lambda b: first(b, "halted") is not None)
        flights = relay.connections[0].flights()
    # Flights towards the board on TLS 1.2: ServerHello..ServerHelloDone, then
    # ChangeCipherSpec+Finished, then CONNACK, then the PUBACKs of the status and the first
    # reading (sent together), then the broker's answer to DISCONNECT. A flight the relay read
    # at t reaches the board at t + DELAY.
    arrivals_ms = [1000 * f[1] + DELAY_MS for f in flights if f[0] == "down"]
    out = {"runtime": runtime, "arrivals_ms": arrivals_ms,
           "first_puback_ms": RTT_MS + arrivals_ms[3]}
    out.update(sim_steps(board))
    return out


def loop_drain(tmp, broker, ntp, runtime, window):
    with DelayRelay(("127.0.0.1", broker.port), DELAY_MS) as relay:
        board = drain_board(tmp, "drain-%s-%d" % (runtime, window), "localhost", relay.port,
                            ntp.address, runtime, window)
        downs = [f for f in relay.connections[0].flights() if f[0] == "down"]
    # SYN -> CONNACK as the relay saw it: TCP (1 RTT), then the third flight towards the
    # board (two of TLS 1.2, then CONNACK) arrives DELAY after the relay read it.
    return drain_result(board, runtime, window, RTT_MS + 1000 * downs[2][1] + DELAY_MS)


def drain_board(tmp, device_id, host, port, ntp_addr, runtime, window, prefix=()):
    config = {"mqtt.inflight": window, "prefill": BACKLOG, "sample.interval_ms": 1000}
    config.update({"outbox." + k: v for k, v in OUTBOX.items()})
    return run_board(tmp, device_id, host, port, ntp_addr, config, runtime, 120,
                     lambda b: first(b, "acked", seq=BACKLOG) is not None, prefix)


def drain_result(board, runtime, window, connect_ms):
    online = first(board, "state", state="online")["t_ms"]
    acks = [(e["t_ms"] - online, e["seq"]) for e in board.of("acked") if e["seq"] <= BACKLOG]
    return {"runtime": runtime, "window": window, "connect_ms": connect_ms,
            "drain_ms": acks[-1][0], "curve": acks,
            "bound_ms": 1.2 * BACKLOG / window * RTT_MS}


def part_loopback(tmp):
    load = os.getloadavg()
    with NtpServer() as ntp, Broker(*PKI) as broker:
        trips = []
        for rt in RUNTIMES:
            # Median of three boots: two shared cores make single runs jumpy.
            runs = sorted((loop_round_trips(tmp, broker, ntp, rt, i) for i in range(3)),
                          key=lambda t: t["first_puback_ms"])
            runs[1]["spread"] = (runs[0]["first_puback_ms"], runs[2]["first_puback_ms"])
            trips.append(runs[1])
        drains = [loop_drain(tmp, broker, ntp, "cpython", w) for w in WINDOWS]
        drains.append(loop_drain(tmp, broker, ntp, "micropython", 8))
    return {"load_before": load, "load_after": os.getloadavg(), "trips": trips,
            "drains": drains}


# ---------------------------------------------------------------- netns (TUN relay) part

class NamespaceBroker(Broker):
    """The tests' Mosquitto, listening on every address of namespace B (its loopback and the
    relay's device, nothing else exists there), so it is reached through the relay."""

    def _tls_listener_lines(self, port, settings):
        lines = super()._tls_listener_lines(port, settings)
        assert lines[0] == "listener %d 127.0.0.1" % port, lines[0]
        return ["listener %d" % port] + lines[1:]


def label_steps(flights, acked_at):
    """Split a board's TCP flow into TCP, TLS, CONNECT and first PUBACK, by the flights
    towards the board: the SYN-ACK (no payload), handshake records (TLS content type 22 or
    20 at a segment's start), the first application-data flight (CONNACK), then every flight
    up to the last one delivered before the board printed "acked" (``acked_at``).

    Returns [{"step", "round_trips", "ms"}] (ms: the step's first packet from the board read
    by the relay -> its last packet to the board delivered) and the whole SYN -> PUBACK time.
    """
    done = [i for i, f in enumerate(flights) if f.way == DOWN and f.t_last_out <= acked_at]
    if not done:
        raise AssertionError("no flight reached the board before it printed 'acked' at %.3f: %s"
                             % (acked_at, flights))
    last = done[-1]
    steps, start, seen_app = [], None, False
    for f in flights[:last + 1]:
        if f.way == UP:
            start = f.t_first if start is None else start
            continue
        if f.payload == 0:
            name = "TCP"
        elif not seen_app and any(b in (20, 22) for b in f.firsts):
            name = "TLS"
        elif not seen_app:
            name, seen_app = "CONNECT", True
        else:
            name = "first PUBACK"
        if steps and steps[-1]["step"] == name:
            steps[-1]["round_trips"] += 1
            steps[-1]["end"] = f.t_last_out
        else:
            steps.append({"step": name, "round_trips": 1,
                          "start": f.t_first if start is None else start, "end": f.t_last_out})
        start = None
    for s in steps:
        s["ms"] = round(1000 * (s.pop("end") - s.pop("start")), 1)
    total_ms = 1000 * (flights[last].t_last_out - flights[0].t_first)
    return steps, total_ms


def server_hello(log, flow):
    """(TLS version, key share group or None) from the first ServerHello of ``flow``."""
    for p in log.packets:
        h = p.head
        if p.way != DOWN or FlightLog.flow_of(p) != flow or len(h) < 80 or h[0] != 22 \
                or h[5] != 2:
            continue
        sid = h[43]
        at = 44 + sid + 3                    # cipher suite (2), compression (1)
        version, group = "TLS 1.2", None
        if len(h) >= at + 2:
            end = min(len(h), at + 2 + int.from_bytes(h[at:at + 2], "big"))
            at += 2
            while at + 4 <= end:
                kind, size = int.from_bytes(h[at:at + 2], "big"), int.from_bytes(
                    h[at + 2:at + 4], "big")
                body = h[at + 4:at + 4 + size]
                if kind == 43 and body[:2] == b"\x03\x04":     # supported_versions
                    version = "TLS 1.3"
                if kind == 51 and len(body) >= 2:               # key_share
                    code = int.from_bytes(body[:2], "big")
                    group = GROUPS.get(code, "0x%04x" % code)
                at += 4 + size
        return version, group
    return None, None


def ns_flow_summary(net, flows_port, acked_at):
    flow = net.log.flows(proto=6, server_port=flows_port, opened=True)[0]
    flights = net.log.flights(flow)
    steps, total_ms = label_steps(flights, acked_at)
    version, group = server_hello(net.log, flow)
    hello = next(f for f in flights if f.way == UP and f.payload)
    return {"steps": steps, "first_puback_ms": round(total_ms, 1),
            "round_trips": sum(s["round_trips"] for s in steps),
            "tls": version, "key_share": group, "client_hello_bytes": hello.payload,
            "flights": [(f.way, round(1000 * (f.t_first - flights[0].t_first), 1),
                         round(1000 * (f.t_last_out - flights[0].t_first), 1), f.payload)
                        for f in flights]}


def ns_round_trips(net, tmp, runtime, attempt):
    net.log = FlightLog()
    board = run_board(tmp, "ns-%s-%d" % (runtime, attempt), net.addr_b, NS_MQTT_PORT,
                      (net.addr_b, NS_NTP_PORT), {"run.max_readings": 1}, runtime, 60,
                      lambda b: first(b, "halted") is not None, net.exec_prefix("a"))
    net.check()
    out = {"runtime": runtime}
    out.update(ns_flow_summary(net, NS_MQTT_PORT, arrival(board, "acked")))
    ntp = net.log.flights(net.log.flows(proto=17, server_port=NS_NTP_PORT)[0])
    out["ntp"] = {"round_trips": sum(1 for f in ntp if f.way == DOWN),
                  "ms": round(1000 * (ntp[-1].t_last_out - ntp[0].t_first), 1)}
    out.update(sim_steps(board))
    out["dropped"] = dict(net.line.dropped)
    return out


def ns_drain(net, tmp, runtime, window):
    net.log = FlightLog()
    board = drain_board(tmp, "nsdrain-%s-%d" % (runtime, window), net.addr_b, NS_MQTT_PORT,
                        (net.addr_b, NS_NTP_PORT), runtime, window, net.exec_prefix("a"))
    net.check()
    flights = net.log.flights(net.log.flows(proto=6, server_port=NS_MQTT_PORT, opened=True)[0])
    # SYN read -> CONNACK delivered: the steps up to CONNECT of the board's first reading.
    steps, _ = label_steps(flights, arrival(board, "acked", seq=1))
    n = sum(s["round_trips"] for s in steps if s["step"] in ("TCP", "TLS", "CONNECT"))
    connack = [f for f in flights if f.way == DOWN][n - 1]
    connect_ms = round(1000 * (connack.t_last_out - flights[0].t_first), 1)
    out = drain_result(board, runtime, window, connect_ms)
    out["connect_round_trips"] = n
    return out


def ns_tls13_reference(net, tmp, nodelay):
    """A CPython paho client in namespace A allowed TLS 1.3 (not the board: a reference for
    the 4-RTT floor). It waits for CONNACK, then publishes one QoS 1 message. With
    ``nodelay`` False it keeps Nagle on, as paho and mosquitto_pub do by default."""
    import paho.mqtt.client as mqtt
    net.log = FlightLog()
    name = "ref-tls13-" + ("nodelay" if nodelay else "nagle")
    dev = certs.make_device(tmp, name)
    connected, acked = threading.Event(), threading.Event()
    done = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                         protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(PKI[0]), certfile=str(dev.cert_pem),
                   keyfile=str(dev.key_pem), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if nodelay:
        # Set before paho writes CONNECT: with Nagle on, CONNECT (small) waits for the ACK
        # of the client's Finished, which comes back with the server's session tickets.
        client.on_socket_open = lambda c, u, sock: sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.on_connect = lambda *a: connected.set()
    client.on_publish = lambda *a: (done.setdefault("t", time.monotonic()), acked.set())
    with net.inside("a"):
        client.connect(net.addr_b, NS_MQTT_PORT)      # the socket is made in namespace A
    client.loop_start()
    try:
        assert connected.wait(10), "reference client: no CONNACK"
        client.publish("devices/%s/readings" % name, b'{"seq":1}', qos=1)
        assert acked.wait(10), "reference client: no PUBACK"
        version = client.socket().version()
    finally:
        client.disconnect()
        client.loop_stop()
    out = {"runtime": "reference: CPython paho, TLS 1.3, %s" % (
        "TCP_NODELAY" if nodelay else "Nagle on (paho's default)"), "negotiated": version}
    out.update(ns_flow_summary(net, NS_MQTT_PORT, done["t"]))
    return out


def part_netns(tmp):
    load = os.getloadavg()
    # The board's socket stand-in reaches loopback only, unless told (host_sim/stubs/socket.py).
    with TunRelay(delay_ms=DELAY_MS, subnet=NS_SUBNET) as net:
        os.environ["SECURENODE_SIM_REACHABLE"] = net.addr_b
        with net.inside("b"):
            ntp = NtpServer(host=net.addr_b, port=NS_NTP_PORT).start()
            broker = NamespaceBroker(*PKI, port=NS_MQTT_PORT).start()
        try:
            trips = []
            for rt in RUNTIMES:
                runs = sorted((ns_round_trips(net, tmp, rt, i) for i in range(3)),
                              key=lambda t: t["first_puback_ms"])
                runs[1]["spread"] = (runs[0]["first_puback_ms"], runs[2]["first_puback_ms"])
                runs[1]["round_trips_all"] = [r["round_trips"] for r in runs]
                trips.append(runs[1])
            reference = [ns_tls13_reference(net, tmp, nodelay) for nodelay in (True, False)]
            drains = [ns_drain(net, tmp, rt, 8) for rt in RUNTIMES]
        finally:
            broker.close()
            ntp.stop()
    return {"load_before": load, "load_after": os.getloadavg(), "trips": trips,
            "reference": reference, "drains": drains}


# ---------------------------------------------------------------- report

def plot(drains, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, d in drains:
        ax.plot([t / 1000 for t, _ in d["curve"]], [s for _, s in d["curve"]],
                linestyle="-" if label == "netns" else "--",
                label="%s, %s, inflight %d (%.1f s)" % (label, d["runtime"], d["window"],
                                                        d["drain_ms"] / 1000))
    for w in sorted({d["window"] for _, d in drains}):
        ax.axvline(1.2 * BACKLOG / w * RTT_MS / 1000, linestyle=":", linewidth=0.8,
                   color="grey")
    ax.set_xlabel("seconds since CONNACK (RTT %d ms)" % RTT_MS)
    ax.set_ylabel("readings acknowledged (backlog %d)" % BACKLOG)
    ax.set_title("Backlog drain; dotted: goal 1.2 x (1000 / inflight) RTT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _load(part):
    return "load average %.2f / %.2f / %.2f before, %.2f after" % (
        tuple(part["load_before"]) + (part["load_after"][0],))


def netns_lines(ns):
    lines = ["## Namespace harness: board in namespace A, Mosquitto and NTP in namespace B", "",
             "host_sim/tun_relay.py holds every IP packet %d ms each way (RTT %d ms), TCP's "
             "SYN/SYN-ACK and NTP's datagrams included. Round trips are counted from the "
             "relay's own packet log: a flight is a run of packets of one flow in one "
             "direction carrying payload, SYN or FIN (pure ACKs are none); each flight "
             "towards the board ends a round trip. ms: the step's first packet from the "
             "board read by the relay -> its last packet to the board delivered. Median of 3 "
             "boots by SYN -> PUBACK (%s)." % (DELAY_MS, RTT_MS, _load(ns)), "",
             "| runtime | WiFi (sim) | NTP | DNS | TCP | TLS | CONNECT | first PUBACK | "
             "SYN -> first reading's PUBACK, ms (min-max of 3) | round trips (each of 3) | "
             "in RTT | goal | negotiated (ServerHello) | ClientHello bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in ns["trips"] + ns["reference"]:
        by = {s["step"]: s for s in t["steps"]}
        cell = lambda k: ("%d RT, %.0f ms" % (by[k]["round_trips"], by[k]["ms"])
                          if k in by else "-")
        ref = "reference" in t["runtime"]
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %.0f%s | %s | %.2f | %s | %s "
                     "| %d |" % (
            t["runtime"],
            "-" if ref else "%d ms, no packets" % t["wifi_ms"],
            "-" if ref else "%d RT, %.0f ms" % (t["ntp"]["round_trips"], t["ntp"]["ms"]),
            "-" if ref else "0 (address configured)",
            cell("TCP"), cell("TLS"), cell("CONNECT"), cell("first PUBACK"),
            t["first_puback_ms"],
            "" if ref else " (%.0f-%.0f)" % tuple(t["spread"]),
            ", ".join(str(n) for n in t.get("round_trips_all", [t["round_trips"]])),
            t["first_puback_ms"] / RTT_MS,
            "4 (+10%: 4.4), TLS 1.3" if t["tls"] == "TLS 1.3" else "5 (+10%: 5.5), TLS 1.2",
            t["tls"] + (", " + t["key_share"] if t["key_share"] else ""),
            t["client_hello_bytes"]))
    lines += ["", "Board rows: sampled before connecting: %s; board clock CONNACK -> reading "
              "acked: %s ms. Flights of the median boot (way, ms after SYN read, ms delivered, "
              "payload bytes):" % (
                  ", ".join("%s %s" % (t["runtime"], "yes" if t["sampled_before_connect"]
                                       else "NO") for t in ns["trips"]),
                  ", ".join("%s %d" % (t["runtime"], t["connack_to_ack_ms"])
                            for t in ns["trips"])), ""]
    for t in ns["trips"] + ns["reference"]:
        lines.append("- %s: %s" % (t["runtime"], "; ".join(
            "%s %.0f->%.0f %d B" % tuple(f) for f in t["flights"])))
    lines += ["", "| runtime | mqtt.inflight | connect (SYN -> CONNACK delivered), ms | "
              "drain after CONNACK, ms | round trips | goal 1.2 x (1000/inflight) RTT, ms | "
              "met |", "|---|---|---|---|---|---|---|"]
    lines += drain_rows(ns["drains"])
    return lines


def drain_rows(drains):
    return ["| %s | %d | %d | %d | %.1f | %d | %s |" % (
        d["runtime"], d["window"], d["connect_ms"], d["drain_ms"], d["drain_ms"] / RTT_MS,
        d["bound_ms"], "yes" if d["drain_ms"] <= d["bound_ms"] else "NO") for d in drains]


def loopback_lines(lo):
    lines = ["## Loopback TCP relay (host_sim/netem_relay.py), for comparison", "",
             "Board -> TCP relay on 127.0.0.1 (%d ms each way per chunk) -> Mosquitto. The TCP "
             "handshake is answered by the relay's kernel at once, so it is counted as 1 RTT "
             "by construction; NTP goes straight to the server (no delay) (%s)."
             % (DELAY_MS, _load(lo)), "",
             "| runtime | flights towards the board (arrival, ms after TCP connect) | "
             "first reading's PUBACK, ms from SYN (median of 3; min-max) | round trips | "
             "board clock: CONNACK -> reading acked, ms | sampled before connecting | "
             "WiFi join (sim) ms |", "|---|---|---|---|---|---|---|"]
    for t in lo["trips"]:
        lines.append("| %s | %s | %d (%d-%d) | %.2f | %d | %s | %d |" % (
            t["runtime"], ", ".join("%d" % a for a in t["arrivals_ms"]),
            t["first_puback_ms"], t["spread"][0], t["spread"][1],
            t["first_puback_ms"] / RTT_MS, t["connack_to_ack_ms"],
            "yes" if t["sampled_before_connect"] else "no", t["wifi_ms"]))
    lines += ["", "| runtime | mqtt.inflight | connect (SYN -> CONNACK), ms | drain after "
              "CONNACK, ms | round trips | goal 1.2 x (1000/inflight) RTT, ms | met |",
              "|---|---|---|---|---|---|---|"]
    return lines + drain_rows(lo["drains"])


TLS_NOTE = [
    "## Which TLS a board speaks (MicroPython source, commit 1c3c201, 2026-08-19)",
    "",
    "- `extmod/mbedtls/mbedtls_config_common.h` line 59 defines `MBEDTLS_SSL_PROTO_TLS1_2`; "
    "`MBEDTLS_SSL_PROTO_TLS1_3` is defined nowhere in MicroPython's tree (`git grep`: only the "
    "`#if defined(MBEDTLS_SSL_PROTO_TLS1_3)` guards in `extmod/modtls_mbedtls.c` lines 314 "
    "and 904, ready for a build that enables it). Mbed TLS's own default config (the "
    "lib/mbedtls submodule) is not used: `extmod/extmod.cmake` lines 254-259 point "
    "`MBEDTLS_CONFIG_FILE` at the port's `mbedtls/mbedtls_config_port.h`.",
    "- The unix port (the MicroPython runtime here) includes that common file "
    "(`ports/unix/mbedtls/mbedtls_config_port.h` line 41) and adds no protocol, so it speaks "
    "TLS 1.2 only, as the ServerHello column shows. So do rp2, stm32, mimxrt, renesas-ra and "
    "alif, whose `mbedtls_config_port.h` include the same file (line 39, rp2 line 42).",
    "- esp32 builds ESP-IDF's own Mbed TLS from sdkconfig; `ports/esp32/boards/sdkconfig.base` "
    "(its SSL section, lines 58-96) does not set `CONFIG_MBEDTLS_SSL_PROTO_TLS1_3`, so ESP-IDF's "
    "Kconfig default decides (not checked here). esp8266 uses axTLS "
    "(`ports/esp8266/Makefile` line 50, `MICROPY_SSL_AXTLS = 1`): TLS 1.2 at most.",
    "",
    "So the TLS 1.3 goal (4 RTT) has no board to run on: the simulator's ssl stand-in "
    "negotiates what the board's Mbed TLS does (TLS 1.2 ECDHE-ECDSA on P-256), read off the "
    "wire above. The TLS 1.3 rows are a CPython paho client in namespace A, labelled "
    "reference: the floor a TLS 1.3 stack reaches on this harness. In TLS 1.3 everything after "
    "the ServerHello is an application-data record, so the labels cannot tell the server's "
    "session tickets from CONNACK: with Nagle on (paho's and mosquitto_pub's default) the "
    "client's CONNECT waits for the ACK of its Finished, which comes back with the tickets, "
    "one round trip more (see its flights). The board sets TCP_NODELAY "
    "(firmware/securenode/net.py).",
]


def render():
    parts = {}
    for name in ("netns", "loopback"):
        path = RESULTS / ("latency_%s.json" % name)
        if path.exists():
            parts[name] = json.loads(path.read_text())
    lines = ["# Round trips and backlog drain at RTT %d ms" % RTT_MS, "",
             "`make bench` (tests/bench/bench_latency.py; `--part netns` or `--part loopback` "
             "re-runs one). Goals (issue 14): first reading's PUBACK within 5 RTT + 10% on "
             "TLS 1.2; 1,000 readings drained within 1.2 x (1000/inflight) RTT after CONNACK.",
             ""]
    drains = []
    if "netns" in parts:
        lines += netns_lines(parts["netns"]) + [""]
        drains += [("netns", d) for d in parts["netns"]["drains"]]
    if "loopback" in parts:
        lines += loopback_lines(parts["loopback"]) + [""]
        drains += [("loopback", d) for d in parts["loopback"]["drains"]]
    lines += TLS_NOTE
    lines += ["", "![drain](latency_drain.png)", ""]
    plot(drains, RESULTS / "latency_drain.png")
    (RESULTS / "latency.md").write_text("\n".join(lines))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("all", "netns", "loopback"), default="all")
    args = p.parse_args(argv)
    # A SIGTERM (timeout, Ctrl-C from make) unwinds like an exception, so the broker in
    # namespace B is stopped and the namespaces deleted on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = certs.make_ca(tmp)
        # The broker is 127.0.0.1 (loopback part) or namespace B's address (netns part).
        server = certs.make_server(tmp, hosts=["127.0.0.1", NS_SUBNET + ".2"], dns=["localhost"])
        PKI[:] = [ca.cert_pem, server.chain_pem, server.key_pem]
        failed = []
        for part, run in (("netns", part_netns), ("loopback", part_loopback)):
            if args.part not in ("all", part):
                continue
            try:
                result = run(tmp)
            except RelayError as e:
                # Not root, no /dev/net/tun: say so, run the other part, fail at the end.
                print("bench_latency: %s part: %s" % (part, e), file=sys.stderr)
                failed.append(part)
                continue
            (RESULTS / ("latency_%s.json" % part)).write_text(json.dumps(result, indent=1))
    print("\n".join(render()))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
