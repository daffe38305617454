"""host_sim.fleet starts every board together and reports how they sampled; the stand-in
time.sleep_us the sampler paces with behaves as the ports' does.

Timing here is the shared test host's: assertions are about order and bounds, never tight
windows. The 200-board figures (disturbed windows, cadence, CPU, RSS) are measured by
tests/bench/bench_fleet.py (`make bench`), not here.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_sim import fleet
from host_sim.stubs import time as time_stub
from host_sim.stubs.board_state import BoardState
from tools import certs as certs_tool

ROOT = Path(__file__).resolve().parent.parent


# --- the stand-in sleep_us --------------------------------------------------------------------
@pytest.fixture
def board_time():
    return time_stub.make_module(BoardState(port="esp32"))


def test_sleep_us_and_sleep_ms_take_an_int_only(board_time):
    # extmod/modtime.c: mp_obj_get_int, so a float is a TypeError on every port.
    for sleep in (board_time.sleep_us, board_time.sleep_ms):
        with pytest.raises(TypeError, match="can't convert float to int"):
            sleep(1.5)
    board_time.sleep_us(True)       # a bool is an int to mp_obj_get_int


def test_sleep_us_of_zero_or_less_returns_at_once(board_time):
    t0 = time.monotonic()
    for _ in range(1000):
        board_time.sleep_us(0)
        board_time.sleep_us(-500)
    assert time.monotonic() - t0 < 0.5      # 2000 calls, no sleeping


def test_sleep_us_never_returns_early_on_ticks_us(board_time):
    ticks_us, ticks_diff = board_time.ticks_us, board_time.ticks_diff
    for us in (20, 300, 700, 2000):
        for _ in range(20):
            before = ticks_us()
            board_time.sleep_us(us)
            assert ticks_diff(ticks_us(), before) >= us


def test_sleep_us_frees_the_cpu(board_time):
    # 200 waits of 500 us, as one sampling window: a busy-wait would burn the whole window.
    cpu0, wall0 = time.thread_time(), time.monotonic()
    for _ in range(200):
        board_time.sleep_us(500)
    cpu, wall = time.thread_time() - cpu0, time.monotonic() - wall0
    assert wall >= 0.1
    assert cpu < 0.3 * wall, (cpu, wall)


def test_board_process_wakes_with_1us_slack_and_a_short_slice_once_sampling(board_time):
    # make_module cut the timer slack (a sleep may end up to the slack late); the first
    # sleep_us (the sampler) asks for a short slice: a woken process waits for a CPU about
    # as long as the slices of those ahead of it.
    assert Path("/proc/self/timerslack_ns").read_text().strip() == "1000"
    board_time.sleep_us(1)
    sched = Path("/proc/self/sched").read_text()
    if "se.slice" in sched:     # an EEVDF kernel (6.6+) reports it
        assert [line.split()[-1] for line in sched.splitlines()
                if line.startswith("se.slice")] == ["100000"]


MP_SLEEP_PROBE = r"""
import json, time
def cpu_ticks():
    with open("/proc/self/stat") as f:
        fields = f.read().split(")")[-1].split()
    return int(fields[11]) + int(fields[12])
out = {}
try:
    time.sleep_ms(1.5)
except TypeError as e:
    out["float"] = str(e)
t0 = time.ticks_us()
time.sleep_ms(0)
time.sleep_ms(-5)
out["zero_us"] = time.ticks_diff(time.ticks_us(), t0)
out["short_ms"] = []
for ms in (1, 7, 30):
    t0 = time.ticks_us()
    time.sleep_ms(ms)
    out["short_ms"].append(time.ticks_diff(time.ticks_us(), t0) / 1000)
c0, t0 = cpu_ticks(), time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 1500:
    time.sleep_ms(50)       # the firmware's idle loop
out["idle_cpu_ticks"] = cpu_ticks() - c0
print(json.dumps(out))
"""


def test_mp_runtime_sleep_ms_blocks_instead_of_polling(tmp_path):
    # The unix port's own sleep_ms wakes every 0.5 ms (~4 of 100 ticks of CPU per idle
    # 1.5 s); the runtime's time module (host_sim/mp/port/time.py) waits in one select().
    from host_sim.mp.launcher import PORT_DIR, tool
    probe = tmp_path / "probe.py"
    probe.write_text(MP_SLEEP_PROBE)
    out = subprocess.run([tool("micropython"), str(probe)], capture_output=True, text=True,
                         timeout=60, env={"MICROPYPATH": str(PORT_DIR), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["idle_cpu_ticks"] <= 1, got
    assert got["float"] == "can't convert float to int"
    assert got["zero_us"] < 5000
    # Never short (the port's own compares ms ticks, so it may end up to 1 ms early).
    assert [ms >= want for ms, want in zip(got["short_ms"], (1, 7, 30))] == [True] * 3, got


# --- the fleet's own sums ---------------------------------------------------------------------
class FakeBoard:
    """A tracked board's events as fleet_summary reads them (arrival times in seconds)."""

    def __init__(self, device_id, stored, track_usage=True):
        self.device_id = device_id
        self.track_usage = track_usage
        self.events, self.arrived, self.usage = [], [], []
        cpu = 1.0
        for n, (arrived, t_ms, status) in enumerate(stored, 1):
            self.events += [{"event": "stored", "seq": n, "t_ms": t_ms},
                            {"event": "published", "seq": n,
                             "payload": json.dumps({"seq": n, "status": status})},
                            {"event": "acked", "seq": n}]
            self.arrived += [arrived] * 3
            cpu += 0.005
            self.usage.append((arrived, cpu, 30000, 40960, "stored"))

    def of(self, kind):
        return [e for e in self.events if e.get("event") == kind]


def test_summary_counts_boards_sampling_at_once_and_the_window_all_did():
    a = FakeBoard("a", [(0.0, 0, 0), (1.0, 1000, 0), (2.0, 2000, 0x10), (3.0, 3000, 0)])
    b = FakeBoard("b", [(1.5, 5, 0), (2.5, 1005, 0), (3.5, 2005, 0), (4.5, 3105, 0)])
    c = FakeBoard("c", [(5.0, 7, 0), (6.0, 1007, 0)])    # starts after a has ended
    f = fleet.fleet_summary([a, b, c], 1000)
    assert f["alive_at_once"] == 2
    assert f["all_sampling_s"] == 0.0             # never all three together
    assert f["run"]["readings"] == 10 and f["run"]["disturbed"] == 1
    ab = fleet.fleet_summary([a, b], 1000)
    assert ab["all_sampling_s"] == 1.5            # from b's first (1.5) to a's last (3.0)
    assert ab["all_sampling"]["readings"] == 4    # a at 2.0, 3.0; b at 1.5, 2.5
    assert ab["all_sampling"]["disturbed"] == 1
    # Cadence once online (after the first ack): b's gaps 1000, 1100 past its first.
    assert ab["run"]["cadence_pct_worst"] == 5.0
    assert ab["cpu_ms_per_reading_median"] == 5.0
    assert ab["rss_mb_median"] == 40.0


def test_summary_tells_disturbed_readings_taken_while_booting_from_the_rest():
    # The first reading is taken at boot, before the first PUBACK; the others once online.
    a = FakeBoard("a", [(0.0, 0, 0x10), (1.0, 1000, 0x10), (2.0, 2000, 0)])
    b = FakeBoard("b", [(0.5, 5, 0x10), (1.5, 1005, 0)])
    f = fleet.fleet_summary([a, b], 1000)
    assert f["run"]["disturbed"] == 3 and f["run"]["disturbed_booting"] == 2


def test_cadence_survives_the_ticks_wrap():
    wrap = fleet.TICKS_PERIOD
    assert fleet._cadence_pct([wrap - 500, 500, 1500], 1000) == 0.0


GRANDCHILD = ("import time\nx = bytearray(64 << 20)\nwhile time.process_time() < 0.3: pass\n"
              "time.sleep(1.5)\n")


def test_tree_usage_counts_a_descendant_and_keeps_its_cpu_once_it_ended():
    # As a MicroPython board: the process the fleet started (the launcher) runs the
    # interpreter that does the work, and reaps it when it ends.
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "subprocess.run([sys.executable, '-c', %r])\ntime.sleep(60)\n"
                               % GRANDCHILD])
    try:
        deadline = time.monotonic() + 30
        peak = 0
        while time.monotonic() < deadline and peak < 64 * 1024:
            cpu, rss, peak = fleet.tree_usage(parent.pid)
            time.sleep(0.05)
        assert peak >= 64 * 1024 and rss >= 64 * 1024     # the grandchild's 64 MB, alive
        while time.monotonic() < deadline and len(fleet._tree_pids(parent.pid)) > 1:
            time.sleep(0.1)
        assert fleet._tree_pids(parent.pid) == [parent.pid]
        # Reaped: in the parent's cutime. /proc counts in 10 ms ticks and scales utime and
        # stime to the scheduler's runtime, so 0.3 s of process_time may read 0.29: the
        # bound is what the parent alone (~0.05 s) could never reach.
        assert fleet.tree_usage(parent.pid)[0] >= 0.25
    finally:
        parent.kill()
        parent.wait()


# --- a small fleet, each runtime ----------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet_certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet-certs")
    certs_tool.make_ca(d)
    certs_tool.make_server(d)
    certs_tool.make_device(d, fleet.SUBSCRIBER)
    for i in range(10):
        certs_tool.make_device(d, "board-%d" % (i + 1))
    return d


@pytest.mark.parametrize("runtime,boards", [("cpython", 10), ("micropython", 4)])
def test_fleet_starts_every_board_together_and_reports_each(fleet_certs, tmp_path, runtime,
                                                            boards):
    out_json = tmp_path / "fleet.json"
    workdir = tmp_path / "sim"
    # Left by an earlier run (e.g. an outbox of readings never delivered): every board gets
    # a fresh flash, so none of it may survive into this run.
    (workdir / "board-1").mkdir(parents=True)
    (workdir / "board-1" / "outbox").mkdir()
    (workdir / "board-1" / "outbox" / "stale").write_bytes(b"left from an earlier run")
    proc = subprocess.run(
        [sys.executable, "-m", "host_sim.fleet", "--boards", str(boards), "--readings", "8",
         "--interval-ms", "500", "--runtime", runtime, "--certs", str(fleet_certs),
         "--workdir", str(workdir), "--json", str(out_json), "--timeout", "150"]
        # make sim's boards: an ESP32's 112K heap, the firmware as .mpy (as make deploy puts it)
        + (["--board", "esp32", "--bytecode", "mpy"] if runtime == "micropython" else []),
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    f = json.loads(out_json.read_text())
    if runtime == "micropython":
        assert f["board_profile"] == "esp32"
        assert "board esp32: 114688-byte GC heap, firmware as mpy" in proc.stdout
    # Every flash was laid out before the first board started (then all were started in
    # one go): laid out between starts, the first boards ran ahead of the last.
    laid_out = max((workdir / b["board"] / "config.json").stat().st_mtime
                   for b in f["per_board"])
    released = sorted(b["started_unix_s"] for b in f["per_board"])
    # Released at --start-rate 10 a second: N boards over (N - 1) / 10 s.
    assert laid_out <= released[0]
    assert not (workdir / "board-1" / "outbox" / "stale").exists()
    assert (boards - 1) / 10 - 0.05 <= released[-1] - released[0] < (boards - 1) / 10 + 2
    assert f["ok"] and f["alive_at_once"] == boards and f["all_sampling_s"] > 0
    assert f["run"]["readings"] == 8 * boards
    for b in f["per_board"]:
        assert b["readings"] == 8
        assert b["cpu_s"] > 0 and b["cpu_ms_per_reading"] > 0 and b["rss_mb"] > 5
    # The table carries the per-board columns and the fleet summary follows it.
    assert "CPU ms/reading" in proc.stdout and "RSS MB" in proc.stdout
    assert "fleet: %d boards, %d sampling at once" % (boards, boards) in proc.stdout


def test_cpu_per_reading_never_goes_negative_when_the_interpreter_exits_unreaped(monkeypatch):
    # Read between an interpreter's exit and its launcher's reap (a board's last reading,
    # right before it halts), the process tree shows less CPU than a moment before.
    class Proc:
        pid = 1

        def poll(self):
            return None

    class Board:
        proc, usage, note_usage = Proc(), [], fleet.BoardProcess.note_usage

    seen = iter([(0.24, 1, 1), (0.27, 1, 1), (0.30, 1, 1), (0.19, 1, 1), (0.31, 1, 1)])
    monkeypatch.setattr(fleet, "tree_usage", lambda pid: next(seen))
    board = Board()
    for t, event in enumerate(["stored", "stored", "stored", "stored", "halted"]):
        board.note_usage(float(t), event)
    cpu_s, per_reading, _ = fleet.board_usage(board)
    assert [u[1] for u in board.usage] == [0.24, 0.27, 0.30, 0.30, 0.31]
    assert per_reading == pytest.approx(1000 * (0.30 - 0.24) / 3) and cpu_s == 0.31
