"""The configured sample ranges reach the sampler: a simulated board on 230 V / 50 Hz mains
whose config says 100-130 V flags every reading out of range (mains.STATUS_VOLTAGE_RANGE),
one whose config says 55-65 Hz flags the frequency (STATUS_FREQ_RANGE); each is the
other's control. End to end: config.json on the board's flash, the reading on the broker."""

import json

import pytest

VOLTAGE_RANGE = 0x04
FREQ_RANGE = 0x08
DISTURBED = 0x10

CASES = {
    # device -> (config overrides, bit that must be set, bit that must be clear)
    "board-range-v": ({"sample.volts_min": 100, "sample.volts_max": 130},
                      VOLTAGE_RANGE, FREQ_RANGE),
    "board-range-hz": ({"sample.hz_min": 55, "sample.hz_max": 65}, FREQ_RANGE, VOLTAGE_RANGE),
}


@pytest.mark.parametrize("device", sorted(CASES))
def test_configured_ranges_set_the_out_of_range_bits(launch, broker, device):
    overrides, set_bit, clear_bit = CASES[device]
    config = {"run.max_readings": 3}
    config.update(overrides)
    board = launch(device, broker.port, config=config)
    board.wait_for("halted", timeout=60, reason="done")
    readings = [json.loads(e["payload"]) for e in board.of("published")]
    assert len(readings) >= 3
    for reading in readings:
        assert reading["status"] & set_bit, reading
    # A window disturbed on a loaded host (0x10) may read anything, so the control bit and
    # the values are judged on clean windows only.
    clean = [r for r in readings if not r["status"] & DISTURBED]
    for reading in clean:
        assert 225 <= reading["voltage"] <= 235 and 49.5 <= reading["freq"] <= 50.5, reading
        assert not reading["status"] & clear_bit, reading
