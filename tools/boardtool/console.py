"""`board repl` (mpremote's REPL on the board's port) and `board calibrate`."""
import ast
import json
import subprocess
from pathlib import Path

from tools.boardtool import firmware
from tools.boardtool.errors import EXIT_USAGE, BoardToolError, at
from tools.boardtool.link import BoardLink

REPO = Path(__file__).resolve().parents[2]
MPREMOTE = REPO / ".venv" / "bin" / "mpremote"

# mains.STATUS_CLIPPED | STATUS_NO_SIGNAL: a window with either says nothing about the scale;
# STATUS_DISTURBED (a gap in the window) skews the RMS: a calibration uses clean windows only.
_UNUSABLE = 0x01 | 0x02 | 0x10
_BUDGET_MS = 20000

# Runs on the board: the firmware's own sampler with the board's own config. Windows with a
# gap (disturbed), clipped or without signal say nothing reliable about the scale: they are
# retaken until %(want)d clean ones are in or %(budget_ms)d ms have passed.
_SAMPLE = """
import time
from securenode import config, sensor
_c = config.load('config.json').sample
_s = sensor.Sampler(_c.adc_pin, _c.samples, _c.window_ms, _c.volts_per_count)
_w = []
_n = 0
_t0 = time.ticks_ms()
while _n < %(want)d and time.ticks_diff(time.ticks_ms(), _t0) < %(budget_ms)d:
    _r = _s.read()
    _w.append(_r)
    _n += not _r[2] & %(unusable)d
print(repr(_w[-64:]))
"""


def repl(port):
    """Hand the terminal to mpremote's REPL (Ctrl-] or Ctrl-X leaves); return its status."""
    return subprocess.call([str(MPREMOTE), "connect", port, "repl"])


def calibrate(port, directory, volts, windows=5, say=print):
    """Measure live windows and set sample.volts_per_count so they read ``volts``.

    The result goes into directory/config.json (deploy it to use it); returns the new value.

    >>> calibrate("/dev/ttyUSB0", "device", volts=231.0)
    0.012443
    """
    if not 1 <= volts <= 1000:
        raise BoardToolError("--volts must be the measured mains voltage, 1..1000, got %s"
                             % volts, EXIT_USAGE)
    path = Path(directory) / "config.json"
    data, cfg = firmware.load_config(path)
    with BoardLink(port) as board:
        out = board.exec(_SAMPLE % {"want": windows, "budget_ms": _BUDGET_MS,
                                    "unusable": _UNUSABLE},
                         "sample the ADC", timeout_s=_BUDGET_MS / 1000 + 10)
    try:
        results = ast.literal_eval(out.decode().strip())  # a list of 3-tuples
        readings = [float(v) for v, hz, status in results if not status & _UNUSABLE]
    except Exception:  # noqa: BLE001 anything odd from the board is one message
        raise at(port, "sample the ADC", "unexpected answer %r" % out[:80])
    if not readings:
        raise at(port, "sample the ADC", "no usable window (no signal, clipped or disturbed): "
                 "check the AC adapter, the bias and the ADC pin %d, then try again"
                 % cfg.sample.adc_pin)
    seen = sum(readings) / len(readings)
    old = cfg.sample.volts_per_count
    new = round(old * volts / seen, 9)
    data.setdefault("sample", {})["volts_per_count"] = new
    firmware.validate(data, path.parent)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    say("board read %.2f V over %d windows at %g V/count; %s V measured: volts_per_count = %g "
        "(written to %s; run deploy)" % (seen, len(readings), old, volts, new, path))
    return new
