"""The crash path on the real MicroPython unix port (host_sim.board --runtime micropython).

The same injected faults as tests/test_crash_containment.py (a wrapper sensor.py on the
flash, never a hook in the firmware), but the interpreter is MicroPython: its exceptions, its
float time.time(), its LittleFS flash; machine.reset() and the watchdog are the launcher's
chip (host_sim/mp/launcher.py), which kills and re-boots the process as a board resets.
"""
import json
import time

from mp_fixtures import mp_launch  # noqa: F401  (fixture)
from test_crash_containment import (HANG, NO_AIR, QUICK, RAISE, UP_AIR, boots, faulty_flash,
                                    received_seqs, since_boot, stored_seqs, wait_boots)


def test_exception_on_micropython_is_recorded_reset_and_reported(
        mp_launch, broker, subscriber, tmp_path):
    air = tmp_path / "air.json"
    air.write_text(json.dumps(NO_AIR))
    config = dict(QUICK, **{"run.max_readings": 5})
    board = mp_launch("mp-crash", broker.port, config=config, files=faulty_flash(4, RAISE),
                      air=str(air), bytecode="mpy")
    fatal = board.wait_for("fatal", timeout=40)
    assert (fatal["kind"], fatal["detail"], fatal["count"]) == ("RuntimeError", "injected fault", 1)
    before = stored_seqs(board)
    assert before == [1, 2, 3]
    air.write_text(json.dumps(UP_AIR))
    wait_boots(board, 2, timeout=30)
    second = boots(board)[1]
    assert second["crash"] == {"kind": "RuntimeError", "detail": "injected fault", "count": 1}
    assert second["reset_cause"] == "hard"
    board.wait_for("halted", timeout=60, reason="done")
    status = json.loads(since_boot(board, 2, "status")[0]["payload"])
    assert (status["crash"], status["reset_cause"]) == (second["crash"], "hard")
    assert set(before) <= set(received_seqs(subscriber, "mp-crash", before))
    # time.time() is a float on this port: timestamps are whole seconds all the same.
    assert all(type(r["timestamp"]) is int for r in subscriber.readings("mp-crash"))


def test_hang_on_micropython_is_ended_by_the_watchdog(mp_launch, broker, subscriber, tmp_path):
    air = tmp_path / "air.json"
    air.write_text(json.dumps(NO_AIR))
    config = dict(QUICK, **{"run.max_readings": 4})
    board = mp_launch("mp-hang", broker.port, config=config, files=faulty_flash(3, HANG),
                      air=str(air), bytecode="mpy")
    wd = board.wait_for("watchdog", timeout=30)
    assert wd["timeout_ms"] is not None
    board.wait_for("stored", timeout=30, seq=2)
    started = time.monotonic()
    air.write_text(json.dumps(UP_AIR))
    wait_boots(board, 2, timeout=wd["timeout_ms"] / 1000 + 20)
    assert time.monotonic() - started >= wd["timeout_ms"] / 1000 - 2
    second = boots(board)[1]
    assert (second["reset_cause"], second["crash"]) == ("wdt", None)
    assert board.of("fatal") == []
    board.wait_for("halted", timeout=60, reason="done")
    assert json.loads(since_boot(board, 2, "status")[0]["payload"])["reset_cause"] == "wdt"
    assert set([1, 2]) <= set(received_seqs(subscriber, "mp-hang", [1, 2]))
