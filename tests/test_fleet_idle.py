"""What 200 boards on 2 cores need from each one: an idle board sleeps until it has something
to do (no 50 ms naps in the app, no 20 ms poll in the MicroPython launcher), a CPython board's
collect walks only the firmware's objects (the host's are frozen), and a CPython board samples
at real-time priority during its window only.

Bounds, not timings: wake-ups are counted (context switches), which load on the shared host
does not raise. The fleet figures themselves are tests/bench/bench_fleet.py's.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_sim import fleet
from host_sim.stubs import time as time_stub
from host_sim.stubs.board_state import BoardState
from mp_fixtures import mp_launch  # noqa: F401  (fixture: the real MicroPython runtime)

ROOT = Path(__file__).resolve().parent.parent
IDLE = {"sample.interval_ms": 600000, "mqtt.keepalive_s": 60}
WATCH_S = 3.0


def wakeups(pid):
    """Voluntary context switches (sleeps that ended) of every thread of pid and below it."""
    total = 0
    for p in fleet._tree_pids(pid):
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for tid in tids:
            try:
                status = Path("/proc/%d/task/%s/status" % (p, tid)).read_text()
            except OSError:
                continue
            total += sum(int(line.split()[1]) for line in status.splitlines()
                         if line.startswith("voluntary_ctxt_switches:"))
    return total


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_an_idle_online_board_wakes_about_once_a_second_not_twenty_times(
        runtime, launch, mp_launch, broker):
    start = mp_launch if runtime == "micropython" else launch
    board = start("idle-wake-" + runtime, broker.port, config=IDLE)
    board.wait_for("acked", timeout=60, seq=1)
    time.sleep(1.0)          # the status and the first reading are settled
    before = wakeups(board.proc.pid)
    time.sleep(WATCH_S)
    woke = wakeups(board.proc.pid) - before
    assert board.proc.poll() is None
    board.stop()
    # Napping 50 ms (and a launcher polling every 20 ms) is 60-210 wake-ups in 3 s; a board
    # waiting in poll() for up to 1 s (a MicroPython one's launcher woken by its feeds) is
    # a handful, plus the CPython stand-in watchdog's thread and the paho-free host side.
    assert woke <= 20, woke


@pytest.fixture
def rt_time(monkeypatch):
    monkeypatch.setattr(time_stub, "RT_SAMPLING", True)
    state = BoardState(port="esp32")
    mod = time_stub.make_module(state)
    yield mod, state.sampling_priority
    state.sampling_priority.leave()
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _fifo_permitted():
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


def test_sampling_window_runs_real_time_and_only_the_window(rt_time):
    mod, priority = rt_time
    permitted = _fifo_permitted()
    mod.sleep_us(100)                      # a sample is waited for: the window has begun
    if not permitted:                      # the fallback: normal priority, said once
        assert priority.denied and not priority.active
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        return
    assert os.sched_getscheduler(0) == os.SCHED_FIFO
    assert os.sched_getparam(0).sched_priority == 1       # the lowest real-time priority
    mod.ticks_us()
    mod.ticks_diff(mod.ticks_us(), 0)
    mod.sleep_us(100)
    assert os.sched_getscheduler(0) == os.SCHED_FIFO and priority.windows == 1
    # The board's next other clock call ends the window: back to a normal task.
    for end in (mod.ticks_ms, mod.time, lambda: mod.sleep_ms(1)):
        end()
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        mod.sleep_us(10)
        assert os.sched_getscheduler(0) == os.SCHED_FIFO
    mod.ticks_ms()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and priority.windows == 4


def test_sampling_priority_off_outside_a_board_process_and_reset_after_a_reset():
    # make_module in any other process (these tests) leaves scheduling alone...
    mod = time_stub.make_module(BoardState(port="esp32"))
    mod.sleep_us(10)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    if not _fifo_permitted():
        return
    # ...and a board re-executed mid-window (machine.reset) starts as a normal task.
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    try:
        time_stub.SamplingPriority(True)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


PROBE_MAIN = """import gc, os, time
time.sleep_us(50)
print("frozen", gc.get_freeze_count(), "policy", os.sched_getscheduler(0))
time.ticks_ms()
print("after", os.sched_getscheduler(0))
"""


@pytest.mark.parametrize("rt", ["1", "0"])
def test_cpython_board_freezes_the_host_objects_and_samples_real_time(tmp_path, rt):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(PROBE_MAIN)
    env = dict(os.environ, **{time_stub.ENV_RT_SAMPLING: rt})
    out = subprocess.run([sys.executable, "-m", "host_sim.board", "--flash", str(flash)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    words = out.stdout.split()
    # cryptography, OpenSSL and the stand-ins: tens of thousands of objects, frozen.
    assert int(words[words.index("frozen") + 1]) > 10000, out.stdout
    want = os.SCHED_FIFO if rt == "1" and _fifo_permitted() else os.SCHED_OTHER
    assert int(words[words.index("policy") + 1]) == want, out.stdout
    assert int(words[words.index("after") + 1]) == os.SCHED_OTHER, out.stdout


def test_fleet_raises_a_micropython_interpreter_but_not_its_launcher():
    # A MicroPython board is a launcher and, below it, the interpreter: the fleet makes the
    # interpreter real-time once the board has booted (the port cannot do it per window).
    launcher = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\n"
                                 "subprocess.run([sys.executable, '-c', "
                                 "'import time; time.sleep(60)'])\n"])
    try:
        deadline = time.monotonic() + 20
        while len(fleet._tree_pids(launcher.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        interpreter = fleet._tree_pids(launcher.pid)[1]
        done = fleet.interpreter_real_time(launcher.pid)
        assert done == _fifo_permitted()
        assert os.sched_getscheduler(interpreter) == (os.SCHED_FIFO if done
                                                      else os.SCHED_OTHER)
        assert os.sched_getscheduler(launcher.pid) == os.SCHED_OTHER
    finally:
        for pid in fleet._tree_pids(launcher.pid)[1:]:
            os.kill(pid, 9)
        launcher.wait()
