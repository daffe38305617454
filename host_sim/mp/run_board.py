# The board's boot under MicroPython (started by host_sim.mp.launcher as
# `micropython -X heapsize=N run_board.py`, $SECURENODE_MP_BOARD naming its settings JSON):
# mount the LittleFS2 image at "/" as a board does, the host's filesystem at /host (only the
# stand-ins use it), leave sys.path as a board's plus the stand-ins, then run main.py.
import gc
import os
import sys
import vfs

import _simboard
from blockdev import FileBlockDevice

_s = _simboard.settings
_simboard.open_chip()   # before "/" becomes the flash
vfs.mount(vfs.VfsPosix("/"), "/host")
vfs.mount(vfs.VfsLfs2(FileBlockDevice(_s["image"], _s["block_size"], _s["page_write_us"])),
          "/")
_s["host_root"] = "/host"
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib", "/host" + _s["port_dir"]]
del _s, FileBlockDevice
gc.collect()
import main  # noqa: E402,F401  (the firmware runs at import, as on a board)
