# Write a staged firmware tree into a LittleFS2 image (runs under MicroPython, called by
# host_sim.mp.launcher): like `mpremote cp -r` onto a board, securenode/ and lib/ are replaced
# wholesale (no stale .py can shadow a new .mpy) and every other staged file is overwritten;
# files only on the flash (the outbox, stored credentials) stay.
#
#   micropython deploy.py IMAGE STAGE_DIR BLOCK_SIZE FORMAT(0|1)
#
# Prints one JSON line (files written, free blocks); on a flash that does not mount, prints
# the reason on stderr and exits 3 (a board would reformat and lose it: we say so instead).
import json
import os
import sys
import vfs

from blockdev import FileBlockDevice

_DIR = 0x4000


def _rmtree(path):
    for name, kind, *_ in os.ilistdir(path):
        child = path + "/" + name
        if kind == _DIR:
            _rmtree(child)
        else:
            os.remove(child)
    os.rmdir(path)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _copy(src, dst, counts):
    for name, kind, *_ in os.ilistdir(src):
        s, d = src + "/" + name, dst + "/" + name
        if kind == _DIR:
            if not _exists(d):
                os.mkdir(d)
            _copy(s, d, counts)
            continue
        with open(s, "rb") as fin, open(d, "wb") as fout:
            while True:
                chunk = fin.read(4096)
                if not chunk:
                    break
                fout.write(chunk)
        counts[0] += 1


def main(image, stage, block_size, fmt):
    bdev = FileBlockDevice(image, block_size)
    if fmt:
        vfs.VfsLfs2.mkfs(bdev)
    try:
        fs = vfs.VfsLfs2(bdev)
        vfs.mount(fs, "/flash")
    except OSError as exc:
        print("flash image %s does not mount as LittleFS2: %r" % (image, exc), file=sys.stderr)
        sys.exit(3)
    for sub in ("securenode", "lib"):
        if _exists("/flash/" + sub):
            _rmtree("/flash/" + sub)
    counts = [0]
    _copy(stage, "/flash", counts)
    st = os.statvfs("/flash")
    vfs.umount("/flash")
    print(json.dumps({"files": counts[0], "blocks": st[2], "free_blocks": st[3]}))


main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
