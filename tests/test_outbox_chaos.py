"""Chaos: real Mosquitto, real board processes, a real collector; every reading accounted for.

Sizes: `make test` runs the issue's sizes (500 readings across 5 broker restarts, 20 board
kills) except the fleet, which is 10 boards there: 50 CPython board processes booting at once
would take both cores from the rest of the suite. `make chaos` sets SECURENODE_CHAOS_FULL=1
and runs the 50-board fleet (and writes the spread to tests/bench/results/).
"""

import json
import os
import random
import signal
import statistics
import time
from pathlib import Path

import pytest

from collector_fixtures import CollectorProcess, device_report, wait_until
from conftest import SUBSCRIBER, Board
from host_sim.fleet import board_config
from host_sim.flash import board_command, prepare_flash
from host_sim.netem_relay import DelayRelay
from host_sim.servers.mosquitto import Broker

FULL = os.environ.get("SECURENODE_CHAOS_FULL") == "1"
RESULTS = Path(__file__).resolve().parent / "bench" / "results"

# Fast boards: short sampling windows, short deadlines, quick backoff.
FAST = {
    "sample": {"interval_ms": 50, "adc_pin": 34, "volts_per_count": 0.0125, "window_ms": 25,
               "samples": 16},
    "timeouts_ms": {"dns": 2000, "connect": 2000, "handshake": 3000, "io": 2000},
    "backoff": {"min_ms": 100, "max_ms": 800},
}


def write_air(path, link="up", up=True):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps({"aps": {"simnet": {"key": "simkey", "up": up}}, "link": link}))
    os.replace(tmp, path)


class Rig:
    """One board's flash, booted again and again (flash and outbox survive each process)."""

    def __init__(self, tmp_path, pki, ntp, device_id, broker_port, overrides=None, **options):
        cfg = board_config(device_id, broker_port, readings=0, interval_ms=50)
        cfg.update(json.loads(json.dumps(FAST)))
        for dotted, value in (overrides or {}).items():
            section, _, field = dotted.rpartition(".")
            target = cfg
            for part in filter(None, section.split(".")):
                target = target.setdefault(part, {})
            target[field] = value
        dev = pki.device(device_id)
        self.device_id = device_id
        self.flash = tmp_path / ("flash-" + device_id)
        self.air = tmp_path / ("air-" + device_id + ".json")
        write_air(self.air)
        prepare_flash(self.flash, cfg, {"ca.der": pki.ca.cert_der,
                                        "device.crt.der": dev.cert_der,
                                        "device.key.der": dev.key_der})
        options.setdefault("ntp", "127.0.0.1:%d" % ntp.address[1])
        options.setdefault("device_seed", device_id)
        options.setdefault("air", str(self.air))
        self.options = options
        self.boots = []

    def start(self, **extra):
        board = Board(self.device_id, board_command(self.flash, **dict(self.options, **extra)),
                      verbose=False)
        self.boots.append(board)
        return board

    def events(self, kind):
        return [e for b in self.boots for e in b.of(kind)]

    def stop(self):
        for b in self.boots:
            b.stop()


@pytest.fixture
def rigs(tmp_path, pki, ntp):
    made = []

    def make(device_id, broker_port, overrides=None, **options):
        rig = Rig(tmp_path, pki, ntp, device_id, broker_port, overrides, **options)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.stop()


@pytest.fixture
def own_broker(pki):
    # Its own broker per test: these tests restart it. Persistence keeps the collector's
    # session and its queued messages across a restart.
    b = Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
               subscribers=[SUBSCRIBER], persistence=True)
    b.start()
    yield b
    b.close()


@pytest.fixture
def collector_on(tmp_path, pki):
    started = []

    def start(broker, name="collector"):
        col = CollectorProcess(tmp_path / (name + ".db"), pki, broker.port,
                               client_id=name).start()
        started.append(col)
        return col

    yield start
    for col in started:
        col.stop()


def stored_seqs(col, device_id):
    from tools.collector import Store
    store = Store(str(col.db))
    try:
        return store.seqs(device_id)
    finally:
        store.close()


def wait_stored(col, device_id, want, timeout_s=20):
    """Wait until every seq in want is stored; fail naming the missing ones."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = stored_seqs(col, device_id)
        missing = sorted(set(want) - set(got))
        if not missing:
            return got
        if time.monotonic() > deadline:
            pytest.fail("%d acknowledged readings never stored: %s" % (len(missing), missing[:20]))
        time.sleep(0.1)


def test_readings_across_broker_restarts_are_all_stored_exactly_once(rigs, own_broker,
                                                                    collector_on):
    readings, restarts = 500, 5
    col = collector_on(own_broker)
    rig = rigs("chaos-restart", own_broker.port, {"run.max_readings": readings})
    board = rig.start()
    signals = [signal.SIGTERM, signal.SIGKILL] * restarts
    for i in range(restarts):
        target = (i + 1) * readings // (restarts + 1)
        wait_until(lambda: len(board.of("acked")) >= target, 60, "%d acks" % target)
        own_broker.stop(signals[i])
        time.sleep(random.uniform(0.2, 0.8))
        own_broker.start()
    board.wait_for("halted", timeout=90, reason="done")
    acked = sorted({e["seq"] for e in board.of("acked")})
    assert len(board.of("acked")) == readings
    want = list(range(1, acked[-1] + 1))
    assert acked == want
    got = wait_stored(col, rig.device_id, want)
    assert got == want   # UNIQUE(device_id, seq): each exactly once
    assert len(board.of("mqtt_connected")) >= restarts + 1


def test_readings_sampled_during_a_wifi_outage_arrive_afterwards_in_order(rigs, broker,
                                                                         collector_on):
    col = collector_on(broker, "collector-outage")
    rig = rigs("chaos-outage", broker.port, {"sample.interval_ms": 100})
    board = rig.start()
    board.wait_for("acked", timeout=30, seq=3)
    write_air(rig.air, link="down")
    outage_started = len(board.of("stored"))
    time.sleep(3.0)  # 30 sample intervals
    sampled_offline = [e["seq"] for e in board.of("stored")[outage_started:]]
    write_air(rig.air, link="up")
    # Sampling goes on in backoff; a join attempt (0.1-0.3 s here) blocks it, and missed
    # slots are not made up, so roughly half of the 30 slots hold a reading.
    assert len(sampled_offline) >= 10
    assert {"link_lost", "closed", "ack_timeout"} & set(board.errors())
    last = sampled_offline[-1]
    board.wait_for("acked", timeout=30, seq=last)
    board.stop()
    # The backlog drains a window (mqtt.inflight) per round trip, and each wait for PUBACKs
    # ends when a sample falls due: fresh samples keep their pace during the drain (no slot
    # missed, consecutive samples at most two intervals apart).
    events = board.events
    start = max(i for i, e in enumerate(events)
                if e.get("event") == "state" and e["state"] == "online")
    end = next(i for i, e in enumerate(events)
               if e.get("event") == "acked" and e["seq"] == last)
    during = events[start:end + 1]
    assert not [e for e in during if e.get("event") == "slots_missed"], during
    stamps = [e["t_ms"] for e in during if e.get("event") == "stored"]
    assert all(b - a <= 200 for a, b in zip(stamps, stamps[1:])), stamps
    acked = [e["seq"] for e in board.of("acked")]
    assert acked == sorted(acked) and len(acked) == len(set(acked)), "out of order or repeated"
    got = wait_until(lambda: (lambda s: s if s and s[-1] >= last else None)(
        stored_seqs(col, rig.device_id)), 10, "outage readings stored")
    assert got == list(range(1, got[-1] + 1))
    d = device_report(col.db, rig.device_id)
    assert d["gaps"] == [] and set(sampled_offline) <= set(got)


def test_board_killed_at_random_points_with_torn_writes_accounts_for_every_seq(
        rigs, broker, collector_on):
    kills = 20
    col = collector_on(broker, "collector-kills")
    # Slow flash (300 us/byte, ~30 ms per record at 50 ms intervals): kills often land mid-write.
    rig = rigs("chaos-kills", broker.port, flash_us_per_byte=300)
    rng = random.Random(5)
    for k in range(kills):
        board = rig.start()
        board.wait_for("acked", timeout=30)
        time.sleep(rng.uniform(0.05, 0.6))
        os.killpg(board.proc.pid, signal.SIGKILL)
        board.proc.wait()
    board = rig.start()
    board.wait_for("outbox_open", timeout=20)
    assert len(rig.events("outbox_open")) == kills + 1
    torn_seqs = [e["seq"] for e in rig.events("outbox_torn")]
    stored_on_board = [e["seq"] for e in rig.events("stored")]
    last = stored_on_board[-1]
    board.wait_for("acked", timeout=60, seq=last)
    board.stop()
    # Each boot reopened the outbox cleanly, found at most one torn record, and went on
    # with the next seq.
    per_boot = [len(b.of("outbox_torn")) for b in rig.boots]
    assert all(n <= 1 for n in per_boot), per_boot
    for b in rig.boots:
        assert not [e for e in b.events if e.get("event") == "console"], "traceback on a boot"
    for prev, cur in zip(rig.boots, rig.boots[1:]):
        prev_seqs = [e["seq"] for e in prev.of("stored")]
        opened = cur.of("outbox_open")[0]
        assert not prev_seqs or opened["next_seq"] > prev_seqs[-1]
    got = wait_until(lambda: (lambda s: s if s and s[-1] >= last else None)(
        stored_seqs(col, rig.device_id)), 20, "every reading stored")
    top = max(got[-1], max(torn_seqs or [0]))
    accounted = set(got) | set(torn_seqs)
    assert accounted == set(range(1, top + 1)), "a seq is neither stored nor torn"
    assert set(stored_on_board) <= set(got), "a reading the board stored never arrived"
    assert len(torn_seqs) <= kills
    d = device_report(col.db, rig.device_id)
    assert d["torn"] == len(torn_seqs)
    print("kills %d, torn writes %d, stored %d, duplicates absorbed %d"
          % (kills, len(torn_seqs), len(got), d["duplicates"]))


def test_full_outbox_drops_oldest_counts_them_and_the_report_shows_it(rigs, broker,
                                                                      collector_on):
    col = collector_on(broker, "collector-full")
    rig = rigs("chaos-full", broker.port, {"outbox.budget_bytes": 2048,
                                           "outbox.segment_bytes": 1024})
    board = rig.start()
    board.wait_for("acked", timeout=30, seq=2)
    write_air(rig.air, link="down")
    board.wait_for("outbox_dropped", timeout=30)
    time.sleep(1.0)
    write_air(rig.air, link="up")
    board.wait_for("state", timeout=30, state="online", previous="connecting")
    last = board.of("stored")[-1]["seq"]
    # The backlog drained past the outage. (Not "seq == last acked": on a loaded host the
    # outbox can still be full while it drains, and then that very reading may be dropped.)
    wait_until(lambda: any(e["seq"] >= last for e in board.of("acked")), 30,
               "an ack at or past seq %d" % last)
    total = board.of("outbox_dropped")[-1]["total"]
    # Drops happen while the outbox is full (offline, and while the backlog drains on a slow
    # host); a status goes out whenever the count changed, so one carries the final count.
    status = wait_until(lambda: [e for e in board.of("status")
                        if json.loads(e["payload"])["dropped"] == total], 20,
                        "a status carrying the final drop count %d" % total)
    board.stop()
    d = wait_until(lambda: (lambda d: d if d and d["dropped"] == total and d["last_seq"]
                            and d["last_seq"] >= last else None)(
        device_report(col.db, rig.device_id)), 20, "report with the drop count")
    missing = sum(b - a + 1 for a, b in d["gaps"])
    # The gaps are the dropped readings, less any that reached the broker while in flight
    # (the link went down before their PUBACK came back: up to mqtt.inflight of them).
    inflight = 8
    assert total - inflight <= missing <= total, (missing, total)
    # Oldest first: every gap lies before every reading sampled after the drops.
    assert status and d["gaps"][0][0] >= 3


def test_many_boards_reconnect_after_a_broker_restart_spread_by_jitter(rigs, own_broker):
    count = 50 if FULL else 10
    boards = []
    for i in range(count):
        rig = rigs("chaos-fleet-%02d" % i, own_broker.port,
                   {"sample.interval_ms": 500, "backoff.min_ms": 500, "backoff.max_ms": 4000})
        boards.append(rig.start())
    for b in boards:
        b.wait_for("acked", timeout=90)
    log_before = len(own_broker.log())
    own_broker.stop(signal.SIGKILL)
    time.sleep(1.0)
    own_broker.start()
    for b in boards:
        b.wait_for("mqtt_connected", timeout=60)
    # Host-side arrival times: the second mqtt_connected of each board.
    arrivals = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(arrivals) < count:
        arrivals = [b for b in boards if len(b.of("mqtt_connected")) >= 2]
        time.sleep(0.05)
    assert len(arrivals) == count
    delays = []
    for b in boards:
        second = b.of("mqtt_connected")[1]
        lost = [e for e in b.of("backoff")][0]
        delays.append(second["t_ms"] - lost["t_ms"])
    backoffs = [e["delay_ms"] for b in boards for e in b.of("backoff")]
    spread = max(delays) - min(delays)
    # What the broker saw: TLS connections accepted per second after its restart (its log
    # stamps whole seconds), failed attempts while it was down never reached it.
    per_second = {}
    for line in own_broker.log()[log_before:].splitlines():
        if "New client connected" in line and "chaos-fleet-" in line:
            stamp = line.split(":", 1)[0]
            per_second[stamp] = per_second.get(stamp, 0) + 1
    text = ("| boards | reconnect after loss, min ms | median ms | max ms | spread ms | "
            "backoff delays drawn (n, min..max ms) | broker: peak connects in one second |\n"
            "|---|---|---|---|---|---|---|\n"
            "| %d | %d | %d | %d | %d | %d, %d..%d | %d |\n"
            % (count, min(delays), statistics.median(delays), max(delays), spread,
               len(backoffs), min(backoffs), max(backoffs), max(per_second.values())))
    print(text)
    if FULL:
        (RESULTS / "chaos_reconnect_spread.md").write_text(
            "# Reconnect spread after a broker restart (SIGKILL)\n\n"
            "Broker down 1 s, then back on the same port. Per board: time from its first "
            "backoff after the loss to its reconnection (board clock); backoff min 500 ms, "
            "max 4000 ms, full jitter. Written by `make chaos`.\n\n" + text)
    # Full jitter: the first retries are spread over the first window, not bunched.
    first = [[e for e in b.of("backoff")][0]["delay_ms"] for b in boards]
    assert max(first) - min(first) >= 0.3 * 500
    assert spread >= 300
    assert sum(per_second.values()) == count


def test_half_open_connection_is_detected_within_one_and_a_half_keepalives(rigs, broker):
    rig = rigs("chaos-dark", broker.port, {"mqtt.keepalive_s": 2,
                                           "sample.interval_ms": 60000})
    board = rig.start()
    board.wait_for("acked", timeout=30, seq=1)
    board.wait_for("status", timeout=10)
    time.sleep(0.5)
    write_air(rig.air, link="dark")
    dark_at = time.monotonic()
    error = board.wait_for("error", timeout=10, kind="link_lost")
    detected = time.monotonic() - dark_at
    assert "half-open" in error["detail"]
    # 1.5 x keepalive = 3 s, plus the air's 100 ms re-read and one 100 ms check slice.
    assert detected <= 3.0 + 0.3, detected
    write_air(rig.air, link="up")
    board.wait_for("mqtt_connected", timeout=30)


def test_collector_restarted_mid_stream_loses_nothing_the_broker_acknowledged(
        rigs, broker, collector_on, tmp_path, pki):
    col = collector_on(broker, "collector-restart")
    rig = rigs("chaos-collector", broker.port, {"run.max_readings": 120})
    board = rig.start()
    board.wait_for("acked", timeout=30, seq=30)
    col.stop(signal.SIGKILL)
    time.sleep(1.0)
    col.start()
    board.wait_for("acked", timeout=30, seq=70)
    col.stop(signal.SIGTERM)
    time.sleep(0.5)
    col.start()
    board.wait_for("halted", timeout=60, reason="done")
    acked = sorted({e["seq"] for e in board.of("acked")})
    got = wait_until(lambda: (lambda s: s if s and s[-1] >= acked[-1] else None)(
        stored_seqs(col, rig.device_id)), 20, "every acknowledged reading stored")
    assert got == list(range(1, acked[-1] + 1))


def test_board_killed_with_a_window_in_flight_loses_and_doubles_nothing_in_storage(
        rigs, broker, collector_on, request):
    # Each boot starts offline so a backlog builds, then drains a window (mqtt.inflight 8) at
    # a time; the kill lands right after the first PUBACK, while PUBLISHes await theirs.
    # Through a relay holding each chunk 50 ms each way (RTT 100 ms): a window takes a round
    # trip to drain, as on a real network (at bare loopback it drains in a millisecond).
    kills = 6
    col = collector_on(broker, "collector-window")
    relay = DelayRelay(("127.0.0.1", broker.port), delay_ms=50).start()
    request.addfinalizer(relay.close)
    rig = rigs("chaos-window", relay.port, {"mqtt.inflight": 8})
    rng = random.Random(14)
    in_flight_at_kill = []
    for _ in range(kills):
        write_air(rig.air, link="down")
        board = rig.start()
        time.sleep(1.5)
        write_air(rig.air, link="up")
        board.wait_for("acked", timeout=30)
        time.sleep(rng.uniform(0, 0.1))
        os.killpg(board.proc.pid, signal.SIGKILL)
        board.proc.wait()
        time.sleep(0.2)  # the last lines the board printed are read
        published = {e["seq"] for e in board.of("published")}
        in_flight_at_kill.append(len(published - {e["seq"] for e in board.of("acked")}))
    board = rig.start()
    last = max(e["seq"] for e in rig.events("stored"))
    board.wait_for("acked", timeout=60, seq=last)
    board.stop()
    assert max(in_flight_at_kill) >= 2, in_flight_at_kill  # kills did land mid-window
    got = wait_until(lambda: (lambda s: s if s and s[-1] >= last else None)(
        stored_seqs(col, rig.device_id)), 20, "every reading stored")
    # None lost (no gap up to the last stored); UNIQUE(device, seq): none doubled.
    assert got == list(range(1, got[-1] + 1)) and got[-1] >= last
    # The unacknowledged tail of a killed window went again after the reboot (a new clean
    # session: fresh packet ids, so no DUP flag; storage dedupes by (device, seq)).
    sent = [e["seq"] for e in rig.events("published")]
    resent = sorted({seq for seq in sent if sent.count(seq) > 1})
    assert resent, "nothing was sent twice: no kill caught a window in flight"
    d = device_report(col.db, rig.device_id)
    print("kills %d, in flight at each kill %s, stored %d, seqs sent twice %d, duplicates "
          "absorbed by storage %d" % (kills, in_flight_at_kill, len(got), len(resent),
                                      d["duplicates"]))
