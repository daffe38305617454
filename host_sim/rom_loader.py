"""An ESP chip's ROM serial loader on a pseudo-terminal, with its SPI flash kept in a file.

Speaks what `esptool --no-stub` speaks to a chip in download mode (Espressif, "Serial
Protocol", docs.espressif.com/projects/esptool/en/latest/advanced-topics/serial-protocol.html):
SLIP frames (0xC0 ends, 0xDB 0xDC / 0xDB 0xDD escape 0xC0 / 0xDB); a request is
00 op size:u16 checksum:u32 data, a response 01 op size:u16 value:u32 data + status.

Commands: SYNC (answered 8 times, as a ROM does), READ_REG / WRITE_REG (registers from a small
table: the chip-detect magic at 0x40001000, the UART clock divider esptool derives the crystal
from, eFuses all zero, and the SPI peripheral driven far enough to answer a JEDEC ID and SFDP
read), SPI_ATTACH, SPI_SET_PARAMS, FLASH_BEGIN/DATA/END, FLASH_DEFL_BEGIN/DATA/END (ESP32 ROM
only), SPI_FLASH_MD5 (ESP32 ROM only; hex text, as a ROM returns it). Anything else gets the
ROM's "invalid message" status (1, 0x05), as GET_SECURITY_INFO does on these two chips.

Identities: "esp32" (4 status bytes, compression, MD5) and "esp8266" (2 status bytes, no
compression, no MD5: esptool then skips verification, which is what a real ESP8266 ROM allows).

The flasher stub: MEM_BEGIN/DATA/END load it into "RAM" (checksums checked, code not run);
MEM_END with an entry point answers "OHAI" as the started stub does, and from then on the
stand-in speaks as esptool's stub (2 status bytes on both chips, ERASE_FLASH, ERASE_REGION,
compressed writes, MD5 as 16 raw bytes, CHANGE_BAUDRATE accepted: a pty has no baud rate).

Kinder than a chip, and said so: flash writes overwrite (NOR flash can only clear bits, so a
real chip needs the erase first; here FLASH_BEGIN's erase is still done, and logged, so a test
can see erase and write order); the ESP8266 ROM's erase-size bug is not reproduced; DTR/RTS do
nothing (a pty has no modem lines), so esptool must run with --before no-reset --after no-reset.

Example::

    with RomLoader("/tmp/flash.bin", chip="esp32") as rom:
        subprocess.run(["esptool", "--port", rom.port, "--no-stub", "--before", "no-reset",
                        "--after", "no-reset", "write-flash", "0x1000", "fw.bin"])
"""

import hashlib
import os
import select
import struct
import threading
import tty
import zlib
from pathlib import Path

SYNC, READ_REG, WRITE_REG = 0x08, 0x0A, 0x09
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
SPI_SET_PARAMS, SPI_ATTACH = 0x0B, 0x0D
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
SPI_FLASH_MD5 = 0x13
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
CHANGE_BAUDRATE = 0x0F
ERASE_FLASH, ERASE_REGION = 0xD0, 0xD1    # the flasher stub's own commands
CHIP_DETECT_MAGIC_REG = 0x40001000
_CHECKSUM_MAGIC = 0xEF
_INVALID_MESSAGE, _BAD_CHECKSUM, _BAD_DATA = 0x05, 0x07, 0x08  # ROM error codes
_MAX_FRAME = 0x4000 + 64   # larger than any block esptool sends to a ROM

# Per chip: detect magic, SPI peripheral, UART clock divider register, crystal, status size.
CHIPS = {
    "esp32": {"magic": 0x00F01D83, "spi_base": 0x3FF42000, "w0": 0x80, "usr2": 0x24,
              "clkdiv_reg": 0x3FF40014, "xtal_mhz": 40, "xtal_divider": 1, "status_len": 4,
              "deflate": True, "md5": True},
    "esp8266": {"magic": 0xFFF0C101, "spi_base": 0x60000200, "w0": 0x40, "usr2": 0x24,
                "clkdiv_reg": 0x60000014, "xtal_mhz": 26, "xtal_divider": 2, "status_len": 2,
                "deflate": False, "md5": False},
}
_SPI_CMD_USR = 1 << 18
# A Winbond W25Q32 (4 MB) answers: JEDEC ID 0x9F, SFDP signature for 0x5A.
_JEDEC_ID = 0x1640EF
_SFDP_SIGNATURE = 0x50444653
FLASH_SIZE = 4 * 1024 * 1024


class RomLoaderError(Exception):
    """The stand-in cannot start (unknown chip, flash file unusable)."""


def slip_encode(packet):
    return b"\xc0" + packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class RomLoader:
    """A chip in download mode on ``.port``; its flash is the file ``flash_path``.

    ``log`` lists what happened, e.g. ("erase", 0x1000, 0x4000), ("write", 0x1000, 1024);
    ``baud`` is only checked to be the ROM's 115200 (esptool changes it only when asked).
    """

    def __init__(self, flash_path, chip="esp32", flash_size=FLASH_SIZE):
        if chip not in CHIPS:
            raise RomLoaderError("unknown chip %r (have: %s)" % (chip, ", ".join(CHIPS)))
        self.chip = chip
        self.spec = CHIPS[chip]
        self.flash_path = Path(flash_path)
        if not self.flash_path.exists():
            self.flash_path.write_bytes(b"\xff" * flash_size)
        self.flash = bytearray(self.flash_path.read_bytes())
        self.log = []
        self.regs = {}
        self.stub = False          # True once the flasher stub "runs"
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._frame = None         # bytes of the frame being read, None between frames
        self._escape = False
        self._write = None         # (offset, block_size, decompressor or None, next offset)
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name="rom %s" % self.port,
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        for fd in (self._master, self._slave):
            os.close(fd)

    # --- serial -----------------------------------------------------------------------------

    def _loop(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:
                continue
            for byte in data:
                self._byte(byte)

    def _byte(self, b):
        # Bytes outside a frame (line noise, a terminal's typing) are ignored, as the ROM does.
        if self._frame is None:
            if b == 0xC0:
                self._frame = bytearray()
            return
        if b == 0xC0:
            frame, self._frame = bytes(self._frame), bytearray()
            if frame:
                self._request(frame)
                self._frame = None
            return
        if self._escape:
            self._escape = False
            b = {0xDC: 0xC0, 0xDD: 0xDB}.get(b)
            if b is None:
                self._frame = None  # a broken escape: drop the frame
                return
        elif b == 0xDB:
            self._escape = True
            return
        self._frame.append(b)
        if len(self._frame) > _MAX_FRAME:
            self._frame = None

    def _respond(self, op, value=0, data=b"", error=0):
        status_len = 2 if self.stub else self.spec["status_len"]
        status = bytes((1 if error else 0, error)) + b"\x00" * (status_len - 2)
        body = data + status
        os.write(self._master, slip_encode(struct.pack("<BBHI", 1, op, len(body), value) + body))

    # --- commands ---------------------------------------------------------------------------

    def _request(self, frame):
        if len(frame) < 8 or frame[0] != 0:
            return
        _, op, size, checksum = struct.unpack("<BBHI", frame[:8])
        data = frame[8:]
        if len(data) != size:
            self._respond(op, error=_BAD_DATA)
            return
        handler = {
            SYNC: self._sync, READ_REG: self._read_reg, WRITE_REG: self._write_reg,
            SPI_ATTACH: self._ok, SPI_SET_PARAMS: self._set_params,
            FLASH_BEGIN: self._flash_begin, FLASH_DATA: self._flash_data,
            FLASH_END: self._flash_end,
        }.get(op)
        if self.spec["deflate"] or self.stub:
            handler = handler or {FLASH_DEFL_BEGIN: self._flash_begin,
                                  FLASH_DEFL_DATA: self._flash_data,
                                  FLASH_DEFL_END: self._flash_end}.get(op)
        if (self.spec["md5"] or self.stub) and op == SPI_FLASH_MD5:
            handler = self._md5
        if self.stub:
            handler = handler or {ERASE_FLASH: self._erase_flash, ERASE_REGION: self._erase_region,
                                  CHANGE_BAUDRATE: self._ok}.get(op)
        else:
            handler = handler or {MEM_BEGIN: self._mem_begin, MEM_DATA: self._mem_data,
                                  MEM_END: self._mem_end}.get(op)
        if handler is None:
            self._respond(op, error=_INVALID_MESSAGE)
            return
        handler(op, data, checksum)

    def _ok(self, op, data, checksum):
        self._respond(op)

    def _sync(self, op, data, checksum):
        if data != b"\x07\x07\x12\x20" + b"\x55" * 32:
            return  # not a sync: a ROM stays silent
        for _ in range(8):
            self._respond(op, value=0x20120707)

    def _read_reg(self, op, data, checksum):
        (addr,) = struct.unpack("<I", data[:4])
        self._respond(op, value=self._reg(addr))

    def _reg(self, addr):
        s = self.spec
        if addr == CHIP_DETECT_MAGIC_REG:
            return s["magic"]
        if addr == s["clkdiv_reg"]:
            # esptool: crystal = baud * divider / 1e6 / XTAL_CLK_DIVIDER.
            return int(s["xtal_mhz"] * 1e6 * s["xtal_divider"] / 115200)
        if addr == s["spi_base"]:
            return 0  # SPI_CMD: the user command has always finished
        return self.regs.get(addr, 0)

    def _write_reg(self, op, data, checksum):
        addr, value, mask, _delay = struct.unpack("<IIII", data[:16])
        s = self.spec
        self.regs[addr] = (self.regs.get(addr, 0) & ~mask) | (value & mask)
        if addr == s["spi_base"] and value & _SPI_CMD_USR:
            command = self.regs.get(s["spi_base"] + s["usr2"], 0) & 0xFF
            reply = {0x9F: _JEDEC_ID, 0x5A: _SFDP_SIGNATURE}.get(command, 0)
            self.regs[s["spi_base"] + s["w0"]] = reply
        self._respond(op)

    def _set_params(self, op, data, checksum):
        _fl_id, total, _block, _sector, _page, _mask = struct.unpack("<IIIIII", data[:24])
        self.log.append(("params", total))
        self._respond(op)

    def _flash_begin(self, op, data, checksum):
        if len(data) < 16:
            self._respond(op, error=_BAD_DATA)
            return
        erase_size, blocks, block_size, offset = struct.unpack("<IIII", data[:16])
        if offset + erase_size > len(self.flash) or block_size == 0 and blocks:
            self._respond(op, error=_BAD_DATA)
            return
        compressed = op == FLASH_DEFL_BEGIN
        if compressed:
            # For the deflate variant the first field is the uncompressed size.
            erase = (erase_size + 4095) // 4096 * 4096
        else:
            erase = erase_size
        if erase:
            self.flash[offset:offset + erase] = b"\xff" * erase
            self.log.append(("erase", offset, erase))
            self._save(offset, erase)
        self._write = [offset, block_size, zlib.decompressobj() if compressed else None, offset]
        self._respond(op)

    def _flash_data(self, op, data, checksum):
        if self._write is None or len(data) < 16:
            self._respond(op, error=_BAD_DATA)
            return
        size, seq, _, _ = struct.unpack("<IIII", data[:16])
        block = data[16:16 + size]
        check = _CHECKSUM_MAGIC
        for b in block:
            check ^= b
        if len(block) != size or check != checksum:
            self._respond(op, error=_BAD_CHECKSUM)
            return
        offset, block_size, inflate, at = self._write
        if inflate is not None:
            block = inflate.decompress(block)
        else:
            at = offset + seq * block_size
        if at + len(block) > len(self.flash):
            self._respond(op, error=_BAD_DATA)
            return
        self.flash[at:at + len(block)] = block
        self.log.append(("write", at, len(block)))
        self._write[3] = at + len(block)
        self._save(at, len(block))
        self._respond(op)

    def _flash_end(self, op, data, checksum):
        self._write = None
        self._respond(op)

    def _md5(self, op, data, checksum):
        addr, size, _, _ = struct.unpack("<IIII", data[:16])
        if addr + size > len(self.flash):
            self._respond(op, error=_BAD_DATA)
            return
        md5 = hashlib.md5(self.flash[addr:addr + size])
        # The ROM answers in hex text, the stub in 16 raw bytes.
        self._respond(op, data=md5.digest() if self.stub else md5.hexdigest().encode())

    # --- the flasher stub -------------------------------------------------------------------

    def _mem_begin(self, op, data, checksum):
        size, blocks, block_size, _offset = struct.unpack("<IIII", data[:16])
        self._ram = [size, 0]
        self._respond(op)

    def _mem_data(self, op, data, checksum):
        size, _seq, _, _ = struct.unpack("<IIII", data[:16])
        block = data[16:16 + size]
        check = _CHECKSUM_MAGIC
        for b in block:
            check ^= b
        if getattr(self, "_ram", None) is None or len(block) != size or check != checksum:
            self._respond(op, error=_BAD_CHECKSUM)
            return
        self._ram[1] += size
        self._respond(op)

    def _mem_end(self, op, data, checksum):
        no_entry, entry = struct.unpack("<II", data[:8])
        self._respond(op)
        if not no_entry and entry:
            self.stub = True
            self.log.append(("stub", entry))
            os.write(self._master, slip_encode(b"OHAI"))

    def _erase_flash(self, op, data, checksum):
        self.flash[:] = b"\xff" * len(self.flash)
        self.log.append(("erase", 0, len(self.flash)))
        self._save(0, len(self.flash))
        self._respond(op)

    def _erase_region(self, op, data, checksum):
        offset, size = struct.unpack("<II", data[:8])
        if offset % 4096 or size % 4096 or offset + size > len(self.flash):
            self._respond(op, error=_BAD_DATA)
            return
        self.flash[offset:offset + size] = b"\xff" * size
        self.log.append(("erase", offset, size))
        self._save(offset, size)
        self._respond(op)

    def _save(self, offset, size):
        # Only the bytes that changed: the flash file is megabytes, a block is one KB.
        with open(self.flash_path, "r+b") as f:
            f.seek(offset)
            f.write(self.flash[offset:offset + size])
