"""Crash containment on a simulated board: nothing the interpreter does leaves it dead.

A fault is injected by a firmware file on the test's flash, never by a hook in the firmware:
``securenode/sensor.py`` is replaced by a wrapper around the real module (copied next to it
as ``sensor_real.py``) whose Nth read raises or hangs, once (a marker file on flash keeps the
second boot healthy). A real board never carries that file, so it can never trip it.
"""

import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SENSOR = (ROOT / "firmware" / "securenode" / "sensor.py").read_bytes()

FAULTY_SENSOR = """
# Test fault: read number {at} of the first boot {what}; fault.done on flash makes it once.
import os
import time
from securenode import sensor_real


class Sampler(sensor_real.Sampler):
    reads = 0

    def read(self):
        Sampler.reads += 1
        if Sampler.reads == {at}:
            try:
                os.stat("fault.done")
            except OSError:
                open("fault.done", "w").close()
                {fault}
        return sensor_real.Sampler.read(self)
"""
RAISE = 'raise RuntimeError("injected fault")'
HANG = "while True:\n                    time.sleep_ms(100)  # a call that never returns"
NO_AIR = {"aps": {}, "link": "up"}
UP_AIR = {"aps": {"simnet": {"key": "simkey", "up": True}}, "link": "up"}
# Short bounded steps, so the watchdog derived from them is short too (startup.watchdog_ms).
QUICK = {"wifi.timeout_ms": 500, "ntp.timeout_ms": 1000, "timeouts_ms.dns": 500,
         "timeouts_ms.connect": 1000, "timeouts_ms.handshake": 2000, "timeouts_ms.io": 1000,
         "backoff.min_ms": 100, "backoff.max_ms": 300, "sample.interval_ms": 200}


def faulty_flash(at, fault):
    src = FAULTY_SENSOR.format(at=at, what="raises" if fault == RAISE else "hangs", fault=fault)
    return {"securenode/sensor.py": src.encode(), "securenode/sensor_real.py": SENSOR}


def boots(board):
    return board.of("boot")


def wait_boots(board, n, timeout):
    deadline = time.monotonic() + timeout
    while len(boots(board)) < n and time.monotonic() < deadline:
        if board.proc.poll() is not None:
            break
        time.sleep(0.05)
    assert len(boots(board)) >= n, "\n".join(json.dumps(e) for e in board.events[-30:])


def since_boot(board, n, kind):
    """Events of `kind` printed after the n-th boot event (1-based)."""
    seen = 0
    found = []
    for e in list(board.events):
        seen += e.get("event") == "boot"
        if seen >= n and e.get("event") == kind:
            found.append(e)
    return found


def stored_seqs(board):
    return sorted(e["seq"] for e in board.of("stored"))


def received_seqs(subscriber, device_id, expected, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seqs = sorted({r["seq"] for r in subscriber.readings(device_id)})
        if set(expected) <= set(seqs):
            return seqs
        time.sleep(0.05)
    return sorted({r["seq"] for r in subscriber.readings(device_id)})


def test_float_time_from_the_interpreter_still_gives_integer_timestamps(
        launch, broker, subscriber):
    # The unix port's time.time() is a float: a reading's timestamp must stay whole seconds.
    board = launch("board-ftime", broker.port, config={"run.max_readings": 3},
                   time_type="float")
    board.wait_for("halted", timeout=60, reason="done")
    assert board.errors() == []
    readings = subscriber.readings("board-ftime")
    deadline = time.monotonic() + 5
    while len(readings) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        readings = subscriber.readings("board-ftime")
    assert len(readings) >= 3
    for r in readings:
        assert type(r["timestamp"]) is int and r["timestamp"] > 1_700_000_000


def test_an_exception_escaping_the_app_is_recorded_reset_and_reported_next_boot(
        launch, broker, subscriber, tmp_path):
    air = tmp_path / "air.json"
    air.write_text(json.dumps(NO_AIR))  # no WiFi: readings wait in the outbox
    config = dict(QUICK, **{"run.max_readings": 6})
    board = launch("board-crash", broker.port, config=config, files=faulty_flash(4, RAISE),
                   air=str(air))
    fatal = board.wait_for("fatal", timeout=30)
    assert (fatal["kind"], fatal["detail"], fatal["count"]) == ("RuntimeError", "injected fault", 1)
    before = stored_seqs(board)
    assert before == [1, 2, 3]  # the 4th read raised before anything was stored
    air.write_text(json.dumps(UP_AIR))
    wait_boots(board, 2, timeout=20)
    second = boots(board)[1]
    assert second["crash"] == {"kind": "RuntimeError", "detail": "injected fault", "count": 1}
    assert second["reset_cause"] is not None and second["reset_cause"] != "wdt"
    assert boots(board)[0]["crash"] is None
    board.wait_for("halted", timeout=60, reason="done")
    status = json.loads(since_boot(board, 2, "status")[0]["payload"])
    assert status["crash"] == second["crash"] and status["reset_cause"] == second["reset_cause"]
    # Every reading stored before the crash reached the broker after the reset.
    assert set(before) <= set(received_seqs(subscriber, "board-crash", before))
    assert not (tmp_path / "flash-board-crash-0" / "crash.json").exists()  # cleared once sent
    assert len(boots(board)) == 2  # a fed watchdog never fired during the healthy run


def test_a_hang_is_ended_by_the_watchdog_and_reported_next_boot(
        launch, broker, subscriber, tmp_path):
    air = tmp_path / "air.json"
    air.write_text(json.dumps(NO_AIR))
    config = dict(QUICK, **{"run.max_readings": 5})
    board = launch("board-hang", broker.port, config=config, files=faulty_flash(3, HANG),
                   air=str(air))
    wd = board.wait_for("watchdog", timeout=20)
    assert 5000 <= wd["timeout_ms"] <= 15000
    before_hang = time.monotonic()
    board.wait_for("stored", timeout=20, seq=2)
    air.write_text(json.dumps(UP_AIR))  # the hang, not the air, decides what happens next
    wait_boots(board, 2, timeout=wd["timeout_ms"] / 1000 + 15)
    hung_for = time.monotonic() - before_hang
    second = boots(board)[1]
    assert second["reset_cause"] == "wdt"
    assert second["crash"] is None  # nothing ran to record: the watchdog is the report
    assert hung_for >= wd["timeout_ms"] / 1000 - 1  # not before the watchdog's time
    assert board.of("fatal") == []
    board.wait_for("halted", timeout=60, reason="done")
    status = json.loads(since_boot(board, 2, "status")[0]["payload"])
    assert status["reset_cause"] == "wdt" and status["crash"] is None
    before = [1, 2]
    assert set(before) <= set(received_seqs(subscriber, "board-hang", before))


CRASH_UNIT = """
import json, os, sys
sys.path.insert(0, "fw")
from securenode import crash
assert crash.recorded() is None
print(json.dumps(["counts", crash.record("ValueError", "x"), crash.record("MemoryError", "")]))
with open("crash.json", "w") as f:
    f.write('{"kind": "Val')              # a record torn some other way reads as none
print(json.dumps(["torn", crash.recorded(), crash.record("OSError", "y"), crash.recorded()]))
crash.clear()
from securenode import startup
print(json.dumps(["cleared", crash.recorded(), startup.reset_cause()]))
try:
    crash.fatal(MemoryError("boom"))
except MemoryError as exc:
    print(json.dumps(["reraised", str(exc), crash.recorded()]))
"""


def test_crash_record_on_real_micropython_counts_repeats_and_reraises_without_reset(tmp_path):
    # The bare unix port has no machine.reset: fatal() records, reports, then re-raises.
    import shutil
    import subprocess
    fw = tmp_path / "fw" / "securenode"
    fw.mkdir(parents=True)
    for name in ("__init__", "crash", "events", "startup", "settings", "sensor", "mains",
                 "watchdog"):
        shutil.copy(ROOT / "firmware" / "securenode" / (name + ".py"), fw)
    (tmp_path / "t.py").write_text(CRASH_UNIT)
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "micropython"), "t.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert out[0] == ["counts", 1, 2]
    assert out[1] == ["torn", None, 1, {"kind": "OSError", "detail": "y", "count": 1}]
    assert out[2] == ["cleared", None, None]
    assert out[3] == ["reraised", "boom", {"kind": "MemoryError", "detail": "boom", "count": 1}]
    fatal = [e for e in events if e["event"] == "fatal"]
    assert [(e["kind"], e["detail"], e["count"]) for e in fatal] == [("MemoryError", "boom", 1)]


READING = (ROOT / "firmware" / "securenode" / "reading.py").read_bytes()
FAILING_ENCODE = b"""
# Test fault: the 3rd reading cannot be built (a full heap), as MemoryError says on a board.
from securenode.reading_real import *  # noqa: F401,F403
from securenode import reading_real as _real

_calls = [0]


def encode(*args):
    _calls[0] += 1
    if _calls[0] == 3:
        raise MemoryError("memory allocation failed, allocating 96 bytes")
    return _real.encode(*args)
"""


def test_a_reading_that_cannot_be_built_is_reported_and_the_loop_goes_on(
        launch, broker, subscriber):
    board = launch("board-nomem", broker.port, config={"run.max_readings": 5},
                   files={"securenode/reading.py": FAILING_ENCODE,
                          "securenode/reading_real.py": READING})
    board.wait_for("halted", timeout=60, reason="done")
    assert [e["kind"] for e in board.of("error")] == ["reading_memory"]
    assert board.of("fatal") == [] and len(boots(board)) == 1
    # The reading that failed took no seq: the stored ones stay contiguous.
    assert [e["seq"] for e in board.of("acked")] == [1, 2, 3, 4, 5]
