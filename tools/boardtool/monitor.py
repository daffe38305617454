"""`board monitor`: the board's JSON-line events, shown for a person (or passed on as JSON).

Exit status follows the board: 0 when it halts with reason "done", 1 when it halts for any
other reason or reports "fatal"; 3 when the port goes away.
"""
import json
import time

import serial

from tools.boardtool import ports
from tools.boardtool.errors import at

EXIT_DONE = 0
EXIT_BOARD_FAILED = 1
EXIT_PORT_LOST = 3
_MAX_LINE = 4096   # longer console lines are cut: a runaway print cannot eat the host's RAM


def describe(event):
    """One line for a person, or None for events not worth a line.

    >>> describe({"event": "state", "t_ms": 1200, "state": "joining", "previous": "offline"})
    '     1.200 s  state    offline -> joining'
    """
    kind = event.get("event")
    t = event.get("t_ms")
    stamp = "%10.3f s" % (t / 1000) if isinstance(t, (int, float)) else " " * 12
    if kind == "state":
        text = "state    %s -> %s" % (event.get("previous"), event.get("state"))
    elif kind == "error":
        text = "ERROR    %s: %s" % (event.get("kind"), event.get("detail"))
    elif kind == "published":
        try:
            r = json.loads(event.get("payload") or "{}")
        except ValueError:
            r = {}
        text = "reading  seq %s  %s V  %s Hz  status %s%s" % (
            event.get("seq"), _fixed(r.get("voltage"), 1), _fixed(r.get("freq"), 2),
            r.get("status"),
            "  (resend)" if event.get("dup") else "")
    elif kind == "halted":
        text = "HALTED   %s" % event.get("reason")
    elif kind == "fatal":
        text = "FATAL    %s" % (event.get("detail") or event.get("reason") or event.get("kind"))
    elif kind in ("acked", "stored"):
        return None  # one line per reading is enough; --json shows every event
    else:
        rest = ", ".join("%s=%s" % (k, v) for k, v in event.items() if k not in ("event", "t_ms"))
        text = "%-8s %s" % (kind, rest)
    return "%s  %s" % (stamp, text)


def _fixed(value, places):
    # As the board wrote it (reading.encode: 1 decimal for volts, 2 for hertz).
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "%.*f" % (places, value)
    return str(value)


def verdict(event):
    """The exit status this event ends the monitor with, or None to keep watching."""
    kind = event.get("event")
    if kind == "fatal":
        return EXIT_BOARD_FAILED
    if kind == "halted":
        return EXIT_DONE if event.get("reason") == "done" else EXIT_BOARD_FAILED
    return None


def parse(line):
    """A console line as an event dict, or None when it is not one of the board's events."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


# Ctrl-C twice stops a running program, Ctrl-B leaves a raw REPL for the friendly one, and
# Ctrl-D there soft-resets, after which the board runs main.py (pyexec.c, ports/esp32/main.c).
_RESTART = b"\r\x03\x03\x02\x04"


def monitor(port, as_json=False, timeout_s=None, restart=False, out=print):
    """Follow the console until the board halts (or timeout_s passes: exit 0 then).

    restart: soft-reset the board first, so the run is seen from its first event.
    """
    link = ports.open_serial(port, timeout=0.2)
    link.reset_input_buffer()  # what the board said before we came is not this run
    if restart:
        link.write(_RESTART)
        link.flush()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = b""
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                chunk = link.read(4096)
            except (serial.SerialException, OSError):
                raise at(port, "monitor", "the serial port went away (board unplugged?)",
                         EXIT_PORT_LOST)
            pending += chunk
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                status = _show(raw[:_MAX_LINE].decode("utf-8", "replace"), as_json, out)
                if status is not None:
                    return status
            if len(pending) > _MAX_LINE:
                _show(pending[:_MAX_LINE].decode("utf-8", "replace"), as_json, out)
                pending = b""
        return EXIT_DONE
    finally:
        link.close()


def _show(line, as_json, out):
    event = parse(line)
    if event is None:
        if not as_json and line.strip():
            out("            | %s" % line.rstrip())  # tracebacks, REPL prompts: shown as is
        return None
    if as_json:
        out(json.dumps(event))
    else:
        text = describe(event)
        if text is not None:
            out(text)
    return verdict(event)
