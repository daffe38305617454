# Settings the host hands the stand-ins (runs under MicroPython; imported by machine, network
# and ntptime). Read once, at the first import, from the JSON file $SECURENODE_MP_BOARD;
# fields left out keep these defaults:
#
#   {"port": "esp32", "device_seed": "board-1", "air": "/host/abs/air.json" or null,
#    "ntp": ["127.0.0.1", 12300] or null, "mains_v": 230.0, "mains_hz": 50.0,
#    "noise_v": 1.0, "adc_volts_per_count": 0.0125, "reset_cause": 1,
#    "chip": "/dev/fd/5" or null}
#
# air: the virtual air's path as this interpreter sees it (host_sim.mp.launcher gives it under
# /host, where boot_board mounts the host's filesystem once the board's flash sits at "/").
# chip: the write end of a pipe to host_sim.mp.launcher (watchdog feeds, reset requests),
# opened at this import: the boot imports the stand-ins before the flash goes over "/".
#
# On a board these modules are C and their names are static; here every name they hold is
# interned before the firmware's, so they keep few: private constants are `const`, settings
# stay one dict, and anything used once is inline.
import json
import os

settings = {"port": "esp32", "device_seed": "board", "air": None, "ntp": None,
            "mains_v": 230.0, "mains_hz": 50.0, "noise_v": 1.0,
            "adc_volts_per_count": 0.0125, "reset_cause": 1, "chip": None}
_path = os.getenv("SECURENODE_MP_BOARD")
if _path:
    with open(_path) as f:
        settings.update(json.load(f))
    del f
del _path

_chip = settings["chip"]
if _chip is not None:
    _chip = open(_chip, "wb")


def tell_chip(message):
    """Send one line to the launcher (b"w5000", b"f", b"r"); False when there is none."""
    if _chip is None:
        return False
    _chip.write(message + b"\n")
    return True
