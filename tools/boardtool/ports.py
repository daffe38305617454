"""Find the board's serial port as mpremote does, and say plainly why one cannot be used.

mpremote's `connect auto` takes the first port that has a USB VID:PID; we take only the USB
bridges ESP boards carry, so a phone or a GPS on another port is never mistaken for a board.
"""
import errno
import os

import serial
import serial.tools.list_ports

from tools.boardtool.errors import EXIT_USAGE, BoardToolError, at

# USB VID:PID of the serial bridges found on ESP32/ESP8266 boards.
KNOWN_BRIDGES = {
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x55D4): "WCH CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6015): "FTDI FT231X",
    (0x303A, 0x1001): "Espressif USB-Serial/JTAG (ESP32-S3/C3)",
    (0x303A, 0x4001): "Espressif USB (ESP32-S2/S3 TinyUSB)",
}


def candidates(comports=None):
    """(device, description) of every port with a known bridge, sorted by device."""
    ports = serial.tools.list_ports.comports() if comports is None else comports
    found = []
    for p in ports:
        name = KNOWN_BRIDGES.get((p.vid, p.pid))
        if name is not None:
            found.append((p.device, name))
    return sorted(found)


def choose(port=None, comports=None):
    """The port to use: the one given (or $SECURENODE_PORT), else the only board plugged in.

    >>> choose("/dev/ttyUSB0")
    '/dev/ttyUSB0'
    """
    port = port or os.environ.get("SECURENODE_PORT") or None
    if port:
        check_usable(port)
        return port
    found = candidates(comports)
    if not found:
        raise BoardToolError("no board found: no serial port with a known USB bridge (CP210x, "
                             "CH340, CH9102, FTDI, Espressif); plug one in or give --port",
                             EXIT_USAGE)
    if len(found) > 1:
        raise BoardToolError("several boards found (%s): choose one with --port"
                             % ", ".join("%s %s" % f for f in found), EXIT_USAGE)
    check_usable(found[0][0])
    return found[0][0]


def check_usable(port):
    """Raise a one-line error when the port is missing or not ours to open."""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise at(port, "open port", "no such serial device (is the board plugged in?)",
                     EXIT_USAGE)
        if e.errno in (errno.EACCES, errno.EPERM):
            raise at(port, "open port", "permission denied on the serial device (add yourself "
                     "to the dialout group, then log in again)")
        if e.errno == errno.EBUSY:
            raise at(port, "open port", "busy: another program has the port open")
        raise at(port, "open port", os.strerror(e.errno))
    os.close(fd)


def open_serial(port, timeout=0.1):
    """pyserial at the board's 115200 baud; failures as one-line errors."""
    try:
        return serial.Serial(port, 115200, timeout=timeout, exclusive=True)
    except serial.SerialException as e:
        raise at(port, "open port", str(e).split(":")[0] or "cannot open")
