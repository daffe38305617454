# Settings the host hands the stand-ins (runs under MicroPython; imported by machine, network
# and ntptime). Read once, at the first import, from the JSON file $SECURENODE_MP_BOARD:
#
#   {"port": "esp32", "device_seed": "board-1", "air": "/abs/air.json" or null,
#    "ntp": ["127.0.0.1", 12300] or null, "mains_v": 230.0, "mains_hz": 50.0,
#    "noise_v": 1.0, "adc_volts_per_count": 0.0125, "reset_cause": 1,
#    "chip_fd": 5 or null}
#
# host_root: where the host's filesystem is, once the board's flash sits at "/" (boot_board.py
# mounts it at /host and sets this); "" while nothing is mounted over the host's root.
# chip_fd: the write end of a pipe to host_sim.mp.launcher (watchdog feeds, reset requests).
import json
import os

_DEFAULTS = {"port": "esp32", "device_seed": "board", "air": None, "ntp": None,
             "mains_v": 230.0, "mains_hz": 50.0, "noise_v": 1.0,
             "adc_volts_per_count": 0.0125, "reset_cause": 1, "chip_fd": None,
             "host_root": ""}

settings = dict(_DEFAULTS)
_path = os.getenv("SECURENODE_MP_BOARD")
if _path:
    with open(_path) as f:
        settings.update(json.load(f))
del _path

_chip = None


def host_path(path):
    """A host file's path as this interpreter sees it (the flash may sit over "/")."""
    return settings["host_root"] + path


def open_chip():
    # boot_board.py opens it before the flash goes over "/"; elsewhere at first use.
    global _chip
    if _chip is None and settings["chip_fd"] is not None:
        _chip = open(host_path("/dev/fd/%d" % settings["chip_fd"]), "wb")
    return _chip


def tell_chip(message):
    """Send one line to the launcher (b"w5000", b"f", b"r"); False when there is none."""
    chip = open_chip()
    if chip is None:
        return False
    chip.write(message + b"\n")
    return True
