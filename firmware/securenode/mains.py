# Mains RMS voltage and frequency from one window of raw ADC samples.
#
# Pure maths over arrays the caller preallocated (sensor.Sampler fills them), so
# it runs unchanged on CPython for tests and on a board. Timestamps are offsets
# in microseconds from the first sample, not raw ticks_us values: ticks wrap at
# 2**30, and the caller takes each offset with time.ticks_diff, which knows how.
from micropython import const

# Status word bits, OR-ed together in the reading's "status" field (its wire format: the
# README, host tools and tests use these numbers). Private consts: inlined, so no names and no
# dict entries stay on the board.
_STATUS_CLIPPED = const(0x01)  # a sample reached an ADC rail: the voltage reads low
_STATUS_NO_SIGNAL = const(0x02)  # too small or too few crossings: freq is 0.0
_STATUS_VOLTAGE_RANGE = const(0x04)  # RMS voltage outside [volts_min, volts_max]
_STATUS_FREQ_RANGE = const(0x08)  # frequency outside [hz_min, hz_max] (never with NO_SIGNAL)
# 0x10, STATUS_DISTURBED: every window had a gap (GC, WiFi, scheduler), set by sensor.py.

_U16_MAX = const(65535)
# Readings this close to a rail are treated as clipped: ADCs flatten before the rail.
_CLIP_MARGIN = const(32)
# Hysteresis never narrower than this, so a quiet line's noise cannot re-trigger.
_MIN_HYST_COUNTS = const(16)
_MIN_SAMPLES = const(4)
# Below this RMS (volts) there is no mains to measure a frequency of: freq 0.0, NO_SIGNAL.
_MIN_SIGNAL_V = const(10.0)


class MainsError(Exception):
    """The sample window cannot be analysed (too short, or arrays of different length)."""


def analyse(samples, t_us, volts_per_count, volts_min=90, volts_max=264,
            hz_min=45, hz_max=65):
    """Measure one window: return (volts_rms, hz, status, dc_counts).

    samples: array('H') (or memoryview) of raw u16 ADC readings.
    t_us: array('I') of each sample's time in us after a fixed start (only
    differences are used), taken with time.ticks_diff so that the 2**30 wrap
    of ticks_us is already handled.
    The RMS is over whole cycles (first to last rising zero crossing) so that a
    part cycle at the window's ends does not bias it; hz averages every full cycle.

    >>> volts, hz, status, dc = analyse(samples, t_us, 0.0125)
    >>> "%.1f V %.2f Hz" % (volts, hz), status & 0x02    # NO_SIGNAL
    ('230.0 V 50.00 Hz', 0)
    """
    n = len(samples)
    if n < _MIN_SAMPLES or len(t_us) < n:
        raise MainsError("need >= %d samples with as many timestamps, got %d and %d"
                         % (_MIN_SAMPLES, n, len(t_us)))
    total = 0
    lo = _U16_MAX
    hi = 0
    for i in range(n):
        x = samples[i]
        total += x
        if x < lo:
            lo = x
        if x > hi:
            hi = x
    status = 0
    if lo <= _CLIP_MARGIN or hi >= _U16_MAX - _CLIP_MARGIN:
        status |= _STATUS_CLIPPED

    dc = total / n
    # Plain per-sample RMS about dc, for the whole window: sets the hysteresis, and is the
    # answer when no cycle was found.
    centre = int(dc + 0.5)
    acc = 0.0
    for i in range(n):
        # Integer deviations keep the loop to one float operation per sample.
        d = samples[i] - centre
        acc += d * d
    # mean((d - shift)^2) = mean(d^2) - shift^2, since mean(d) == shift (shift = dc - centre).
    ms = acc / n - (dc - centre) * (dc - centre)
    rms = ms ** 0.5 if ms > 0 else 0.0
    first_i, last_i, count, period_us = _rising_crossings(samples, t_us, n, dc, rms)

    hz = 0.0
    if count >= 2 and rms * volts_per_count >= _MIN_SIGNAL_V and period_us > 0:
        hz = 1000000.0 / period_us
        dc, rms = _cycle_stats(samples, t_us, first_i, last_i, period_us * (count - 1))
        if not hz_min <= hz <= hz_max:
            status |= _STATUS_FREQ_RANGE
    else:
        status |= _STATUS_NO_SIGNAL

    volts = rms * volts_per_count
    if not volts_min <= volts <= volts_max:
        status |= _STATUS_VOLTAGE_RANGE
    return volts, hz, status, dc


def _cycle_stats(samples, t_us, start, end, span_us):
    # Time-weighted mean and RMS over whole cycles. Each sample stands for half
    # the time to each neighbour, so jittered sample instants do not skew the
    # result. The mean square is divided by the exact crossing-to-crossing time,
    # not by the sample count: the bits cut off at either end sit next to a
    # zero crossing, where the deviation is ~0, so they carry no energy but
    # would otherwise add up to a sample's worth of time (0.5% at 2 kHz).
    wsum = 0
    acc = 0.0
    for i in range(start, end):
        w = t_us[i + 1] - t_us[i - 1]
        wsum += w
        acc += w * samples[i]
    dc = acc / wsum
    acc = 0.0
    for i in range(start, end):
        d = samples[i] - dc
        acc += (t_us[i + 1] - t_us[i - 1]) * d * d
    # Weights are twice the time each sample stands for.
    ms = acc / (2 * span_us)
    return dc, ms ** 0.5 if ms > 0 else 0.0


def _rising_crossings(samples, t_us, n, dc, rms):
    # A rising crossing counts only after the signal has been below dc - h and
    # then reaches dc + h (hysteresis), so noise near zero is one crossing, not
    # many. Its time is where the line between the samples either side of dc
    # meets dc: sampling at ~2 kHz, the sine is close to straight there.
    # Returns (index after first crossing, index after last, count, mean period us).
    h = rms * 0.5
    if h < _MIN_HYST_COUNTS:
        h = _MIN_HYST_COUNTS
    below = dc - h
    above = dc + h
    armed = False
    candidate = -1
    count = 0
    first_i = last_i = 0
    first_t = last_t = 0.0
    prev = samples[0]
    for i in range(1, n):
        x = samples[i]
        if x < below:
            armed = True
            candidate = -1
        elif armed:
            if prev < dc <= x:
                candidate = i
            if x >= above and candidate > 0:
                a = samples[candidate - 1]
                t0 = t_us[candidate - 1]
                t = t0 + (t_us[candidate] - t0) * (dc - a) / (samples[candidate] - a)
                if count == 0:
                    first_i = candidate
                    first_t = t
                last_i = candidate
                last_t = t
                count += 1
                armed = False
                candidate = -1
        prev = x
    period_us = (last_t - first_t) / (count - 1) if count >= 2 else 0.0
    return first_i, last_i, count, period_us
