# The board's boot under MicroPython, imported as .mpy by run_board.py (started by
# host_sim.mp.launcher, $SECURENODE_MP_BOARD naming its settings JSON): mount the LittleFS2 image at "/" as a board does, the ROMFS image (if the
# board has one) at /rom, the host's filesystem at /host (only the stand-ins use it), leave
# sys.path as a board's plus the stand-ins, load the stand-ins of the board's C modules (in
# flash on a board: the launcher's heap allowance covers what they keep), then run main.py.
import gc
import os
import sys
import vfs

import _simboard
from blockdev import FileBlockDevice

_s = _simboard.settings
_simboard.open_chip()   # before "/" becomes the flash
vfs.mount(vfs.VfsPosix("/"), "/host")
sys.path[:] = ["", ".frozen", "/lib", "/host" + _s["port_dir"]]
if _s.get("romfs"):
    # A ROMFS board mounts its partition at /rom, first on sys.path, before the filesystem
    # (ports/esp8266/modules/_boot.py). The partition is flash there; here it is read into
    # a bytes object, whose size the launcher adds to the heap cap.
    with open("/host" + _s["romfs"], "rb") as _f:
        vfs.mount(vfs.VfsRom(_f.read()), "/rom")
    sys.path.insert(0, "/rom")
    del _f
vfs.mount(vfs.VfsLfs2(FileBlockDevice(_s["image"], _s["block_size"], _s["page_write_us"])),
          "/")
_s["host_root"] = "/host"
os.chdir("/")
import machine, network, ntptime  # noqa: E401,E402,F401  (C modules on a board)

del _s, FileBlockDevice, machine, network, ntptime
gc.collect()
import main  # noqa: E402,F401  (the firmware runs at import, as on a board)
