"""`board flash`: MicroPython onto a chip with esptool, after checking the image is for it.

Order, so nothing is erased for a wrong image or a wrong chip: read the image and name its
chip (esptool's own image parser, as `esptool image-info` does), connect and detect the chip
(esptool), compare, then erase, write at the chip's offset and verify (esptool's MD5 check).
"""
import contextlib
import re
from pathlib import Path

from esptool.bin_image import LoadFirmwareImage
from esptool.cmds import attach_flash, detect_chip, erase_flash, reset_chip, write_flash
from esptool.targets import CHIP_DEFS
from esptool.util import FatalError

from tools.boardtool.errors import EXIT_USAGE, BoardToolError, at

CHIPS = ("esp32", "esp32s3", "esp32c3", "esp8266")
_ESP_IMAGE_MAGIC = 0xE9
_ESP8266_V2_MAGIC = 0xEA


def chip_key(chip_name):
    """esptool's CHIP_NAME as the short name the CLI uses: "ESP32-S3" -> "esp32s3"."""
    return re.sub(r"[-()]", "", chip_name.lower())


def image_chip(data, name="image"):
    """The chip a firmware image is built for, or a BoardToolError saying why it is none.

    As `esptool image-info` decides: the extended header's chip id when it names a chip and
    the image parses for it; otherwise an ESP8266 image if it parses as one.

    >>> image_chip(open("ESP32_GENERIC-v1.25.0.bin", "rb").read())
    'esp32'
    """
    if not data:
        raise BoardToolError("%s: empty file, not a firmware image" % name, EXIT_USAGE)
    if data[0] == _ESP8266_V2_MAGIC:
        candidates = ["esp8266"]
    elif data[0] != _ESP_IMAGE_MAGIC:
        raise BoardToolError("%s: not a firmware image (first byte 0x%02x, images start "
                             "with 0xe9)" % (name, data[0]), EXIT_USAGE)
    else:
        candidates = []
        if len(data) >= 24 and data[23] in (0, 1):
            chip_id = data[12] | data[13] << 8
            for key, rom in CHIP_DEFS.items():
                if getattr(rom, "IMAGE_CHIP_ID", None) == chip_id and key != "esp8266":
                    candidates.append(key)
        candidates.append("esp8266")
    for chip in candidates:
        try:
            with contextlib.redirect_stdout(None):
                LoadFirmwareImage(chip, data)
        except (FatalError, ValueError, IndexError, KeyError):
            continue
        return chip
    raise BoardToolError("%s: not a valid firmware image for any chip esptool knows" % name,
                         EXIT_USAGE)


def flash(image, port, chip="auto", no_stub=False, no_reset=False, connect_attempts=4,
          say=print):
    """Write ``image`` to the chip on ``port``; return (chip, offset).

    no_stub: talk to the ROM loader only (slower, no whole-chip erase: write-flash erases the
    sectors it writes; no verify on an ESP8266). no_reset: do not touch DTR/RTS, for boards
    put into download mode by hand (hold BOOT, tap EN) and for pseudo-terminals.
    """
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BoardToolError("%s: cannot read the image (%s)" % (image, e.strerror), EXIT_USAGE)
    built_for = image_chip(data, str(image))
    say("%s: firmware image for %s, %d bytes" % (path.name, built_for, len(data)))

    mode = "no-reset" if no_reset else "default-reset"
    try:
        esp = detect_chip(port, 115200, mode, False, connect_attempts)
    except (FatalError, OSError) as e:
        raise at(port, "detect chip", _first_line(e) + " (is the board in download mode?)")
    try:
        found = chip_key(esp.CHIP_NAME)
        if chip != "auto" and found != chip:
            raise at(port, "detect chip", "wrong chip: asked for %s, the board is an %s; "
                     "nothing was erased" % (chip, esp.CHIP_NAME))
        if built_for != found:
            raise at(port, "check image", "%s is built for %s, the board is an %s; nothing "
                     "was erased" % (path.name, built_for, esp.CHIP_NAME))
        offset = esp.BOOTLOADER_FLASH_OFFSET
        try:
            if not no_stub:
                esp = esp.run_stub()
            attach_flash(esp)
            if esp.IS_STUB:
                erase_flash(esp)
            else:
                say("ROM loader: whole-chip erase needs the stub; write-flash erases the "
                    "sectors it writes")
            write_flash(esp, [(offset, data)])
            if not esp.IS_STUB and found == "esp8266":
                say("verify: not possible through the ESP8266 ROM loader (it cannot hash "
                    "flash); run without --no-stub to verify")
            reset_chip(esp, "no-reset" if no_reset else "hard-reset")
        except FatalError as e:
            raise at(port, "write flash", _first_line(e))
        say("flashed %s at 0x%x on the %s on %s" % (path.name, offset, esp.CHIP_NAME, port))
        return found, offset
    finally:
        try:
            esp._port.close()
        except OSError:
            pass


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
