"""Readings go on while a board waits for the operator's approval: provisioning polls the
base station for up to provisioning.wait_s, and the board takes each reading as it falls
due between polls (app.Node.idle), losing at most one slot to a blocking step and saying
so (``slots_missed``). A simulated board against an in-process base station that nobody
approves (tests/provision_helpers.py)."""

import socket
import time

import pytest

from provision_helpers import provisioning_config, start_base_station

INTERVAL_MS = 500
WATCH_S = 4.0


@pytest.fixture
def station(pki, pw_broker, tmp_path):
    bs = start_base_station(pki, pw_broker, tmp_path / "state")
    yield bs
    bs.stop()


def test_readings_stay_on_cadence_while_waiting_for_approval(station, launch):
    config = provisioning_config(station.port, wait_s=60)
    config["sample.interval_ms"] = INTERVAL_MS
    board = launch("prov-sampling", 1, config=config, clock="host")
    shown = board.wait_for("provision_code")
    time.sleep(WATCH_S)
    assert board.proc.poll() is None
    events = list(board.events)
    waiting = [e for e in events if e["t_ms"] > shown["t_ms"]]
    # Still waiting: nobody approved, and the board never left the provisioning state.
    assert not [e for e in waiting if e["event"] in ("provisioned", "state")]
    stored = [e for e in waiting if e["event"] == "stored"]
    missed = [e for e in waiting if e["event"] == "slots_missed"]
    assert stored, "no reading was stored in %.1f s of waiting for approval" % WATCH_S
    span_ms = stored[-1]["t_ms"] - shown["t_ms"]
    slots = span_ms // INTERVAL_MS
    # Every slot of the span is a stored reading or a reported miss (+-1 at either end).
    assert len(stored) >= 0.6 * slots, (len(stored), span_ms)
    assert abs(len(stored) + sum(e["slots"] for e in missed) - slots) <= 2, (stored, missed)
    # Polls are short bounded steps (a local TLS exchange): they cost few slots, if any
    # (a loaded test host can stretch one past an interval; it is then reported above).
    assert sum(e["slots"] for e in missed) <= 0.3 * slots, missed
    polls = [e for e in waiting if e["event"] == "error" and e["kind"] == "provision_poll"]
    assert not polls, polls


def test_a_blocking_step_longer_than_the_interval_reports_the_slots_it_cost(launch):
    # A base station that accepts TCP and never speaks TLS: each attempt blocks for the
    # handshake deadline (1.2 s, over two 500 ms slots). The readings those slots would have
    # held are not made up; the board says how many it lost, and samples on after it.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        config = provisioning_config(silent.getsockname()[1], wait_s=60)
        config.update({"sample.interval_ms": INTERVAL_MS, "timeouts_ms.handshake": 1200})
        board = launch("prov-stalled", 1, config=config, clock="host")
        board.wait_for("error", kind="handshake_timeout", timeout=20)
        board.wait_for("slots_missed", timeout=10)
        time.sleep(1.0)
    finally:
        silent.close()
    missed = board.of("slots_missed")
    assert all(e["slots"] >= 1 and e["late_ms"] >= INTERVAL_MS for e in missed), missed
    # Readings resumed after the blocked step: one right away, then on cadence.
    first_miss = missed[0]["t_ms"]
    assert [e for e in board.of("stored") if e["t_ms"] >= first_miss]
