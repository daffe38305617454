# A LittleFS block device over an image file (runs under MicroPython; used by deploy.py and
# boot_board.py). It implements the extended block protocol of MicroPython's vfs
# (docs: library/vfs.html "Block devices": readblocks/writeblocks with an offset, ioctl
# 4 = block count, 5 = block size, 6 = erase), so vfs.VfsLfs2 on top is the real LittleFS a
# board runs. Every write reaches the file at once (the unix port's files are unbuffered),
# so killing the process leaves the image exactly as far as the "chip" got.
#
# page_write_us > 0 models slow flash: a write is programmed in 256-byte pages with that many
# microseconds after each, so a SIGKILL (the simulator's power cut) can land between two pages
# of one LittleFS write and tear it, as a cut does on a board. While a write is being
# programmed, the file IMAGE.programming holds b"1" (else b"0"): after a cut, the host can
# tell whether it landed inside a program.
#
# Loaded by every simulated board (C on a board), so its names are few: the attribute names
# are the parameters' and the protocol's own.
import time

from micropython import const

_PAGE = const(256)


class FileBlockDevice:
    def __init__(self, path, block_size, page_write_us=0):
        self.file = open(path, "r+b")
        self.file.seek(0, 2)
        self.block_size = block_size
        self.count = self.file.tell() // block_size
        self.page_write_us = page_write_us
        if page_write_us:
            self.busy = open(path + ".programming", "wb")
            self.busy.write(b"0")

    def readblocks(self, block_num, buf, offset=0):
        self.file.seek(block_num * self.block_size + offset)
        self.file.readinto(buf)

    def writeblocks(self, block_num, buf, offset=0):
        self.file.seek(block_num * self.block_size + offset)
        if not self.page_write_us:
            self.file.write(buf)
            return
        view = memoryview(buf)
        self.busy.seek(0)
        self.busy.write(b"1")
        for start in range(0, len(view), _PAGE):
            self.file.write(view[start:start + _PAGE])
            time.sleep_us(self.page_write_us)
        self.busy.seek(0)
        self.busy.write(b"0")

    def ioctl(self, op, arg):
        if op == 4:
            return self.count
        if op == 5:
            return self.block_size
        if op == 6:
            # Erase: LittleFS never reads erased contents back (each block's state is in its
            # CRC-checked metadata), so leaving the old bytes is as good as 0xFF here.
            return 0
        return None
