# The board's boot under MicroPython: `micropython -X heapsize=N -m boot_board`, started by
# host_sim.mp.launcher in its directory of compiled stand-ins ($SECURENODE_MP_BOARD names the
# board's settings JSON). As on a board, the board's C modules (their stand-ins here: in
# flash on a board, the launcher's heap allowance covers what they keep) are in place before
# any of the firmware's code runs. Then the LittleFS2 image goes at "/" as a board mounts
# it, the ROMFS image (if the board has one) at /rom, first on sys.path, the host's
# filesystem at /host (only the stand-ins use it: the virtual air), sys.path becomes a
# board's, and main.py runs.
#
# The stand-ins load from the launcher's directory by relative names ("machine.mpy"): each
# path is an interned name for good, and the board's own names come after them.
import gc
import os
import sys
import vfs

import machine, network, ntptime  # noqa: E401,F401  (C modules on a board)
import _simboard
from blockdev import FileBlockDevice


def _boot():
    # Locals, not globals: no more interned names than the mounts need.
    image, block_size, page_write_us, romfs = _simboard.settings["flash"]
    vfs.mount(vfs.VfsPosix("/"), "/host")
    sys.path[:] = ["", ".frozen", "/lib"]
    if romfs:
        # A ROMFS board mounts its partition at /rom, first on sys.path, before the
        # filesystem (ports/esp8266/modules/_boot.py). The partition is flash there; here it
        # is read into a bytes object, whose size the launcher adds to the heap cap.
        with open(romfs, "rb") as f:
            vfs.mount(vfs.VfsRom(f.read()), "/rom")
        sys.path.insert(0, "/rom")
    vfs.mount(vfs.VfsLfs2(FileBlockDevice(image, block_size, page_write_us)), "/")
    os.chdir("/")


_boot()
del _boot, FileBlockDevice, machine, network, ntptime
gc.collect()
try:
    import main  # noqa: E402,F401  (the firmware runs at import, as on a board)
except SystemExit:
    raise
except BaseException as e:
    # What escapes main.py goes to the console, as a board's pyexec prints it: stdout here
    # (an uncaught exception of `-m` would go to stderr); the board then stops, status 1.
    sys.print_exception(e)
    sys.exit(1)
