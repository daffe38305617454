"""A virtual MicroPython board on a pseudo-terminal: the real unix port behind a board's REPL.

The serial side speaks what MicroPython's shared/runtime/pyexec.c speaks on a board's UART,
so real `mpremote`, `tools/board.py` and a person with a terminal see a board:

- friendly REPL (">>> ", echo, continuation lines with "... ", Ctrl-C clears the line,
  Ctrl-D on an empty line soft-resets, Ctrl-E paste mode, Ctrl-A raw REPL, Ctrl-B banner);
- raw REPL: "raw REPL; CTRL-B to exit\\r\\n>", code up to Ctrl-D, "OK", output, \\x04,
  exception text, \\x04, ">"; Ctrl-D on an empty line is a soft reset; Ctrl-B back to friendly;
- raw-paste mode: Ctrl-E "A" Ctrl-A -> "R\\x01", a 2-byte window size and \\x01, then one
  \\x01 per window consumed, \\x04 at the end (pyexec.c do_reader_stdin, 256-byte stdin
  buffer as MICROPY_REPL_STDIN_BUFFER_MAX's default);
- soft reset: "MPY: soft reboot\\r\\n", a fresh interpreter (RAM lost, flash kept), boot.py,
  then main.py only in friendly-REPL mode (as ports/esp32/main.c does), then the REPL;
- Ctrl-C while code runs interrupts it (SIGINT: the unix port raises KeyboardInterrupt);
  other bytes typed meanwhile wait, as in a board's stdin ring buffer.

The interpreter is one long-lived `micropython` process running agent.py, with the flash
directory mounted as "/" (VfsPosix) and the machine/network/ntptime stand-ins on its path.

Differences from a board, on purpose or for lack of need: no tab completion, history or
cursor keys in the friendly REPL (escape sequences are dropped); continuation lines are
decided by a trailing ":" or open brackets (pyexec asks the compiler); a board loses serial
output nobody reads at its UART, here up to 64 KB waits and older output is dropped.

Example::

    from host_sim.pty_board import VirtualBoard
    with VirtualBoard(flash_dir, platform="esp32") as board:
        subprocess.run([".venv/bin/mpremote", "connect", board.port, "exec", "print(1)"])
"""

import errno
import os
import secrets
import select
import signal
import subprocess
import threading
import tty
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"
AGENT = Path(__file__).resolve().parent / "agent.py"

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"MPY: soft reboot\r\n"
PASTE_BANNER = b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== "
_STDIN_BUFFER = 256          # pyexec.c MICROPY_REPL_STDIN_BUFFER_MAX default
_MAX_PENDING_OUT = 65536     # serial output kept for a reader that is not there
_MAX_LINE = 1 << 20          # a raw REPL program larger than this is refused

FRIENDLY, RAW, PASTE, RAW_PASTE = "friendly", "raw", "paste", "raw_paste"
# The banner's board name, as the ports print it (sys.platform inside stays the unix port's).
_MACHINES = {"esp32": "Generic ESP32 module with ESP32", "esp8266": "ESP module with ESP8266"}


class BoardError(Exception):
    """The virtual board cannot start (no micropython, bad flash directory)."""


class VirtualBoard:
    """One board: a pty (``.port``), a flash directory, an interpreter process.

    ``platform`` (or ``machine``) only shapes the banner; ``module_dirs`` are directories of
    MicroPython-side stand-ins (machine, network, ntptime) put at the end of sys.path;
    ``env`` is passed to the interpreter (the stand-ins read their settings from it);
    ``romfs_bytes`` gives the board a ROMFS partition of that size (vfs.rom_ioctl, /rom).
    """

    def __init__(self, flash_dir, platform="esp32", machine=None,
                 module_dirs=(), env=None, heapsize="2M", romfs_bytes=0):
        self.flash = Path(flash_dir).resolve()
        if not self.flash.is_dir():
            raise BoardError("flash directory %s does not exist" % self.flash)
        if not MICROPYTHON.exists():
            raise BoardError("%s is missing: run `make` first" % MICROPYTHON)
        machine = machine or _MACHINES.get(platform, platform)
        self.banner = ("MicroPython v1.29.0-preview on 2026-08-29; %s\r\n"
                       "Type \"help()\" for more information.\r\n" % machine).encode()
        self.platform = platform
        self.module_dirs = [str(Path(d).resolve()) for d in module_dirs]
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("SECURENODE_VBOARD_ROMFS", None)
        self.romfs_partition = None
        if romfs_bytes:
            # Beside the flash directory, not in it: a partition is not a file on the board.
            self.romfs_partition = self.flash.parent / (self.flash.name + ".romfs-partition")
            if not self.romfs_partition.exists():
                self.romfs_partition.write_bytes(b"\xff" * romfs_bytes)
            self.env["SECURENODE_VBOARD_ROMFS"] = str(self.romfs_partition)
        self.heapsize = heapsize
        self.soft_resets = 0
        self._completed_jobs = 0
        self._crashes = 0
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._out = bytearray()
        self._pending_in = bytearray()
        self._mode = FRIENDLY
        self._line = bytearray()
        self._block = []             # friendly REPL lines awaiting a blank line
        self._esc = 0                # bytes of an escape sequence still to drop
        self._paste_window = 0
        self._child = None
        self._child_out = bytearray()
        self._job = None             # (kind, then) while the interpreter is busy
        self._marks = 0
        self._started = False
        self._interrupt_on_start = False
        self._jobs = []              # queued (kind, payload, then)
        self._stop = threading.Event()
        self._thread = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self):
        self._boot(first=True)
        self._thread = threading.Thread(target=self._loop, name="vboard %s" % self.port,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._kill_child()
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the interpreter --------------------------------------------------------------------

    def _spawn(self):
        self._nonce = secrets.token_hex(8)
        self._mark = b"\x00\x1e" + self._nonce.encode()
        argv = [str(MICROPYTHON), "-X", "heapsize=%s" % self.heapsize, str(AGENT),
                str(self.flash), self._nonce] + self.module_dirs
        self._child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, env=self.env, bufsize=0,
                                       start_new_session=True, preexec_fn=_die_with_parent)
        os.set_blocking(self._child.stdout.fileno(), False)
        self._child_out = bytearray()

    def _kill_child(self):
        child, self._child = self._child, None
        if child is None:
            return
        if child.poll() is None:
            child.kill()
        child.wait(5)
        for f in (child.stdin, child.stdout):
            try:
                f.close()
            except OSError:
                pass

    def _boot(self, first=False):
        # ports/esp32/main.c: boot.py always, main.py only when the REPL is friendly.
        self._kill_child()
        self._job = None
        self._jobs = []
        self._line = bytearray()
        self._block = []
        if not first:
            self.soft_resets += 1
            self._send(SOFT_REBOOT)
        self._spawn()
        self._completed_jobs = 0
        self._queue(b"f", b"boot.py", None)
        if self._mode == RAW:
            self._queue(b"f", b"", self._raw_prompt_after_boot)
        else:
            self._mode = FRIENDLY
            self._queue(b"f", b"main.py", self._friendly_banner)

    def _queue(self, kind, payload, then):
        self._jobs.append((kind, payload, then))
        if self._job is None:
            self._next_job()

    def _next_job(self):
        if not self._jobs or self._child is None:
            return
        kind, payload, then = self._jobs.pop(0)
        self._job = (kind, then)
        self._marks = 0
        self._job_number = -1
        self._started = False
        self._interrupt_on_start = False
        try:
            self._child.stdin.write(b"%s %d\n" % (kind, len(payload)) + payload)
            self._child.stdin.flush()
        except OSError:
            pass  # the child died: _pump sees EOF and reboots

    def _job_done(self):
        kind, then = self._job
        self._job = None
        self._completed_jobs += 1
        if then is not None:
            then()
        if self._jobs:
            self._next_job()
        elif self._pending_in:
            data = bytes(self._pending_in)
            self._pending_in.clear()
            self._feed(data)

    # --- prompts ----------------------------------------------------------------------------

    def _friendly_banner(self):
        self._send(self.banner + b">>> ")

    def _raw_prompt_after_boot(self):
        self._send(RAW_BANNER + b">")

    # --- serial input -----------------------------------------------------------------------

    def _feed(self, data):
        for i, c in enumerate(data):
            if self._job is not None and self._mode != RAW_PASTE:
                if c == CTRL_C:
                    self._interrupt()
                else:
                    self._pending_in.append(c)
                continue
            if self._mode == RAW_PASTE:
                self._raw_paste_byte(c)
            elif self._mode == RAW:
                self._raw_byte(c)
            elif self._mode == PASTE:
                self._paste_byte(c)
            else:
                self._friendly_byte(c)
            if self._job is not None and i + 1 < len(data):
                # The rest waits until the interpreter is free (or is a Ctrl-C for it).
                rest = data[i + 1:]
                for c2 in rest:
                    if c2 == CTRL_C:
                        self._interrupt()
                    else:
                        self._pending_in.append(c2)
                return

    def _interrupt(self):
        # Only once the agent said the job started: earlier, SIGINT would kill it mid-start.
        if self._child is None or self._job is None or self._marks > 0:
            return
        if not self._started:
            self._interrupt_on_start = True
            return
        try:
            os.kill(self._child.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def _raw_byte(self, c):
        line = self._line
        if c == CTRL_A:
            if len(line) == 2 and line[0] == CTRL_E:
                self._start_raw_paste(line[1])
                return
            self._line = bytearray()
            self._send(RAW_BANNER + b">")
        elif c == CTRL_B:
            self._mode = FRIENDLY
            self._line = bytearray()
            self._send(b"\r\n" + self.banner + b">>> ")
        elif c == CTRL_C:
            self._line = bytearray()
        elif c == CTRL_D:
            self._send(b"OK")
            if not line:
                self._send(b"\r\n")
                self._boot()
                return
            self._line = bytearray()
            self._queue(b"x", bytes(line), self._raw_prompt)
        elif len(line) < _MAX_LINE:
            line.append(c)

    def _raw_prompt(self):
        self._send(b">")

    def _start_raw_paste(self, command):
        self._line = bytearray()
        if command != ord("A"):
            self._send(b"R\x00")
            self._send(b">")
            return
        window = _STDIN_BUFFER // 2
        # Sending the window size grants one window, the \x01 a second (pyexec.c).
        self._send(b"R\x01" + bytes((window & 0xFF, window >> 8, 1)))
        self._mode = RAW_PASTE
        self._paste_window = window

    def _raw_paste_byte(self, c):
        if c == CTRL_C or c == CTRL_D:
            self._send(b"\x04")
            self._mode = RAW
            code, self._line = bytes(self._line), bytearray()
            if c == CTRL_C:
                # An interrupted paste raises KeyboardInterrupt before anything runs.
                self._send(b"\x04Traceback (most recent call last):\r\n"
                           b"KeyboardInterrupt: \r\n\x04>")
                return
            self._queue(b"x", code, self._raw_prompt)
            return
        if len(self._line) < _MAX_LINE:
            self._line.append(c)
        self._paste_window -= 1
        if self._paste_window == 0:
            self._send(b"\x01")
            self._paste_window = _STDIN_BUFFER // 2

    def _paste_byte(self, c):
        if c == CTRL_C:
            self._mode = FRIENDLY
            self._line = bytearray()
            self._send(b"\r\n>>> ")
        elif c == CTRL_D:
            self._mode = FRIENDLY
            code, self._line = bytes(self._line), bytearray()
            self._send(b"\r\n")
            self._queue(b"x", code, lambda: self._send(b">>> "))
        else:
            self._line.append(c)
            self._send(b"\r\n=== " if c == 13 else bytes((c,)))

    def _friendly_byte(self, c):
        if self._esc:
            # ESC [ X: cursor keys and the like; dropped (no history or line editing here).
            self._esc = self._esc - 1 if (self._esc == 2 or not 0x40 <= c <= 0x7E) else 0
            return
        if c == 0x1B:
            self._esc = 2
        elif c == CTRL_A:
            self._mode = RAW
            self._line = bytearray()
            self._block = []
            self._send(b"\r\n" + RAW_BANNER + b">")
        elif c == CTRL_B:
            self._line = bytearray()
            self._block = []
            self._send(b"\r\n" + self.banner + b">>> ")
        elif c == CTRL_C:
            self._line = bytearray()
            self._block = []
            self._send(b"\r\n>>> ")
        elif c == CTRL_D:
            if not self._line and not self._block:
                self._send(b"\r\n")
                self._boot()
        elif c == CTRL_E:
            self._mode = PASTE
            self._line = bytearray()
            self._send(PASTE_BANNER)
        elif c in (8, 0x7F):
            if self._line:
                self._line.pop()
                self._send(b"\x08 \x08")
        elif c == 13 or c == 10:
            self._send(b"\r\n")
            self._enter_line(bytes(self._line))
        elif c >= 0x20 or c == 9:
            self._line.append(c)
            self._send(bytes((c,)))

    def _enter_line(self, line):
        self._line = bytearray()
        if self._block:
            if line.strip():
                self._block.append(line)
                self._send(b"... ")
                return
            source, self._block = b"\n".join(self._block) + b"\n", []
        elif _needs_more(line):
            self._block = [line]
            self._send(b"... ")
            return
        elif not line.strip():
            self._send(b">>> ")
            return
        else:
            source = line
        self._queue(b"s", source, lambda: self._send(b">>> "))

    # --- output -----------------------------------------------------------------------------

    def _send(self, data):
        self._out += data
        if len(self._out) > _MAX_PENDING_OUT:
            del self._out[:len(self._out) - _MAX_PENDING_OUT]
        self._flush_out()

    def _flush_out(self):
        while self._out:
            try:
                n = os.write(self._master, self._out)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EIO, errno.EAGAIN):
                    return
                raise
            del self._out[:n]

    def _child_output(self, data):
        # Cook \n to \r\n as a board's stdout does; turn job marks into the REPL's framing.
        buf = self._child_out
        buf += data
        whole = len(self._mark) + 1 + 8      # mark, which (0/1/2), job number
        while buf:
            at = buf.find(self._mark)
            if at < 0:
                # Keep a tail that could be the start of a mark split across reads.
                keep = 0
                for k in range(min(len(self._mark), len(buf)), 0, -1):
                    if self._mark.startswith(bytes(buf[-k:])):
                        keep = k
                        break
                self._send_cooked(bytes(buf[:len(buf) - keep]))
                del buf[:len(buf) - keep]
                return
            self._send_cooked(bytes(buf[:at]))
            del buf[:at]
            if len(buf) < whole:
                return
            which = buf[len(self._mark)]
            number = int(bytes(buf[len(self._mark) + 1:whole]), 16)
            del buf[:whole]
            self._on_mark(which, number)

    def _send_cooked(self, data):
        if data:
            self._send(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    def _on_mark(self, which, number):
        if self._job is None:
            return
        if which == ord("0"):
            self._job_number = number
            self._started = True
            if self._interrupt_on_start:
                self._interrupt_on_start = False
                self._interrupt()
            return
        if number != self._job_number or which - ord("0") <= self._marks:
            return  # repeated after a late Ctrl-C: already taken
        self._marks = which - ord("0")
        if self._job[0] == b"x" and self._mode in (RAW, RAW_PASTE):
            self._send(b"\x04")
        if which == ord("2"):
            self._job_done()

    # --- the loop ---------------------------------------------------------------------------

    def _loop(self):
        while not self._stop.is_set():
            child = self._child
            fds = [self._master]
            if child is not None:
                fds.append(child.stdout.fileno())
            wfds = [self._master] if self._out else []
            try:
                readable, _, _ = select.select(fds, wfds, [], 0.05)
            except (OSError, ValueError):
                continue
            if self._out:
                self._flush_out()
            for fd in readable:
                if fd == self._master:
                    try:
                        data = os.read(self._master, 4096)
                    except (BlockingIOError, OSError):
                        data = b""
                    if data:
                        self._feed(data)
                elif child is not None:
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        self._child_output(data)
                    elif child is self._child:
                        self._child_exited()


    def _child_exited(self):
        # sys.exit() or a crash: a board soft-reboots. One that dies again before finishing
        # a single job would loop for ever: say so once and stay down.
        if self._completed_jobs == 0:
            self._crashes += 1
        else:
            self._crashes = 0
        if self._crashes >= 3:
            self._kill_child()
            self._job = None
            self._send(b"\r\nvirtual board: the interpreter exits at every boot; halted\r\n")
            return
        self._boot()


def _die_with_parent():
    # A board whose host process is killed must not live on busy-looping in main.py.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _needs_more(line):
    # A cut-down mp_repl_continue_with_input: compound statements and open brackets.
    text = line.rstrip()
    if text.endswith(b":") or text.endswith(b"\\"):
        return True
    depth = 0
    for c in text:
        if c in b"([{":
            depth += 1
        elif c in b")]}":
            depth -= 1
    return depth > 0

