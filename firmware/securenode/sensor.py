# The I/O half of the mains measurement: read the ADC at evenly spaced
# instants into buffers allocated once, then hand them to mains.analyse.
import gc
from array import array

import time

from micropython import const

from securenode import mains

_MIN_SAMPLES = const(4)
_READ_TRIES = const(3)
_WINDOW_TRIES = const(4)
# A sample this late leaves a gap the time-weighted maths bridges with a straight line: up to
# 1 ms (1/20 of a 50 Hz cycle) that costs well under 0.1% of the RMS; longer gaps do not.
_MAX_LATE_US = const(1000)
# The status bit for "every window had a gap" (mains.py's table of status bits, STATUS_DISTURBED).
_STATUS_DISTURBED = const(0x10)


class SensorError(Exception):
    """The sampler cannot be set up as asked (bad sample count, window or ADC pin)."""


class Sampler:
    """Samples one ADC pin over a window and measures the mains on it.

    >>> s = Sampler(adc_pin=34, samples=200, window_ms=100, volts_per_count=0.0125)
    >>> volts, hz, status = s.read()
    """

    def __init__(self, adc_pin, samples, window_ms, volts_per_count,
                 volts_min=90, volts_max=264, hz_min=45, hz_max=65):
        if samples < _MIN_SAMPLES or window_ms <= 0:
            raise SensorError("need >= %d samples over a positive window, got %d over %d ms"
                              % (_MIN_SAMPLES, samples, window_ms))
        # Imported here, not at module level, so importing this module never
        # touches hardware (and pure tests can import it without a board).
        import machine

        # Feature test: an ADC class with attenuation constants is the ESP32's, which takes a
        # Pin (ports/esp32/machine_adc.c) and reads only ~0-1.1 V at its default 0 dB: 11 dB
        # spans the pin's full range. The ESP8266's has no constants and takes an integer
        # channel, ADC(0) for the TOUT pin; a Pin there is a TypeError (ports/esp8266/
        # machine_adc.c, mp_obj_get_int).
        atten = getattr(machine.ADC, "ATTN_11DB", None)
        try:
            if atten is None:
                adc = machine.ADC(adc_pin)
            else:
                adc = machine.ADC(machine.Pin(adc_pin))
                adc.atten(atten)
        except ValueError as exc:
            raise SensorError("sample.adc_pin %d: this board has no ADC there (%s)%s"
                              % (adc_pin, exc, "" if atten is not None else
                                 "; an ESP8266 reads channel 0 (the TOUT pin)"))
        # (read_u16, values, t_us, period_us): what _sample() takes into locals, allocated
        # once; then what mains.analyse() is given besides the two arrays.
        self._window = (adc.read_u16, array("H", bytes(2 * samples)),
                        array("I", bytes(4 * samples)), window_ms * 1000 // samples)
        self._limits = (volts_per_count, volts_min, volts_max, hz_min, hz_max)

    def read(self):
        """Sample one window and return (volts_rms, hz, status); blocks for the window.

        status is a bitmask of the status bits listed in mains.py.

        >>> volts, hz, status = sampler.read()
        >>> "%.1f V %.2f Hz" % (volts, hz)
        '230.0 V 50.00 Hz'
        """
        # A gap longer than _MAX_LATE_US (GC, a WiFi interrupt, or on the host a
        # descheduled process) leaves part of a cycle unseen and skews the RMS: sample the
        # window again, and say so in the status word if it never comes out clean.
        disturbed = _STATUS_DISTURBED
        # Collect now so a GC pause is unlikely to land inside the window.
        gc.collect()
        for attempt in range(_WINDOW_TRIES):
            if self._sample(attempt + 1 < _WINDOW_TRIES):
                disturbed = 0
                break
        window = self._window
        lim = self._limits
        volts, hz, status, _ = mains.analyse(
            window[1], window[2], lim[0], lim[1], lim[2], lim[3], lim[4])
        return volts, hz, status | disturbed

    def _sample(self, give_up_when_late):
        """Fill the window; False if a sample came more than _MAX_LATE_US late (and, when
        ``give_up_when_late``, stop there: the window will be taken again)."""
        # Locals: attribute lookups inside the loop would skew the sample instants.
        ticks_us = time.ticks_us
        ticks_diff = time.ticks_diff
        ticks_add = time.ticks_add
        sleep_us = time.sleep_us
        read_u16, values, t_us, period = self._window
        start = ticks_us()
        due = start
        # A read interrupted (WiFi, GC) for longer than this has an uncertain
        # instant: taken again rather than stamped up to half of that wrong.
        slow_us = period >> 1
        late_us = max(period, _MAX_LATE_US)
        on_time = True
        for i in range(len(values)):
            # sleep_us, not a loop on ticks_us here: on a board it is a busy-wait in C on the
            # microsecond timer (ports/esp32/mphalport.c and ports/esp8266/esp_mphal.c,
            # mp_hal_delay_us), finer than a bytecode loop's ~10-20 us turns; on the unix port
            # and the CPython stand-in it is a real sleep (usleep), which leaves the CPU to
            # other simulated boards. Only the wait is left to it: each sample is stamped
            # with its own ticks_us and the next is due on the grid, so a sleep that ends
            # late (a host's scheduler) shifts one sample, never the ones after.
            wait = ticks_diff(due, ticks_us())
            if wait > 0:
                sleep_us(wait)
            for _ in range(_READ_TRIES):
                before = ticks_us()
                values[i] = read_u16()
                after = ticks_us()
                if ticks_diff(after, before) <= slow_us:
                    break
            # Stamp the middle of the conversion; offsets from the start, taken
            # with ticks_diff, survive the 2**30 wrap of ticks_us.
            t_us[i] = ticks_diff(before, start) + (ticks_diff(after, before) >> 1)
            if ticks_diff(before, due) > late_us:
                on_time = False
                if give_up_when_late:
                    return False
            due = ticks_add(due, period)
        return on_time
