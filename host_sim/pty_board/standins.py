"""Where the virtual board finds machine, network and ntptime (C modules on a real board).

host_sim/mp/port (the real-MicroPython runtime's stand-ins) when it is complete; otherwise
the minimal ones beside this file (host_sim/pty_board/mp/), enough for the firmware to join,
sync and sample.
"""
from pathlib import Path

_SHARED = Path(__file__).resolve().parents[1] / "mp" / "port"
_OWN = Path(__file__).resolve().parent / "mp"
_NEEDED = ("machine.py", "network.py", "ntptime.py")


def module_dirs():
    """The directories to put on the board's sys.path, first wins."""
    if all((_SHARED / name).is_file() for name in _NEEDED):
        return [_SHARED]
    return [_OWN]
