"""`machine` stand-in: pins, the synthetic mains ADC, unique_id, RTC, reset, WDT.

ADC readings follow the board's mains waveform at the current ticks_us
(``BoardState.adc_u16``): 32768 + v_inst / volts_per_count + gaussian noise, clipped.
``reset()`` re-executes the board process (RAM lost, flash and RTC kept).
"""
import hashlib
import threading
import time as _real_time
import types

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
# ESP8266 ADC(1): system_get_vdd33() in 1/1024 V; a 3.3 V supply reads about this.
_VDD33 = 3379


def make_module(state, time_mod, reset_hook, reset_cause=PWRON_RESET):
    mod = types.ModuleType("machine")
    for name in ("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET"):
        setattr(mod, name, globals()[name])
    esp32 = state.port == "esp32"

    class Pin:
        IN = 1
        OUT = 3 if esp32 else 1
        OPEN_DRAIN = 7 if esp32 else 2
        PULL_UP = 2 if esp32 else 1
        PULL_DOWN = 1 if esp32 else None
        IRQ_RISING = 1
        IRQ_FALLING = 2

        def __init__(self, id, mode=None, pull=None, value=None):
            self.id = id
            self._value = 0 if value is None else int(bool(value))

        def init(self, mode=None, pull=None, value=None):
            if value is not None:
                self._value = int(bool(value))

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

        def irq(self, *args, **kwargs):
            return None

    # Pins with an ADC channel on an ESP32 (ports/esp32/machine_adc.c, madc_obj[] for
    # CONFIG_IDF_TARGET_ESP32: ADC1 on GPIO 32-39, ADC2 on 0, 2, 4, 12-15, 25-27).
    esp32_adc_pins = (36, 37, 38, 39, 32, 33, 34, 35, 4, 0, 2, 15, 13, 12, 14, 27, 25, 26)

    class ADC:
        if esp32:
            # Only the ESP32's ADC has these; ports/esp8266/machine_adc.c defines
            # MICROPY_PY_MACHINE_ADC_CLASS_CONSTANTS empty ("no constants for this port").
            ATTN_0DB = 0
            ATTN_2_5DB = 1
            ATTN_6DB = 2
            ATTN_11DB = 3
            # The bit count itself (MP_ROM_INT(9)..(12) in ports/esp32/machine_adc.c).
            WIDTH_9BIT = 9
            WIDTH_10BIT = 10
            WIDTH_11BIT = 11
            WIDTH_12BIT = 12

        def __init__(self, pin, *args, **kwargs):
            if esp32:
                # machine_pin_get_id(): a Pin, or an int taken as a GPIO number; then
                # "invalid pin" unless that GPIO has an ADC channel.
                gpio = pin.id if isinstance(pin, Pin) else pin
                if type(gpio) is not int or gpio not in esp32_adc_pins:
                    raise ValueError("invalid pin")
                self.pin = gpio
                self.vdd = False
                return
            # ESP8266: exactly one positional argument, converted by mp_obj_get_int (int or
            # bool only: a Pin has no int conversion, so TypeError); channel 0 is the TOUT
            # pin, 1 the supply voltage, others "ADC(%d) doesn't exist".
            if kwargs:
                raise TypeError("function doesn't take keyword arguments")  # py/argcheck.c
            if args:
                raise TypeError("function takes 1 positional arguments but %d were given"
                                % (1 + len(args)))
            if type(pin) not in (int, bool):
                raise TypeError("can't convert %s to int" % type(pin).__name__)
            if pin not in (0, 1):
                raise ValueError("ADC(%d) doesn't exist" % pin)
            self.pin = int(pin)
            self.vdd = pin == 1

        def read_u16(self):
            if self.vdd:
                return _VDD33 * 65535 // 1024   # as mp_machine_adc_read_u16 scales it
            return state.adc_u16()

        def read(self):
            if self.vdd:
                return _VDD33
            return state.adc_u16() >> (4 if esp32 else 6)

        if esp32:
            def atten(self, value):
                return None

            def width(self, value):
                return None

            def read_uv(self):
                return state.adc_u16() * 3_300_000 // 65535

    class RTC:
        def datetime(self, dt=None):
            # (year, month, day, weekday, hours, minutes, seconds, subseconds)
            if dt is None:
                board_s = state.board_time_s()
                t = time_mod.gmtime(int(board_s))
                return (t[0], t[1], t[2], t[6], t[3], t[4], t[5],
                        int((board_s % 1) * 1_000_000))
            secs = time_mod.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
            sub = dt[7] if len(dt) > 7 else 0
            state.set_board_time_s(secs + sub / 1_000_000)
            return None

        def init(self, dt):
            self.datetime(dt)

    class WDT:
        """Resets the board unless fed within timeout ms (as the hardware watchdog).

        Like the hardware, feed() is cheap (it moves a deadline) and a started watchdog
        cannot be stopped; one watcher thread sleeps until the deadline and resets the
        process (reset_hook re-executes it) if no feed moved it meanwhile.
        """

        def __init__(self, id=0, timeout=5000):
            self._timeout_s = max(1, int(timeout)) / 1000.0
            self.feed()
            threading.Thread(target=self._watch, daemon=True).start()

        def feed(self):
            self._deadline = _real_time.monotonic() + self._timeout_s

        def _watch(self):
            while True:
                left = self._deadline - _real_time.monotonic()
                if left <= 0:
                    reset_hook(cause=WDT_RESET)
                    return
                _real_time.sleep(left)

    def unique_id():
        return hashlib.sha256(("uid:" + state.device_seed).encode()).digest()[:6]

    def reset():
        reset_hook(cause=HARD_RESET)

    def soft_reset():
        reset_hook(cause=SOFT_RESET)

    def freq(hz=None):
        if hz is None:
            return 160_000_000 if esp32 else 80_000_000
        return None

    def idle():
        return None

    def disable_irq():
        return 0

    def enable_irq(state_=0):
        return None

    mod.Pin = Pin
    mod.ADC = ADC
    mod.RTC = RTC
    mod.WDT = WDT
    mod.unique_id = unique_id
    mod.reset = reset
    mod.soft_reset = soft_reset
    mod.reset_cause = lambda: reset_cause
    mod.freq = freq
    mod.idle = idle
    mod.disable_irq = disable_irq
    mod.enable_irq = enable_irq
    return mod
