# The `vfs` module of a board with one ROMFS partition (runs under MicroPython): the unix
# port's own vfs plus rom_ioctl, which that port lacks. The agent puts this module in
# sys.modules["vfs"], so `import vfs` on the virtual board returns it.
#
# rom_ioctl as extmod/vfs_rom_ioctl.c and the ESP ports define it, and as mpremote's
# `romfs query/deploy` use it: 1 number of partitions; 2 the partition as a buffer (or a
# negative errno); 3 erase (id, offset, length) or (id, length), returns the smallest write;
# 4 write (id, offset, buffer); 5 end of writing; 6 erase-block size. The partition lives in
# a host file opened before the flash went over "/".
from vfs import VfsFat, VfsLfs1, VfsLfs2, VfsPosix, VfsRom, mount, umount  # noqa: F401

_ENODEV = 19
_EINVAL = 22
_BLOCK = 4096        # a flash sector, the ESP ports' erase unit
_MIN_WRITE = 4

_part = None         # the open partition file
_size = 0


def attach(path):
    """Open the partition file (host path); return its contents (bytes)."""
    global _part, _size
    _part = open(path, "r+b")
    data = _part.read()
    _size = len(data)
    return data


def _check(rom_id, offset=0, length=0):
    if _part is None or rom_id != 0:
        return -_ENODEV
    if offset < 0 or length < 0 or offset + length > _size:
        return -_EINVAL
    return 0


def rom_ioctl(op, rom_id=0, *args):
    if op == 1:
        return 1 if _part is not None else 0
    if op == 6:
        return _BLOCK if _check(rom_id) == 0 else -_ENODEV
    if op == 2:
        err = _check(rom_id)
        if err:
            return err
        _part.seek(0)
        return _part.read()
    if op == 3:
        offset, length = (args[0], args[1]) if len(args) == 2 else (0, args[0])
        err = _check(rom_id, offset, length)
        if err:
            return err
        _part.seek(offset)
        _part.write(b"\xff" * length)
        _part.flush()
        return _MIN_WRITE
    if op == 4:
        offset, buf = args
        err = _check(rom_id, offset, len(buf))
        if err:
            return err
        _part.seek(offset)
        _part.write(buf)
        _part.flush()
        return 0
    if op == 5:
        return _check(rom_id)
    return -_EINVAL
