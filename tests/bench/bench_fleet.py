"""The fleet on 2 cores: how boards sample when many share the host, and what each costs.

Two parts, both host figures (a shared machine: the load average while each ran is given):

- The sampler alone, before and after pacing samples with time.sleep_us: one board's
  Sampler (200 samples over 100 ms, 230 V 50 Hz, 1 V noise) reads N windows on each runtime
  (CPython with the stand-ins; the real MicroPython unix port with host_sim/mp/port). CPU
  per reading is the process's own (process_time on CPython, /proc/self/stat on MicroPython,
  10 ms ticks over N readings); accuracy is the median error of the clean windows.
  "before" is securenode/sensor.py as of BEFORE_COMMIT (a Python loop on ticks_us).
- The fleet: ``python -m host_sim.fleet --json`` with every board started together, on each
  runtime: how many boards sampled at once, disturbed windows and cadence over the run and
  while all sampled, per-board CPU and peak RSS (a MicroPython board is a CPython launcher,
  "the chip", plus the interpreter with its GC heap).

    .venv/bin/python tests/bench/bench_fleet.py [--quick] [--boards 100,200] [--mp-boards 100]
    .venv/bin/python tests/bench/bench_fleet.py --only micropython:200,cpython:200
    .venv/bin/python tests/bench/bench_fleet.py --only cpython:200 --no-rt-sampling

Writes tests/bench/results/fleet.md and fleet.png, and every row's figures to fleet.json.
A fleet row run replaces the row of the same runtime, boards and sampling priority in
fleet.json; rows not run are kept (each with its load average and time; ``--fresh`` drops
them), so ``--only`` (just the fleet rows named, no sampler part) and a ``--no-rt-sampling``
run add to one table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from host_sim.mp.launcher import PORT_DIR, tool  # noqa: E402
from tools import certs as certs_tool  # noqa: E402

RESULTS = HERE / "results"
BEFORE_COMMIT = "320c0d4"     # the last sensor.py with the busy-wait on ticks_us
FIRMWARE = ROOT / "firmware" / "securenode"

SAMPLER_CPYTHON = r'''
import json, os, sys, time
sys.path.insert(0, %(root)r)
from host_sim.stubs import install
from host_sim.stubs.board_state import BoardState
install(BoardState(port="esp32", mains_v=230.0, mains_hz=50.0, noise_v=1.0),
        lambda cause: None)
sys.path.insert(0, %(fw)r)
from securenode import sensor
s = sensor.Sampler(34, 200, 100, 0.0125)
s.read()
cpu0, wall0 = time.process_time(), time.monotonic()
reads = [s.read() for _ in range(%(n)d)]
print(json.dumps({"cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - wall0,
                  "reads": reads}))
'''

SAMPLER_MICROPYTHON = r'''
import json, time
from securenode import sensor
def cpu_s():
    with open("/proc/self/stat") as f:
        fields = f.read().split(")")[-1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0     # utime + stime, USER_HZ 100
s = sensor.Sampler(34, 200, 100, 0.0125)
s.read()
cpu0, t0 = cpu_s(), time.ticks_ms()
reads = [list(s.read()) for _ in range(%(n)d)]
print(json.dumps({"cpu_s": cpu_s() - cpu0, "wall_s": time.ticks_diff(time.ticks_ms(), t0) / 1000,
                  "reads": reads}))
'''


def loadavg():
    return os.getloadavg()[0]


def mem_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def sampler_files(version, into):
    """securenode/{__init__,mains,sensor}.py into `into`; sensor.py as of `version`."""
    pkg = into / "securenode"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "mains.py"):
        (pkg / name).write_text((FIRMWARE / name).read_text())
    if version == "after":
        (pkg / "sensor.py").write_text((FIRMWARE / "sensor.py").read_text())
        return True
    old = subprocess.run(["git", "show", "%s:firmware/securenode/sensor.py" % BEFORE_COMMIT],
                         cwd=ROOT, capture_output=True, text=True)
    if old.returncode != 0:
        return False        # a shallow clone without that commit: no "before" column
    (pkg / "sensor.py").write_text(old.stdout)
    return True


def run_sampler(version, runtime, n):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not sampler_files(version, tmp):
            return None
        load = loadavg()
        if runtime == "cpython":
            argv = [sys.executable, "-c", SAMPLER_CPYTHON % {"root": str(ROOT), "fw": str(tmp),
                                                              "n": n}]
            env = dict(os.environ)
        else:
            (tmp / "board.json").write_text(json.dumps({"port": "esp32", "mains_v": 230.0,
                                                        "mains_hz": 50.0, "noise_v": 1.0}))
            argv = [tool("micropython"), "-c", SAMPLER_MICROPYTHON % {"n": n}]
            env = dict(os.environ, MICROPYPATH="%s:%s" % (tmp, PORT_DIR),
                       SECURENODE_MP_BOARD=str(tmp / "board.json"))
        out = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True,
                             timeout=600)
        if out.returncode != 0:
            raise SystemExit("sampler %s/%s failed: %s" % (version, runtime, out.stderr[-2000:]))
        got = json.loads(out.stdout.strip().splitlines()[-1])
    clean = [r for r in got["reads"] if not r[2] & 0x10]
    return {
        "version": version, "runtime": runtime, "n": n, "load": (load + loadavg()) / 2,
        "cpu_ms": 1000 * got["cpu_s"] / n, "wall_ms": 1000 * got["wall_s"] / n,
        "disturbed": n - len(clean),
        "v_err_pct": (statistics.median(abs(r[0] - 230) / 2.3 for r in clean)
                      if clean else None),
        "hz_err_pct": (statistics.median(abs(r[1] - 50) / 0.5 for r in clean)
                       if clean else None),
    }


def make_certs(directory, boards):
    certs_tool.make_ca(directory)
    certs_tool.make_server(directory)
    certs_tool.make_device(directory, "sim-subscriber")
    for i in range(boards):
        certs_tool.make_device(directory, "board-%d" % (i + 1))


def run_fleet(runtime, boards, readings, interval_ms, start_rate, certs, workdir,
              rt_sampling=True):
    out_json = workdir / ("fleet-%s-%d.json" % (runtime, boards))
    load0 = loadavg()
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "host_sim.fleet", "--boards", str(boards),
         "--readings", str(readings), "--interval-ms", str(interval_ms), "--runtime", runtime,
         "--start-rate", str(start_rate),
         "--certs", str(certs), "--workdir", str(workdir / runtime), "--json", str(out_json),
         "--timeout", str(600 + boards * 3)] + ([] if rt_sampling else ["--no-rt-sampling"]),
        cwd=ROOT, capture_output=True, text=True, timeout=1800 + boards * 5)
    if not out_json.exists():
        raise SystemExit("fleet %s x%d wrote no summary (exit %d):\n%s" % (
            runtime, boards, proc.returncode, (proc.stdout + proc.stderr)[-3000:]))
    f = json.loads(out_json.read_text())
    f["exit"] = proc.returncode
    f["wall_s"] = time.monotonic() - t0
    f["load"] = (load0 + loadavg()) / 2
    f["start_rate"] = start_rate
    f["measured_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    return f


def row_key(f):
    return (f["runtime"], f["boards"], f.get("rt_sampling", "normal").startswith("real"))


def merge_rows(old, new):
    """old rows with each new one in place of the old row of the same key, new ones last."""
    fresh = {row_key(f): f for f in new}
    out = [fresh.pop(row_key(f), f) for f in old]
    return out + [f for f in new if row_key(f) in fresh]


def parse_only(text):
    """``cpython:200,micropython:100`` -> [("cpython", 200), ("micropython", 100)]."""
    out = []
    for item in text.split(","):
        runtime, _, n = item.strip().partition(":")
        if runtime not in ("cpython", "micropython") or not n.isdigit() or int(n) < 1:
            raise SystemExit("--only: %r is not RUNTIME:BOARDS (cpython or micropython, "
                             "a positive count), e.g. micropython:200" % item)
        out.append((runtime, int(n)))
    return out


def fmt(v, spec="%.1f", none="-"):
    return none if v is None else spec % v


def sampler_table(rows):
    lines = ["| runtime | sampler | CPU ms / reading | wall ms / reading | disturbed | "
             "V error (median, clean) | Hz error (median, clean) | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %s | %.1f | %.0f | %d of %d | %s | %s | %.1f |" % (
            {"cpython": "CPython + stand-ins", "micropython": "MicroPython unix port"}[
                r["runtime"]],
            {"before": "before: loop on ticks_us", "after": "after: time.sleep_us"}[
                r["version"]],
            r["cpu_ms"], r["wall_ms"], r["disturbed"], r["n"],
            fmt(r["v_err_pct"], "%.2f%%"), fmt(r["hz_err_pct"], "%.3f%%"), r["load"]))
    return lines


def fleet_table(runs):
    lines = ["| runtime | sampling window | boards, started at | readings x interval | sampling at once | all sampling for | "
             "disturbed (run) | disturbed (all sampling) | cadence median / worst (all "
             "sampling) | CPU ms / reading (median) | CPU s total | peak RSS per board "
             "(median) | RSS summed | delivered | load avg | measured (UTC) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in runs:
        run, every = f["run"], f["all_sampling"]
        lines.append(
            "| %s | %s | %d, %g/s | %d x %.1f s | %d | %.0f s | %s (%d of %d%s) | %s (%d of %d) | %s / %s | "
            "%s | %.0f | %s MB | %.1f GB | %s | %.1f | %s |" % (
                f["runtime"], f.get("rt_sampling", "normal"),
                f["boards"], f["start_rate"], f["readings_per_board"],
                f["interval_ms"] / 1000,
                f["alive_at_once"], f["all_sampling_s"],
                fmt(run["disturbed_pct"], "%.1f%%"), run["disturbed"], run["readings"],
                "" if "disturbed_booting" not in run else
                "; %d while booting" % run["disturbed_booting"],
                fmt(every["disturbed_pct"], "%.1f%%"), every["disturbed"], every["readings"],
                fmt(every["cadence_pct_median"], "%+.1f%%"),
                fmt(every["cadence_pct_worst"], "%+.1f%%"),
                fmt(f["cpu_ms_per_reading_median"]), f["cpu_s_total"],
                fmt(f["rss_mb_median"], "%.0f"), f["rss_mb_total"] / 1024,
                "all" if f["ok"] else "NOT ALL (exit %d)" % f["exit"], f["load"],
                f.get("measured_utc", "-")))
    return lines


def plot(sampler_rows, runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels, values, colours = [], [], []
    for r in sampler_rows:
        labels.append("%s\n%s" % ("CPython" if r["runtime"] == "cpython" else "MicroPython",
                                  r["version"]))
        values.append(r["cpu_ms"])
        colours.append("#c44" if r["version"] == "before" else "#48c")
    ax1.bar(labels, values, color=colours)
    ax1.set_ylabel("sampler CPU ms per reading")
    ax1.set_title("One board's sampler: CPU per reading")
    for f in runs:
        both = [(b["cpu_ms_per_reading"], b["rss_mb"]) for b in f["per_board"]
                if b["cpu_ms_per_reading"] is not None and b["rss_mb"] is not None]
        if both:
            ax2.scatter([c for c, _ in both], [r for _, r in both], s=8,
                        label="%s, %d boards" % (f["runtime"], f["boards"]))
    ax2.set_xlabel("CPU ms per reading (board, boot excluded)")
    ax2.set_ylabel("peak RSS MB (board)")
    ax2.set_title("Per board in the fleet")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--boards", default="100,200",
                   help="CPython fleet sizes, comma-separated (100,200; 0: none)")
    p.add_argument("--mp-boards", default="100,200",
                   help="MicroPython fleet sizes, comma-separated (100,200; 0: none)")
    p.add_argument("--readings", type=int, default=30,
                   help="readings per board (30 x 5 s: all 200 sample together for ~1 min)")
    p.add_argument("--start-rate", type=float, default=3, help="boards started per second")
    p.add_argument("--interval-ms", type=int, default=5000)
    p.add_argument("--sampler-reads", type=int, default=30)
    p.add_argument("--skip-sampler", action="store_true")
    p.add_argument("--skip-fleet", action="store_true")
    p.add_argument("--only", metavar="RUNTIME:N,...",
                   help="run only these fleet rows (e.g. micropython:200) and replace them in "
                        "fleet.json; the other rows and the sampler table are kept")
    p.add_argument("--no-rt-sampling", dest="rt_sampling", action="store_false",
                   help="boards sample at normal priority, not real-time (host_sim.fleet)")
    p.add_argument("--fresh", action="store_true",
                   help="drop the rows kept in fleet.json (default: rows not run are kept)")
    args = p.parse_args(argv)
    only = parse_only(args.only) if args.only else None
    if only:
        args.skip_sampler = True
    # What is not run this time keeps its rows from fleet.json (each says its load and time).
    saved = {}
    if not args.fresh and (RESULTS / "fleet.json").exists():
        saved = json.loads((RESULTS / "fleet.json").read_text())
    if args.quick:
        args.boards, args.mp_boards, args.readings, args.sampler_reads = "10", "4", 6, 10
        args.interval_ms, args.start_rate = 1000, 10
    sampler_rows = []
    if not args.skip_sampler:
        for runtime in ("cpython", "micropython"):
            for version in ("before", "after"):
                row = run_sampler(version, runtime, args.sampler_reads)
                if row:
                    sampler_rows.append(row)
                    print("sampler %-11s %-6s cpu %.1f ms/reading, %d/%d disturbed, load %.1f"
                          % (runtime, version, row["cpu_ms"], row["disturbed"], row["n"],
                             row["load"]), flush=True)
    runs = []
    if not args.skip_fleet:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            sizes = [("cpython", int(n)) for n in args.boards.split(",") if int(n) > 0]
            sizes += [("micropython", int(n)) for n in args.mp_boards.split(",") if int(n) > 0]
            sizes = only or sizes
            make_certs(tmp / "certs", max(n for _, n in sizes))
            for runtime, boards in sizes:
                t0 = time.monotonic()
                f = run_fleet(runtime, boards, args.readings, args.interval_ms,
                              args.start_rate, tmp / "certs", tmp, args.rt_sampling)
                runs.append(f)
                print("fleet %-11s x%d (%s, %.0f s): %d at once, disturbed %s%% (all sampling %s%%), "
                      "cadence worst %s%%, %s ms CPU/reading, RSS %s MB/board, load %.1f"
                      % (runtime, boards, f["rt_sampling"], time.monotonic() - t0,
                         f["alive_at_once"], f["run"]["disturbed_pct"],
                         f["all_sampling"]["disturbed_pct"],
                         f["all_sampling"]["cadence_pct_worst"],
                         f["cpu_ms_per_reading_median"], f["rss_mb_median"], f["load"]),
                      flush=True)
    if args.skip_sampler:
        sampler_rows = saved.get("sampler", [])
    runs = sorted(merge_rows(saved.get("fleet", []), runs),
                  key=lambda f: (f["runtime"], f["boards"], not row_key(f)[2]))
    lines = ["# The fleet on 2 cores, and what each board's sampling costs", "",
             "Host figures on a 2-core machine shared with other work: the load average "
             "(1 min) while each ran is in the last column; above ~2 the other work competed "
             "for the same cores. `make bench` (tests/bench/bench_fleet.py).", ""]
    if sampler_rows:
        lines += ["## One board's sampler, before and after pacing with time.sleep_us", "",
                  "%d windows of 200 samples over 100 ms (230 V 50 Hz, 1 V noise), after one "
                  "warm-up. CPU is the sampler process's own; a disturbed window (status "
                  "0x10) had a sample more than 1 ms late in each of its 4 tries. Before: "
                  "sensor.py at %s, a Python loop on ticks_us between samples." % (
                      sampler_rows[0]["n"], BEFORE_COMMIT), ""]
        lines += sampler_table(sampler_rows) + [""]
    if runs:
        lines += ["## Fleets, every board started together", "",
                  "`python -m host_sim.fleet --boards N --readings R --interval-ms I --json`. "
                  "Sampling at once: the most boards between their first and last reading at "
                  "the same moment; \"all sampling\": the span when every board was. "
                  "Cadence: mean gap between readings once a board is online, past the "
                  "interval. CPU per reading: the board's process tree between its first and "
                  "last reading (sampling, analysis, publishing, the idle loop), boot "
                  "excluded. Peak RSS: VmHWM summed over the board's processes (a "
                  "MicroPython board: the CPython launcher plus the interpreter); RSS "
                  "summed against this machine's %.1f GiB of RAM." % mem_gib(), "",
                  "Sampling window: how the boards' sampling was scheduled. A board's "
                  "sampler has its core (sleep_us is a busy-wait in C nothing preempts); "
                  "200 boards on 2 cores do not, so the simulator stands in for that core "
                  "with real-time priority: a CPython board runs each sampling window at "
                  "SCHED_FIFO 1 (host_sim/stubs/time.py SamplingPriority, back to a normal "
                  "task at its next other clock call); a MicroPython board's interpreter, "
                  "which cannot switch its own policy, runs at SCHED_FIFO 1 from its first "
                  "acknowledged reading on (host_sim.fleet; boot and TLS handshake at normal "
                  "priority). \"normal\" rows (`--no-rt-sampling`) show the host without "
                  "it. The sampling itself is unchanged: the same sleep_us pacing, the same "
                  "1 ms lateness test.", "",
                  "Before these rows (a418e6f, load 2.9-7.7): CPython 100 boards 6.5% "
                  "disturbed over the run / 4.2% while all sampled, 34.7 ms CPU per "
                  "reading; CPython 200: 80.2% / 99.0%, 36.3 ms; MicroPython 100: 5.4% / "
                  "3.6%, 31.1 ms; MicroPython 200: 14.1% / 6.9%, 32.1 ms. Then the idle "
                  "loop napped 50 ms at a time, the MicroPython launcher polled its chip "
                  "every 20 ms, CPython's gc.collect before each window walked the host's "
                  "~100,000 objects (3.3 ms), and every window ran at normal priority.", "",
                  "Measured once beside these rows (2026-11-26 16:40-16:48, load 1.4-4.8), "
                  "200 MicroPython boards with the idle loop's old 50 ms naps instead of the "
                  "wait in poll(): normal priority 15.1% disturbed over the run / 8.2% while "
                  "all sampled, 19.3 ms CPU per reading; real-time 0.7% / 0.1%, 21.0 ms. The "
                  "wait in poll() cuts CPU by 2.5x but leaves more windows disturbed: without "
                  "the priority 41% / 35%, and with it the readings taken while booting "
                  "(normal priority until the first acknowledgement): 3.0% over the run at "
                  "load 2.7 (16:28), 0.2% at load 1.0 (the row above, every one while "
                  "booting). Why is not established "
                  "(suspect: with fewer wake-ups the host's CPUs idle, and a sampler woken on "
                  "an idle virtual CPU runs late).", ""]
        lines += fleet_table(runs) + [""]
    RESULTS.mkdir(exist_ok=True)
    out = "\n".join(lines)
    if not args.quick:
        (RESULTS / "fleet.md").write_text(out)
        for f in runs:
            f.pop("per_board_readings", None)
        (RESULTS / "fleet.json").write_text(json.dumps({"sampler": sampler_rows,
                                                        "fleet": runs}, indent=1))
        if sampler_rows or runs:
            plot(sampler_rows, runs, RESULTS / "fleet.png")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
