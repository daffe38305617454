"""The real simulated board against hostile and broken MQTT brokers (tests/hostile_broker.py,
TLS with the test PKI): each misbehaviour ends in its named error within its own deadline,
never in a desync; a broker that accepts and drops gets exponentially spaced attempts; no
reading counts as acked without its PUBACK; a resend after a lost connection carries DUP;
every transport's TCP connect has its own deadline; DISCONNECT reaches the broker on close
without a RST behind it."""

import json
from pathlib import Path

import pytest

from hostile_broker import DISCONNECT, PUBLISH, HostileBroker, NeverAccepts
from mp_fixtures import mp_launch  # noqa: F401  (fixture: the real MicroPython runtime)
from host_sim.servers.mosquitto import free_port
from host_sim.servers.tls_recorder import RecordingTlsServer

IO_MS, CONNECT_MS, HANDSHAKE_MS = 1500, 1000, 3000
FAST = {"timeouts_ms.io": IO_MS, "timeouts_ms.connect": CONNECT_MS,
        "timeouts_ms.handshake": HANDSHAKE_MS, "backoff.min_ms": 100, "backoff.max_ms": 400}
SLACK_MS = 1500  # loopback TLS handshake and a loaded machine's scheduling, at most


def seq_of(payload):
    return json.loads(payload)["seq"]


def assert_acked_only_with_puback(board, broker):
    """Every reading the board counted as acked was acknowledged by the broker."""
    acked_by_broker = {seq_of(p) for p in broker.acked_payloads()}
    counted = {e["seq"] for e in board.of("acked")}
    assert counted <= acked_by_broker, (counted, acked_by_broker)


def elapsed_ms(board, start_event, end_event, **end_fields):
    end = board.wait_for(end_event, timeout=30, **end_fields)
    starts = [e for e in board.of(start_event[0]) if all(e.get(k) == v for k, v in
                                                          start_event[1].items())
              and e["t_ms"] <= end["t_ms"]]
    assert starts, "no %s before %s" % (start_event, end)
    return end, end["t_ms"] - starts[-1]["t_ms"]


def test_connack_refusal_is_named(launch, pki):
    with HostileBroker(pki, "refuse") as broker:
        board = launch("hb-refuse", broker.port, config=FAST)
        error = board.wait_for("error", timeout=30, kind="connack_refused")
        assert "not authorised (5)" in error["detail"]
        assert not board.of("mqtt_connected")


def test_nothing_listening_is_a_connect_error_not_a_tls_one(launch):
    board = launch("hb-closed", free_port(), config=FAST)
    error = board.wait_for("error", timeout=30, kind="connect")
    assert "refused" in error["detail"]
    assert set(board.errors()) == {"connect"}


def test_stall_before_connack_ends_in_connack_timeout_after_the_io_deadline(launch, pki):
    with HostileBroker(pki, "stall") as broker:
        board = launch("hb-stall", broker.port, config=FAST)
        error, ms = elapsed_ms(board, ("state", {"state": "connecting"}), "error",
                               kind="connack_timeout")
        assert "within %d ms (timeouts_ms.io)" % IO_MS in error["detail"]
        assert IO_MS <= ms <= IO_MS + SLACK_MS, ms
        assert broker.connections[0].of(1), "the board sent no CONNECT"


def test_tls_handshake_has_its_own_deadline(launch, pki):
    with RecordingTlsServer(pki.server.chain_pem, pki.server.key_pem, speak_tls=False) as mute:
        board = launch("hb-mute", mute.port, config=FAST)
        error, ms = elapsed_ms(board, ("state", {"state": "connecting"}), "error",
                               kind="handshake_timeout")
        assert "within %d ms (timeouts_ms.handshake)" % HANDSHAKE_MS in error["detail"]
        assert HANDSHAKE_MS <= ms <= HANDSHAKE_MS + SLACK_MS, ms


@pytest.mark.parametrize("transport", ["mqtts", "mqtt_wss", "wss", "jsonl"])
def test_tcp_connect_has_its_own_deadline_on_every_transport(launch, transport):
    with NeverAccepts() as blackhole:
        cfg = dict(FAST)
        if transport in ("mqtt_wss", "wss"):
            cfg.update({"transport": transport,
                        "wss": {"host": "localhost", "port": blackhole.port, "token": "t0k3n"}})
        elif transport == "jsonl":
            cfg.update({"transport": "jsonl",
                        "jsonl": {"host": "localhost", "port": blackhole.port}})
        board = launch("hb-blackhole-" + transport.replace("_", ""), blackhole.port,
                       config=cfg)
        error, ms = elapsed_ms(board, ("state", {"state": "connecting"}), "error",
                               kind="connect")
        assert "no answer within %d ms (timeouts_ms.connect)" % CONNECT_MS in error["detail"]
        assert CONNECT_MS <= ms <= CONNECT_MS + SLACK_MS, ms


def test_a_broker_that_accepts_and_drops_gets_exponentially_spaced_attempts(launch, pki):
    window_s = 6.0
    with HostileBroker(pki, "drop") as broker:
        board = launch("hb-drop", broker.port, config=dict(FAST, **{
            "backoff.min_ms": 100, "backoff.max_ms": 3200}))
        board.wait_for("backoff", timeout=30, attempt=5)
        first = broker.connections[0].accepted
        import time
        time.sleep(max(0.0, first + window_s - time.monotonic()))
        in_window = [c for c in broker.connections if c.accepted - first <= window_s]
    # Attempts 1..n after CONNACK-and-drop: ceilings 100, 200, 400, ... 3200 ms (full
    # jitter). Reset on CONNACK, the ceiling would stay 100 ms: ~40 connections in 6 s.
    assert 3 <= len(in_window) <= 14, len(in_window)
    attempts = [e["attempt"] for e in board.of("backoff")]
    assert attempts == list(range(1, len(attempts) + 1)), attempts
    assert not board.of("acked")


def test_a_withheld_puback_is_an_ack_timeout_and_the_resend_carries_dup(launch, pki):
    # First connection: the status is acknowledged, the reading never; then a fair broker.
    with HostileBroker(pki, lambda i: "withhold" if i == 0 else "normal") as broker:
        board = launch("hb-withhold", broker.port, config=dict(FAST, **{
            "run.max_readings": 2, "sample.interval_ms": 1000}))
        error, ms = elapsed_ms(board, ("published", {"seq": 1}), "error", kind="ack_timeout")
        assert "no PUBACK" in error["detail"] and "%d ms (timeouts_ms.io)" % IO_MS \
            in error["detail"]
        assert IO_MS <= ms <= IO_MS + SLACK_MS, ms
        assert [e for e in board.of("acked") if e["t_ms"] <= error["t_ms"]] == []
        board.wait_for("halted", timeout=30, reason="done")
        readings = broker.published()
        first = [r for r in readings if r[0].index == 0]
        again = [r for r in readings if r[0].index == 1 and seq_of(r[3]) == 1]
        assert first and not first[0][1] & 8, "the first send must not carry DUP"
        assert again and again[0][1] & 8, "the resend on a new connection must carry DUP"
        assert again[0][3] == first[0][3], "a resend is the same reading"
        assert_acked_only_with_puback(board, broker)


def test_a_puback_for_an_id_never_sent_is_a_protocol_error(launch, pki):
    with HostileBroker(pki, "wrong_id") as broker:
        board = launch("hb-wrongid", broker.port, config=FAST)
        error = board.wait_for("error", timeout=30, kind="protocol")
        assert "never sent" in error["detail"]
        assert not board.of("acked")
        assert_acked_only_with_puback(board, broker)


def test_duplicate_pubacks_are_counted_and_ignored_without_desync(launch, pki):
    with HostileBroker(pki, "duplicate") as broker:
        board = launch("hb-dup", broker.port, config={"run.max_readings": 6})
        board.wait_for("halted", timeout=60, reason="done")
        assert board.errors() == []
        assert [e["seq"] for e in board.of("acked")] == [1, 2, 3, 4, 5, 6]
        dups = board.of("mqtt_duplicate_puback")
        assert len(dups) >= 5 and dups[-1]["count"] == len(dups)
        assert len(broker.connections) == 1
        assert_acked_only_with_puback(board, broker)


@pytest.mark.parametrize("behaviour, text", [
    ("long_length", "remaining length longer than 4 bytes"),
    ("huge_length", "announces 268435455 bytes, over the bound of 512"),
    ("garbage", "malformed PUBACK (first byte 0x48)"),
])
def test_malformed_answers_are_named_protocol_errors_with_memory_bounded(launch, pki,
                                                                        behaviour, text):
    with HostileBroker(pki, behaviour) as broker:
        board = launch("hb-" + behaviour.replace("_", ""), broker.port, config=FAST)
        error = board.wait_for("error", timeout=30, kind="protocol")
        assert text in error["detail"]
        board.wait_for("backoff", timeout=10)
        assert not board.of("acked")
        assert_acked_only_with_puback(board, broker)
        # The simulated board is a CPython process: a 256 MB read would show in its peak.
        status = Path("/proc/%d/status" % board.proc.pid).read_text()
        peak_kb = int(status.split("VmHWM:")[1].split()[0])
        assert peak_kb < 150 * 1024, peak_kb


def test_an_unsolicited_publish_is_acknowledged_counted_and_dropped(launch, pki):
    with HostileBroker(pki, "unsolicited") as broker:
        board = launch("hb-unsol", broker.port, config={"run.max_readings": 2})
        board.wait_for("halted", timeout=60, reason="done")
        assert board.errors() == []
        seen = board.of("mqtt_unsolicited")
        assert [(e["topic"], e["qos"], e["bytes"], e["count"]) for e in seen] == [
            ("foreign", 1, 2, 1)]
        assert broker.connections[0].pubacks_from_client == [0x7F01]
        assert [e["seq"] for e in board.of("acked")] == [1, 2]


def test_a_missing_pingresp_is_a_lost_link_after_the_io_deadline(launch, pki):
    # keepalive 2 s: PINGREQ after 1 s of silence, its PINGRESP due 600 ms later, well
    # before the dead-link check (1.5 x keepalive) would speak.
    io_ms = 600
    with HostileBroker(pki, "no_pingresp") as broker:
        board = launch("hb-noping", broker.port, config=dict(FAST, **{
            "mqtt.keepalive_s": 2, "sample.interval_ms": 60000, "timeouts_ms.io": io_ms}))
        error, ms = elapsed_ms(board, ("state", {"state": "online"}), "error",
                               kind="link_lost")
        assert "no PINGRESP" in error["detail"] and "half-open" in error["detail"]
        assert "within %d ms (timeouts_ms.io)" % io_ms in error["detail"]
        assert 1000 + io_ms <= ms <= 1000 + io_ms + SLACK_MS, ms
        assert any(p[1] == 12 for p in broker.connections[0].packets)


def test_disconnect_reaches_the_broker_on_close_with_no_reset_behind_it(launch, pki):
    # The broker sends a PINGRESP nobody asked for after each PUBACK and reads slowly: a
    # board that closed with it unread would make its kernel answer with RST.
    with HostileBroker(pki, "chatty") as broker:
        board = launch("hb-chatty", broker.port, config={"run.max_readings": 2})
        board.wait_for("halted", timeout=60, reason="done")
        import time
        deadline = time.monotonic() + 5
        conn = broker.connections[0]
        while conn.end is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert conn.of(DISCONNECT), "no DISCONNECT reached the broker"
        assert conn.end == "eof", conn.end
        assert [e["seq"] for e in board.of("acked")] == [1, 2]
        assert len(conn.of(PUBLISH)) == 3  # status + 2 readings


def test_jsonl_tries_each_pinned_root_where_the_port_takes_one_at_a_time(tmp_path, pki, launch):
    # MicroPython before 1.29 takes one certificate in cadata: the rogue root (first) fails
    # verification, the real one (second) is tried on a fresh connection.
    from collector_fixtures import CollectorProcess

    col = CollectorProcess(tmp_path / "r.db", pki, jsonl=True).start()
    try:
        board = launch("hb-jsonl-roots", 1, mpy="1.24", config={
            "transport": "jsonl", "jsonl": {"host": "localhost", "port": col.jsonl_port},
            "tls.ca": ["rogue.der", "ca.der"], "run.max_readings": 1},
            files={"rogue.der": pki.rogue_ca.cert_der})
        board.wait_for("halted", timeout=60, reason="done")
        assert board.errors() == []
        assert [e["seq"] for e in board.of("acked")] == [1]
    finally:
        col.stop()


def test_a_clean_stop_says_disconnect_to_mosquitto_so_the_will_stays_unsaid(launch, broker):
    board = launch("hb-bye", broker.port, config={"run.max_readings": 2})
    board.wait_for("halted", timeout=60, reason="done")
    import time
    deadline = time.monotonic() + 5
    while "Client hb-bye " not in broker.log().split("as hb-bye")[-1] \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    tail = broker.log().split("as hb-bye")[-1]
    # Mosquitto 2 logs "disconnected." after DISCONNECT, "closed its connection." without it
    # (and then publishes the will).
    assert "Client hb-bye disconnected." in tail, tail


# --- the same brokers against the firmware on the real MicroPython unix port ------------------
@pytest.mark.parametrize("behaviour, kind, text", [
    ("stall", "connack_timeout", "within %d ms (timeouts_ms.io)" % IO_MS),
    ("huge_length", "protocol", "over the bound of 512"),
    ("wrong_id", "protocol", "never sent"),
    ("withhold", "ack_timeout", "no PUBACK"),
])
def test_on_real_micropython_each_misbehaviour_ends_in_its_named_error(mp_launch, pki,
                                                                       behaviour, kind, text):
    with HostileBroker(pki, lambda i: behaviour if i == 0 else "normal") as broker:
        board = mp_launch("hbmp-" + behaviour.replace("_", ""), broker.port,
                          config=dict(FAST, **{"run.max_readings": 2}))
        error = board.wait_for("error", timeout=30, kind=kind)
        assert text in error["detail"]
        # The next connection is fair: the board recovers and delivers; a reading sent on
        # the first one (all but "stall" got that far) goes again, the same bytes with DUP.
        board.wait_for("halted", timeout=60, reason="done")
        assert_acked_only_with_puback(board, broker)
        first = [r[3] for r in broker.published() if r[0].index == 0]
        resent = [r[3] for r in broker.published() if r[0].index > 0 and r[1] & 8]
        assert resent == first and bool(first) == (behaviour != "stall"), (first, resent)


def test_on_real_micropython_duplicates_and_unsolicited_publishes_cause_no_error(mp_launch,
                                                                                pki):
    with HostileBroker(pki, lambda i: "duplicate") as broker:
        board = mp_launch("hbmp-dup", broker.port, config={"run.max_readings": 4})
        board.wait_for("halted", timeout=60, reason="done")
        assert board.errors() == []
        assert len(board.of("mqtt_duplicate_puback")) >= 3
        assert_acked_only_with_puback(board, broker)
    with HostileBroker(pki, lambda i: "unsolicited") as broker:
        board = mp_launch("hbmp-unsol", broker.port, config={"run.max_readings": 2})
        board.wait_for("halted", timeout=60, reason="done")
        assert board.errors() == []
        assert broker.connections[0].pubacks_from_client == [0x7F01]
