"""Crash containment: what killed the last run, kept on flash across the reset.

main.py hands every exception that escapes the app to ``fatal``: the reason goes to a small
file (written whole, then renamed, so a reset mid-write leaves the old record or the new
one), a ``fatal`` event goes to the console and the board resets. The next boot reads the
record back and reports it with the reset cause (startup.py), until a status message has
carried it.

Example::

    try:
        app.main()
    except Exception as exc:
        crash.fatal(exc)          # records, emits {"event": "fatal", ...}, machine.reset()
    # next boot:
    crash.recorded()              # -> {"kind": "RuntimeError", "detail": "...", "count": 1}
"""

import gc
import json
import os
import sys

from micropython import const

from securenode.events import emit

_PATH = const("crash.json")
_DETAIL_CHARS = const(120)


def recorded(path=_PATH):
    """The last crash record as a dict, or None when the last run did not crash."""
    try:
        with open(path) as f:
            rec = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return rec if type(rec) is dict else None


def clear(path=_PATH):
    """Forget the record (once a status message has carried it to the peer)."""
    try:
        os.remove(path)
    except OSError:
        pass


def record(kind, detail, path=_PATH):
    """Write the record atomically; count crashes that follow one another unreported."""
    last = recorded(path)
    count = (last.get("count", 0) if last else 0) + 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps({"kind": kind, "detail": detail, "count": count}))
    try:
        os.remove(path)  # FAT refuses to rename over an existing file
    except OSError:
        pass
    os.rename(tmp, path)
    return count


def fatal(exc):
    """Record exc, report it and reset the board; re-raise where nothing can reset."""
    gc.collect()  # a MemoryError left the heap full: the record needs a little of it
    kind = type(exc).__name__
    detail = str(exc)[:_DETAIL_CHARS]
    print_exception = getattr(sys, "print_exception", None)
    if print_exception is not None:
        print_exception(exc)  # the traceback, for whoever holds the serial console
    try:
        count = record(kind, detail)
    except Exception as store_exc:  # flash full or failing: still report and reset
        count = None
        emit("error", kind="crash_store", detail=str(store_exc)[:_DETAIL_CHARS])
    emit("fatal", kind=kind, detail=detail, count=count)
    try:
        import machine
        reset = machine.reset
    except (ImportError, AttributeError):
        raise exc  # nothing can reset this port: end like an uncaught exception
    reset()
