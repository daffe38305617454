# `machine` for the MicroPython unix port, which has no ADC, Pin, RTC, WDT, reset_cause or
# unique_id (runs under MicroPython). Behaviour follows the esp32/esp8266 ports' machine
# modules (ports/esp32/machine_adc.c, machine_wdt.c, modmachine.c); what the host cannot
# give (setting the RTC) is said where it happens.
#
# On a board this module is C: its names are static. Here each name it holds is interned
# before the firmware's: private constants are `const`, helpers used once are inline, and of
# the ports' API only what the firmware, the tests and the tools use is here. Left out (add
# them when something uses them): Pin.IN/OUT/OPEN_DRAIN/PULL_*/IRQ_* and Pin.init/irq,
# ADC.ATTN_0DB/2_5DB/6DB, ADC.WIDTH_* and ADC.width/read_uv, RTC.init, disable_irq and
# enable_irq. A name left out is an AttributeError here, never a silent difference.
import hashlib
import math
import random
import sys
import time

from micropython import const

from _simboard import settings, tell_chip

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_ESP32 = settings["port"] != "esp8266"
_FEED_REPORT_MS = const(100)   # the launcher hears of feeds at most this often
_TWO_PI = const(6.283185307179586)

# The mains waveform's time base: microseconds since this module loaded, unwrapped from
# ticks_us (which wraps at 2**30 us, ~18 min) as long as reads come < 9 min apart.
_clock = [time.ticks_us(), 0]


def _adc_u16():
    # Same formula as host_sim/stubs/board_state.py BoardState.adc_u16.
    now = time.ticks_us()
    _clock[1] += time.ticks_diff(now, _clock[0])
    _clock[0] = now
    s = settings
    v = 1.4142135623730951 * s["mains_v"] * math.sin(_TWO_PI * s["mains_hz"] * _clock[1] / 1e6)
    if s["noise_v"] > 0:
        # A gaussian by Box-Muller: this port's random has no gauss().
        u = 1.0 - random.random()
        v += (math.sqrt(-2.0 * math.log(u)) * math.cos(_TWO_PI * random.random())
              * s["noise_v"])
    counts = int(round(32768 + v / s["adc_volts_per_count"]))
    return 0 if counts < 0 else 65535 if counts > 65535 else counts


class Pin:
    def __init__(self, id, mode=None, pull=None, value=None):
        self.id = id
        self._value = 0 if value is None else int(bool(value))

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = int(bool(v))

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    def __call__(self, v=None):
        return self.value(v)


# ESP8266 ADC(1) reads system_get_vdd33() in 1/1024 V; a 3.3 V supply reads about this.
_VDD33 = const(3379)


class ADC:
    if _ESP32:
        # Only the ESP32's ADC has constants: ports/esp8266/machine_adc.c defines
        # MICROPY_PY_MACHINE_ADC_CLASS_CONSTANTS empty, so there hasattr(ADC, "ATTN_11DB")
        # is False (securenode.sensor tells the ports apart by it).
        ATTN_11DB = 3

    def __init__(self, *args, **kwargs):
        # self.id: the GPIO (ESP32) or the channel (ESP8266).
        if _ESP32:
            # mp_machine_adc_make_new: one positional argument, a Pin or an int GPIO number
            # (machine_pin_get_id), then "invalid pin" unless that GPIO has an ADC channel
            # (madc_obj[] for CONFIG_IDF_TARGET_ESP32: ADC1 on 32-39, ADC2 on 0, 2, 4,
            # 12-15, 25-27, as host_sim/stubs/machine.py has them); atten= is keyword-only.
            if len(args) != 1 or [k for k in kwargs if k != "atten"]:
                raise TypeError("extra arguments" if args else
                                "function missing 1 required positional arguments")
            gpio = args[0].id if isinstance(args[0], Pin) else args[0]
            if type(gpio) is not int or gpio not in (36, 37, 38, 39, 32, 33, 34, 35, 4, 0, 2,
                                                     15, 13, 12, 14, 27, 25, 26):
                raise ValueError("invalid pin")
            self.id = gpio
            return
        # ESP8266: exactly one positional argument (mp_arg_check_num 1, 1), converted with
        # mp_obj_get_int, so a Pin is a TypeError; channel 0 is the TOUT pin, 1 the supply
        # voltage, anything else "ADC(%d) doesn't exist".
        if kwargs:
            raise TypeError("function doesn't take keyword arguments")   # py/argcheck.c
        if len(args) != 1:
            raise TypeError("function takes 1 positional arguments but %d were given"
                            % len(args))
        channel = args[0]
        if type(channel) is not int and type(channel) is not bool:
            raise TypeError("can't convert %s to int" % type(channel).__name__)
        if channel != 0 and channel != 1:
            raise ValueError("ADC(%d) doesn't exist" % channel)
        self.id = int(channel)

    def read_u16(self):
        if not _ESP32 and self.id == 1:   # the ESP8266's supply voltage
            return _VDD33 * 65535 // 1024   # as mp_machine_adc_read_u16 scales it
        return _adc_u16()

    def read(self):
        if not _ESP32 and self.id == 1:
            return _VDD33
        return _adc_u16() >> (4 if _ESP32 else 6)   # 12-bit on esp32, 10-bit on esp8266

    if _ESP32:
        def atten(self, value):
            return None


class RTC:
    def datetime(self, dt=None):
        # The unix port's time.time() is the host clock, which an unprivileged process cannot
        # set: reads give the host time, and setting it (ntptime.settime) changes nothing.
        if dt is not None:
            return None
        t = time.time()
        g = time.gmtime(int(t))
        return (g[0], g[1], g[2], g[6], g[3], g[4], g[5], int((t % 1) * 1000000))


class WDT:
    """The hardware watchdog: the launcher resets the board unless fed within timeout ms."""

    def __init__(self, id=0, timeout=5000):
        self._told = time.ticks_ms()
        tell_chip(b"w%d" % max(1, int(timeout)))

    def feed(self):
        now = time.ticks_ms()
        if time.ticks_diff(now, self._told) >= _FEED_REPORT_MS:
            self._told = now
            tell_chip(b"f")


def _reset(message):
    if tell_chip(message):
        while True:        # like the chip, never returns: the launcher kills this process
            time.sleep_ms(1000)
    sys.exit(75)           # no launcher (a bare interpreter): end the process instead


def reset():
    _reset(b"r")


def soft_reset():
    _reset(b"s")


def reset_cause():
    return settings["reset_cause"]


def unique_id():
    return hashlib.sha256(b"uid:" + settings["device_seed"].encode()).digest()[:6]


def freq(*args):
    # freq() reads; freq(hz) (positional, as on the ports) sets nothing here.
    if len(args) > 1:
        raise TypeError("function expected at most 1 arguments, got %d" % len(args))
    if not args:
        return 160000000 if _ESP32 else 80000000


def idle():
    time.sleep_ms(0)
