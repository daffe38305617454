"""Round trips to the first reading, and a 1,000-reading backlog drained a window at a time,
at RTT 100 ms, on both runtimes (CPython simulator and the real MicroPython unix port).

The network: host_sim/netem_relay.py between the board and a real Mosquitto, holding every
chunk 50 ms each way (this kernel has no netem). It relays at the TCP level, so the TCP
handshake itself is not delayed: it is counted as the 1 RTT it costs on a network. WiFi and
NTP are the simulator's (its own delays, not the relay's); DNS is the board resolving
"localhost" (no round trip). Everything binds 127.0.0.1 and stops at the end.

Writes tests/bench/results/latency.md and latency_drain.png.

    .venv/bin/python tests/bench/bench_latency.py        (about 2 minutes)
"""

import json
import sys
import tempfile
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
from tools import certs  # noqa: E402

RESULTS = HERE / "results"
DELAY_MS = 50
RTT_MS = 2 * DELAY_MS
BACKLOG = 1000
WINDOWS = (4, 8, 16)
OUTBOX = {"budget_bytes": 262144, "segment_bytes": 4096, "ack_batch": 8}
MAX_RECORD = 512  # config.py's _OUTBOX_MAX_RECORD: what app.py opens the outbox with

PREFILL = r'''
from securenode import outbox
box = outbox.Outbox("outbox", %d, %d, %d, %d)
box.open()
for seq in range(1, %d + 1):
    box.append(seq, b'{"id":"%s","seq":%%d,"timestamp":1795600000,"status":0,"voltage":230.0,"freq":50.00}' %% seq)
print(box.depth)
'''


def run_board(tmp, pki, ntp, device_id, port, config, runtime, timeout_s, until):
    cfg = board_config(device_id, port, readings=0, interval_ms=1000)
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
        out = run_cpython(firmware_files("outbox"), PREFILL % (
            o["budget_bytes"], o["segment_bytes"], MAX_RECORD, o["ack_batch"],
            config["prefill"], device_id), flash)
        assert out.strip().splitlines()[-1] == str(config["prefill"]), out
    options = {"ntp": "127.0.0.1:%d" % ntp.address[1], "device_seed": device_id}
    if runtime == "micropython":
        # The tests' MicroPython board (tests/mp_fixtures.py): memory is not measured here.
        options.update(runtime="micropython", board="esp32-spiram")
    board = BoardProcess(device_id, board_command(flash, **options), verbose=False)
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


def round_trips(tmp, pki, broker, ntp, runtime, attempt):
    with DelayRelay(("127.0.0.1", broker.port), DELAY_MS) as relay:
        board = run_board(tmp, pki, ntp, "lat-%s-%d" % (runtime, attempt), relay.port,
                          {"run.max_readings": 1}, runtime, 60,
                          lambda b: first(b, "halted") is not None)
        flights = relay.connections[0].flights()
    # Flights towards the board on TLS 1.2: ServerHello..ServerHelloDone, then
    # ChangeCipherSpec+Finished, then CONNACK, then the PUBACKs of the status and the first
    # reading (sent together), then the broker's answer to DISCONNECT. A flight the relay read
    # at t reaches the board at t + DELAY.
    downs = [f for f in flights if f[0] == "down"]
    arrivals_ms = [1000 * f[1] + DELAY_MS for f in downs]
    # Cross-check on the board's own clock: CONNACK (tls_ok follows it) -> reading acked.
    ev = {k: first(board, k) for k in ("boot", "wifi_up", "time_synced", "tls_ok", "acked")}
    steps = {
        "joining -> wifi_up (sim)": ev["wifi_up"]["t_ms"] - first(board, "state",
                                                                 state="joining")["t_ms"],
        "syncing -> time_synced (sim NTP)": ev["time_synced"]["t_ms"] - first(
            board, "state", state="syncing")["t_ms"],
    }
    return {"runtime": runtime, "flights": flights, "arrivals_ms": arrivals_ms,
            "steps": steps, "first_puback_ms": RTT_MS + arrivals_ms[3],
            "board_connack_to_ack_ms": ev["acked"]["t_ms"] - ev["tls_ok"]["t_ms"],
            "acked_seq": ev["acked"]["seq"],
            "sampled_before_connect": first(board, "stored")["t_ms"] <= first(
                board, "state", state="connecting")["t_ms"] + 1000}


def drain(tmp, pki, broker, ntp, runtime, window):
    with DelayRelay(("127.0.0.1", broker.port), DELAY_MS) as relay:
        config = {"mqtt.inflight": window, "prefill": BACKLOG,
                  "sample.interval_ms": 1000}
        config.update({"outbox." + k: v for k, v in OUTBOX.items()})
        board = run_board(tmp, pki, ntp, "drain-%s-%d" % (runtime, window),
                          relay.port, config, runtime, 120,
                          lambda b: first(b, "acked", seq=BACKLOG) is not None)
        downs = [f for f in relay.connections[0].flights() if f[0] == "down"]
    online = first(board, "state", state="online")["t_ms"]
    acks = [(e["t_ms"] - online, e["seq"]) for e in board.of("acked") if e["seq"] <= BACKLOG]
    # SYN -> CONNACK as the relay saw it: TCP (1 RTT), then the third flight towards the
    # board (two of TLS 1.2, then CONNACK) arrives DELAY after the relay read it.
    return {"runtime": runtime, "window": window,
            "connect_ms": RTT_MS + 1000 * downs[2][1] + DELAY_MS,
            "drain_ms": acks[-1][0], "curve": acks,
            "bound_ms": 1.2 * BACKLOG / window * RTT_MS}


def plot(drains, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for d in drains:
        ax.plot([t / 1000 for t, _ in d["curve"]], [s for _, s in d["curve"]],
                label="%s, inflight %d (%.1f s)" % (d["runtime"], d["window"],
                                                     d["drain_ms"] / 1000))
        ax.axvline(d["bound_ms"] / 1000, linestyle=":", linewidth=0.8)
    ax.set_xlabel("seconds since CONNACK (RTT %d ms)" % RTT_MS)
    ax.set_ylabel("readings acknowledged (backlog %d)" % BACKLOG)
    ax.set_title("Backlog drain, dotted: goal 1.2 x (1000 / inflight) RTT")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca = certs.make_ca(tmp)
        server = certs.make_server(tmp)
        pki = None
        with NtpServer() as ntp, Broker(ca.cert_pem, server.chain_pem, server.key_pem) as broker:
            trips = []
            for rt in ("cpython", "micropython"):
                # Median of three boots: two shared cores make single runs jumpy.
                runs = sorted((round_trips(tmp, pki, broker, ntp, rt, i) for i in range(3)),
                              key=lambda t: t["first_puback_ms"])
                runs[1]["spread"] = (runs[0]["first_puback_ms"], runs[2]["first_puback_ms"])
                trips.append(runs[1])
            drains = [drain(tmp, pki, broker, ntp, rt, w) for rt in ("cpython",)
                      for w in WINDOWS]
            drains.append(drain(tmp, pki, broker, ntp, "micropython", 8))
    lines = ["# Round trips and backlog drain at RTT %d ms" % RTT_MS, "",
             "`make bench` (tests/bench/bench_latency.py): board -> delaying TCP relay "
             "(host_sim/netem_relay.py, %d ms each way) -> Mosquitto, all on loopback. The "
             "relay does not delay the TCP handshake (it is a TCP relay): it is counted as "
             "1 RTT. TLS: what both runtimes negotiate, TLS 1.2 "
             "ECDHE-ECDSA-AES256-GCM-SHA384 on P-256 (MicroPython's Mbed TLS has no TLS 1.3)."
             % DELAY_MS, "",
             "## First reading", "",
             "| runtime | flights towards the board (arrival, ms after TCP connect) | "
             "first reading's PUBACK, ms from SYN (median of 3; min-max) | round trips | "
             "goal (TLS 1.2) | "
             "board clock: CONNACK -> reading acked, ms | "
             "sampled before connecting | WiFi join (sim) ms | NTP (sim) ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in trips:
        lines.append("| %s | %s | %d (%d-%d) | %.2f | 5 (+10%%: 5.5) | %d | %s | %d | %d |" % (
            t["runtime"], ", ".join("%d" % a for a in t["arrivals_ms"]),
            t["first_puback_ms"], t["spread"][0], t["spread"][1],
            t["first_puback_ms"] / RTT_MS,
            t["board_connack_to_ack_ms"],
            "yes" if t["sampled_before_connect"] else "no",
            t["steps"]["joining -> wifi_up (sim)"],
            t["steps"]["syncing -> time_synced (sim NTP)"]))
    lines += ["", "Flights towards the board: ServerHello..ServerHelloDone, Finished, "
              "CONNACK, the PUBACKs of the status and the first reading (in flight together), "
              "the broker's close after DISCONNECT. Round trips to the first PUBACK: TCP 1 "
              "(by construction), TLS 1.2 2, CONNECT 1, first reading 1 = 5; the rest is "
              "processing (the relay's, Mosquitto's, the board's). DNS: \"localhost\", "
              "resolved on the board, no round trip. TLS 1.3 (4 RTT): neither runtime speaks "
              "it (MicroPython's Mbed TLS offers 1.2 only), so it is not measured.", "",
              "## Backlog of %d readings after an outage" % BACKLOG, "",
              "| runtime | mqtt.inflight | connect (SYN -> CONNACK), ms | drain after CONNACK, "
              "ms | round trips | goal 1.2 x (1000/inflight) RTT, ms | met |",
              "|---|---|---|---|---|---|---|"]
    for dr in drains:
        lines.append("| %s | %d | %d | %d | %.1f | %d | %s |" % (
            dr["runtime"], dr["window"], dr["connect_ms"], dr["drain_ms"],
            dr["drain_ms"] / RTT_MS, dr["bound_ms"],
            "yes" if dr["drain_ms"] <= dr["bound_ms"] else "NO"))
    lines += ["", "![drain](latency_drain.png)", ""]
    RESULTS.mkdir(exist_ok=True)
    plot(drains, RESULTS / "latency_drain.png")
    (RESULTS / "latency.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps([{k: v for k, v in t.items() if k != "flights"} for t in trips]))


if __name__ == "__main__":
    main()
