"""`tools/board.py flash` against the ROM-loader stand-in (host_sim/rom_loader.py) on a pty:
byte-exact writes at each chip's offset, and refusals that erase nothing.

Test images are built with esptool's own image classes (esptool.bin_image: the code behind
`esptool elf2image`), segments of random bytes at the chips' IRAM/DRAM addresses."""
import hashlib
import os
import subprocess
import sys
import time

import pytest
from esptool.bin_image import (ELFSection, ESP8266ROMFirmwareImage, ESP32FirmwareImage,
                               ESP32S3FirmwareImage)

from board_fixtures import REPO, garbage_port, run_board_tool  # noqa: F401 (fixture)
from host_sim.rom_loader import RomLoader

FLASH_BYTES = 1 << 20
# A pty has no DTR/RTS: esptool must neither reset the chip into download mode nor out of it.
PTY_FLAGS = ("--no-stub", "--no-reset")


def _esp32_family_image(path, cls):
    img = cls()
    img.entrypoint = 0x40080000
    img.segments = [ELFSection(b".iram0.text", 0x40080000, os.urandom(3000), 0),
                    ELFSection(b".dram0.data", 0x3FFB0000, os.urandom(700), 0)]
    img.save(str(path))
    return path


def _esp8266_image(path):
    img = ESP8266ROMFirmwareImage()
    img.entrypoint = 0x40100000
    img.segments = [ELFSection(b".text", 0x40100000, os.urandom(2500), 0),
                    ELFSection(b".data", 0x3FFE8000, os.urandom(600), 0)]
    _, data = img.save(None)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return {"esp32": _esp32_family_image(d / "esp32.bin", ESP32FirmwareImage),
            "esp32s3": _esp32_family_image(d / "esp32s3.bin", ESP32S3FirmwareImage),
            "esp8266": _esp8266_image(d / "esp8266.bin")}


@pytest.fixture
def rom(tmp_path):
    """rom(chip): a chip in download mode whose 1 MB flash holds a known random pattern."""
    loaders = []

    def start(chip):
        flash = tmp_path / ("flash-%s-%d.bin" % (chip, len(loaders)))
        flash.write_bytes(os.urandom(FLASH_BYTES))
        loader = RomLoader(flash, chip=chip).__enter__()
        loader.before = flash.read_bytes()
        loaders.append(loader)
        return loader

    yield start
    for loader in loaders:
        loader.__exit__(None, None, None)


@pytest.mark.parametrize("chip,offset", [("esp32", 0x1000), ("esp8266", 0x0)])
def test_flash_writes_the_image_byte_exact_at_the_chip_offset(rom, images, chip, offset):
    loader = rom(chip)
    image = images[chip].read_bytes()
    r = run_board_tool("flash", images[chip], "--port", loader.port, *PTY_FLAGS)
    assert r.returncode == 0, r.stdout + r.stderr
    after = loader.flash_path.read_bytes()
    assert after[offset:offset + len(image)] == image
    # Only the erased sectors changed: before the offset and after them the pattern is intact.
    erased = [e for e in loader.log if e[0] == "erase" and e[2]]
    assert erased and erased[0][1] == offset
    end = max(e[1] + e[2] for e in erased + [("w", offset, len(image))])
    end = max(end, max(w[1] + w[2] for w in loader.log if w[0] == "write"))
    assert after[:offset] == loader.before[:offset]
    assert after[end:] == loader.before[end:]
    assert "flashed %s at 0x%x" % (images[chip].name, offset) in r.stdout
    if chip == "esp32":
        assert "Hash of data verified." in r.stdout   # SPI_FLASH_MD5 answered by the ROM
    else:
        assert "verify: not possible through the ESP8266 ROM loader" in r.stdout


@pytest.mark.parametrize("chip,offset", [("esp32", 0x1000), ("esp8266", 0x0)])
def test_flash_through_the_stub_erases_the_chip_writes_and_verifies(rom, images, chip, offset):
    # The default path on a real board: esptool uploads its flasher stub (MEM_BEGIN/DATA/END,
    # "OHAI"), erases the whole chip (ERASE_FLASH), writes and checks the MD5, ESP8266 too.
    loader = rom(chip)
    image = images[chip].read_bytes()
    r = run_board_tool("flash", images[chip], "--port", loader.port, "--no-reset")
    assert r.returncode == 0, r.stdout + r.stderr
    after = loader.flash_path.read_bytes()
    assert after[offset:offset + len(image)] == image
    assert after[:offset] == b"\xff" * offset           # the whole chip was erased first
    assert after[offset + len(image):] == b"\xff" * (FLASH_BYTES - offset - len(image))
    assert [e[0] for e in loader.log][:2] == ["stub", "erase"]
    assert loader.log[1] == ("erase", 0, FLASH_BYTES)
    assert "Hash of data verified." in r.stdout


@pytest.mark.parametrize("board,image,words", [
    ("esp32", "esp32s3", ("built for esp32s3, the board is an ESP32", "step: check image")),
    ("esp8266", "esp32", ("built for esp32, the board is an ESP8266", "step: check image")),
    ("esp32", "esp8266", ("built for esp8266, the board is an ESP32", "step: check image")),
])
def test_an_image_for_another_chip_is_refused_before_anything_is_erased(rom, images, board,
                                                                        image, words):
    loader = rom(board)
    r = run_board_tool("flash", images[image], "--port", loader.port, *PTY_FLAGS)
    _one_line(r, 1, loader.port, "nothing was erased", *words)
    assert loader.flash_path.read_bytes() == loader.before
    assert not [e for e in loader.log if e[0] in ("erase", "write")]


def test_a_chip_other_than_the_one_asked_for_is_refused(rom, images):
    loader = rom("esp8266")
    r = run_board_tool("flash", images["esp8266"], "--port", loader.port, "--chip", "esp32",
                       *PTY_FLAGS)
    _one_line(r, 1, "wrong chip: asked for esp32, the board is an ESP8266", "step: detect chip")
    assert loader.flash_path.read_bytes() == loader.before


def test_a_file_that_is_not_an_image_is_refused_without_touching_the_board(rom, tmp_path):
    loader = rom("esp32")
    junk = tmp_path / "notes.txt"
    junk.write_text("not firmware\n")
    r = run_board_tool("flash", junk, "--port", loader.port, *PTY_FLAGS)
    _one_line(r, 2, "notes.txt: not a firmware image (first byte 0x6e")
    assert loader.log == [] and loader.flash_path.read_bytes() == loader.before
    r = run_board_tool("flash", tmp_path / "missing.bin", "--port", loader.port, *PTY_FLAGS)
    _one_line(r, 2, "missing.bin: cannot read the image")


def test_a_port_that_answers_garbage_is_not_a_chip(garbage_port, images):
    started = time.monotonic()
    r = run_board_tool("flash", images["esp32"], "--port", garbage_port, *PTY_FLAGS,
                       timeout=120)
    _one_line(r, 1, garbage_port, "step: detect chip", "download mode")
    assert time.monotonic() - started < 90


def test_missing_port(images):
    r = run_board_tool("flash", images["esp32"], "--port", "/dev/no-such-port", *PTY_FLAGS)
    _one_line(r, 2, "/dev/no-such-port: no such serial device", "step: open port")


def test_compressed_writes_reach_the_flash_byte_exact(rom, images):
    # esptool's FLASH_DEFL_* path (the one the stub uses), through the ESP32 ROM stand-in.
    loader = rom("esp32")
    image = images["esp32"].read_bytes()
    r = subprocess.run([sys.executable, "-m", "esptool", "--port", loader.port, "--no-stub",
                        "--before", "no-reset", "--after", "no-reset", "write-flash",
                        "--compress", "0x10000", str(images["esp32"])],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Hash of data verified." in r.stdout
    assert loader.flash_path.read_bytes()[0x10000:0x10000 + len(image)] == image
    assert hashlib.sha256(loader.flash_path.read_bytes()[:0x10000]).digest() == \
        hashlib.sha256(loader.before[:0x10000]).digest()


def _one_line(r, status, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status and len(lines) == 1, r.stdout + r.stderr
    for w in words:
        assert w in lines[0], lines[0]
