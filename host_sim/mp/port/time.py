# `time` for the MicroPython runtime: the unix port's own module (runs under MicroPython),
# with one change, sleep_ms, for the host's sake. `time` is one of the built-in modules a
# file may extend (docs/library/index.rst, "Extending built-in libraries from Python"):
# importing it with sys.path emptied gives the built-in.
#
# The unix port's sleep_ms polls: mp_hal_delay_ms loops on mp_event_wait_ms(1), which waits
# with usleep(500) (ports/unix/unix_mphal.c, MICROPY_INTERNAL_WFE in ports/unix/mphalport.h),
# so an idle board wakes 2,000 times a second and costs ~27 ms of CPU per second: 200 idle
# boards would need more than two cores. A board does not: the esp32's sleep_ms blocks its
# task a FreeRTOS tick at a time (ports/esp32/mphalport.c). Here sleep_ms is one select()
# through the port's own time.sleep (ports/unix/modtime.c), which returns no earlier than
# asked (the port's sleep_ms compares ms ticks and may end up to 1 ms early; the esp32's
# counts microseconds). What the firmware sees is the same: an int argument only
# (mp_obj_get_int), 0 or less returns at once after pending events, and at least `ms` pass. Pending events are
# still handled (time.sleep does before it waits, and on EINTR); the stand-ins raise none.
import sys

_path = sys.path
sys.path = ()
try:
    from time import *  # noqa: F401,F403  (sleep among them: the port's own)
    import time as _time  # the built-in, for its sleep_ms(0)
finally:
    sys.path = _path
    del _path


def sleep_ms(ms):
    if type(ms) is not int and type(ms) is not bool:
        raise TypeError("can't convert %s to int" % type(ms).__name__)
    if ms > 0:
        sleep(ms / 1000)  # noqa: F405
    else:
        _time.sleep_ms(0)
