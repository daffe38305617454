"""A virtual MicroPython board on a pseudo-terminal (see server.py)."""
from host_sim.pty_board.server import BoardError, VirtualBoard  # noqa: F401
