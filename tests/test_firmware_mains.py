"""securenode/mains.py: RMS volts and frequency from raw ADC windows, within 1% of the
waveform that made them, and the same numbers on CPython and on real MicroPython."""

import json
import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import assert_same, firmware_files, run_both  # noqa: E402

VOLTS_PER_COUNT = 0.0125
CLIPPED, NO_SIGNAL, VOLTAGE_RANGE, FREQ_RANGE = 0x01, 0x02, 0x04, 0x08


def window(volts, hz, seed, noise_v=1.0, jitter_us=0, samples=200, window_us=100000,
           dc=32768, vpc=VOLTS_PER_COUNT):
    """A board's view of a sine: u16 counts and sample times (us) with jitter and noise."""
    rnd = random.Random(seed)
    phase = rnd.uniform(0, 2 * math.pi)
    period = window_us / samples
    values, times = [], []
    for i in range(samples):
        t = i * period + (rnd.uniform(-jitter_us, jitter_us) if i else 0)
        t = max(int(t), times[-1] + 1 if times else 0)
        v = volts * math.sqrt(2) * math.sin(2 * math.pi * hz * t / 1e6 + phase)
        count = round(dc + (v + rnd.gauss(0, noise_v)) / vpc)
        values.append(min(65535, max(0, count)))
        times.append(t)
    return values, times


# name -> (volts, hz, window kwargs, analyse kwargs)
ACCURACY = {}
for v, f in ((230, 50), (120, 60), (230, 49.5), (120, 61.2), (240, 50.2), (110, 59.8)):
    for jitter in (0, 120, 240):
        for seed in range(3):
            ACCURACY["%gV_%gHz_jitter%d_%d" % (v, f, jitter, seed)] = (
                v, f, {"jitter_us": jitter, "seed": seed}, {})
ACCURACY["230V_50Hz_dc_off_centre"] = (230, 50, {"seed": 9, "dc": 30000}, {})
ACCURACY["120V_60Hz_noisy_5V"] = (120, 60, {"seed": 4, "noise_v": 5.0}, {})
ACCURACY["230V_50Hz_fast_adc"] = (230, 50, {"seed": 5, "samples": 400, "window_us": 80000}, {})

# name -> (volts, hz, window kwargs, analyse kwargs, expected status)
STATUS = {
    "clipped_400V": (400, 50, {"seed": 1}, {}, CLIPPED | VOLTAGE_RANGE),
    "noise_only": (0, 50, {"seed": 2}, {}, NO_SIGNAL | VOLTAGE_RANGE),
    "flat_line": (0, 50, {"seed": 3, "noise_v": 0.0}, {}, NO_SIGNAL | VOLTAGE_RANGE),
    "brownout_70V": (70, 50, {"seed": 4}, {}, VOLTAGE_RANGE),
    "overvoltage_from_limits": (245, 50, {"seed": 5}, {"volts_max": 240}, VOLTAGE_RANGE),
    "low_frequency_40Hz": (230, 40, {"seed": 6}, {}, FREQ_RANGE),
    "high_frequency_70Hz": (120, 70, {"seed": 7}, {}, FREQ_RANGE),
    "both_out_of_range": (50, 75, {"seed": 8, "noise_v": 0.2}, {}, VOLTAGE_RANGE | FREQ_RANGE),
    "part_cycle_window": (230, 50, {"seed": 9, "samples": 30, "window_us": 15000}, {},
                          NO_SIGNAL),
}

VECTORS = r'''
import json
from array import array
from securenode import mains

cases = json.loads(CASES)
out = {}
for name in sorted(cases):
    c = cases[name]
    samples = array("H", c["values"])
    t_us = array("I", c["times"])
    if c.get("memoryview"):
        samples = memoryview(samples)
    kw = c["kw"]
    r = mains.analyse(samples, t_us, c["vpc"], kw.get("volts_min", 90), kw.get("volts_max", 264),
                      kw.get("hz_min", 45), kw.get("hz_max", 65))
    out[name] = [r[0], r[1], r[2], r[3]]
errors = []
for values, times in (([1, 2, 3], [0, 1, 2]), ([1, 2, 3, 4, 5], [0, 1])):
    try:
        mains.analyse(array("H", values), array("I", times), 0.0125)
        errors.append("no error")
    except mains.MainsError as e:
        errors.append(str(e))
out["errors"] = errors
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = {}
    for table in (ACCURACY, STATUS):
        for name, spec in table.items():
            volts, hz, wkw, akw = spec[:4]
            values, times = window(volts, hz, **wkw)
            cases[name] = {"values": values, "times": times, "kw": akw, "vpc": VOLTS_PER_COUNT}
    cases["230V_50Hz_jitter0_0"]["memoryview"] = True
    code = "CASES = %r\n" % json.dumps(cases) + VECTORS
    return run_both(firmware_files("mains"), code, tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_compute_the_same_numbers(results):
    assert_same(results[0], results[1], rel=1e-9)


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(ACCURACY))
def test_rms_and_frequency_within_one_percent(results, port, case):
    volts, hz = ACCURACY[case][:2]
    got_v, got_hz, status, dc = results[port][case]
    assert status == 0
    assert abs(got_v - volts) / volts < 0.01, (got_v, volts)
    assert abs(got_hz - hz) / hz < 0.01, (got_hz, hz)
    expected_dc = ACCURACY[case][2].get("dc", 32768)
    assert abs(dc - expected_dc) < 0.002 * expected_dc


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
@pytest.mark.parametrize("case", sorted(STATUS))
def test_status_bits_flag_what_is_wrong(results, port, case):
    got_v, got_hz, status, _ = results[port][case]
    assert status == STATUS[case][4], (got_v, got_hz, status)
    if status & NO_SIGNAL:
        assert got_hz == 0.0


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_windows_too_short_or_mismatched_raise_mains_error(results, port):
    assert results[port]["errors"] == [
        "need >= 4 samples with as many timestamps, got 3 and 3",
        "need >= 4 samples with as many timestamps, got 5 and 2",
    ]
