"""Where the virtual board finds machine, network and ntptime (C modules on a real board).

The real-MicroPython runtime's stand-ins, host_sim/mp/port (MicroPython code, shared with
`host_sim.board --runtime micropython`); their settings come from $SECURENODE_MP_BOARD.
"""
from pathlib import Path

from host_sim.pty_board.server import BoardError

PORT_DIR = Path(__file__).resolve().parents[1] / "mp" / "port"
_NEEDED = ("machine.py", "network.py", "ntptime.py", "_simboard.py")


def module_dirs():
    """The directories whose modules the board has built in."""
    missing = [name for name in _NEEDED if not (PORT_DIR / name).is_file()]
    if missing:
        raise BoardError("%s lacks %s" % (PORT_DIR, ", ".join(missing)))
    return [PORT_DIR]
