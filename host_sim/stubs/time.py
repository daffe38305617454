"""`time` stand-in: CPython's time plus MicroPython's ticks and a board RTC.

Every attribute of the real module is carried over, so CPython code that imports
`time` lazily keeps working; the MicroPython-specific and board-clock functions
replace their namesakes. Board time counts seconds since 2000-01-01 (the esp32 and
esp8266 epoch), so ``time.gmtime(0)[0] == 2000``.
"""
import calendar
import ctypes
import os
import platform
import time as _real_time
import types

from host_sim.stubs.board_state import EPOCH_2000_UNIX_S, TICKS_MAX, TICKS_PERIOD

_HALF_PERIOD = TICKS_PERIOD // 2
_PR_SET_TIMERSLACK = 29     # linux/prctl.h
_SLACK_NS = 1000
# sched_setattr(2) by number (glibc has no wrapper); sched_runtime on SCHED_OTHER is the
# slice EEVDF gives the task (Linux 6.12+, clamped to 0.1-100 ms, no privilege needed).
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(platform.machine())
_SLICE_NS = 100000
# The sampling window's real-time priority (see SamplingPriority): host_sim.board turns it on
# in a board's own process unless SECURENODE_SIM_RT_SAMPLING=0 (to measure without it); off
# in any other process that builds the stand-ins (tests), so none is left real-time.
ENV_RT_SAMPLING = "SECURENODE_SIM_RT_SAMPLING"
RT_SAMPLING = False
_RT_PRIORITY = 1            # the lowest SCHED_FIFO priority: above every normal task, no more


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
                ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
                ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64)]


def _int_arg(value):
    # The ports take the argument with mp_obj_get_int (extmod/modtime.c time_sleep_us and
    # time_sleep_ms): an int or a bool; a float is "can't convert float to int".
    if type(value) not in (int, bool):
        raise TypeError("can't convert %s to int" % type(value).__name__)
    return int(value)


def fine_timer_slack():
    """Cut this process's timer slack from Linux's 50 us to 1 us (children inherit it across
    fork and exec): a sleep may otherwise end up to 50 us later than asked. True if set."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, _SLACK_NS,
                                                      0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def short_slice(pid=0):
    """Ask EEVDF for a 0.1 ms slice for process `pid` (0: this one); True if granted.

    A board's sleep_us is a busy-wait that nothing preempts; a host's sleep ends late by
    the wait for a CPU, about the slices of the tasks ahead: a short slice puts a woken
    sampler ahead of longer-running work sooner. The share of CPU is unchanged (the slice
    sets latency, not weight) and no privilege is needed. Only for a process that is
    sampling: 200 boards booting at once, each preempted every 0.1 ms, thrash. Best
    effort: a kernel before 6.12 accepts and ignores it.

    >>> short_slice()
    True
    """
    if _SYS_SCHED_SETATTR is None:
        return False
    try:
        attr = _SchedAttr(size=ctypes.sizeof(_SchedAttr), sched_policy=0,   # SCHED_OTHER
                          sched_nice=os.getpriority(os.PRIO_PROCESS, pid),
                          sched_runtime=_SLICE_NS)
        return ctypes.CDLL(None, use_errno=True).syscall(
            _SYS_SCHED_SETATTR, pid, ctypes.byref(attr), 0) == 0
    except (OSError, AttributeError):
        return False


class SamplingPriority:
    """Real-time priority for this board's thread while it samples, as a board's sampler
    has its core: on a board sleep_us is a busy-wait in C that nothing on that core preempts
    (ports/esp32/mphalport.c mp_hal_delay_us); on a host with 200 boards on 2 cores a woken
    sampler queues behind other boards' TLS and imports, and its samples come late.

    enter() at each sleep_us puts the calling thread in SCHED_FIFO at the lowest real-time
    priority (sched_setscheduler(2); every normal task yields to it when it wakes, and other
    boards' samplers at the same priority take turns); leave() at the board's first other
    clock call (ticks_ms, time, sleep_ms: the window and its ~0.1 ms analysis are over) puts
    it back to SCHED_OTHER. Only the window: booting, TLS and publishing stay normal tasks.
    Falls back to nothing (and says so once in ``denied``) where not permitted (needs
    CAP_SYS_NICE or RLIMIT_RTPRIO), or when not ``enabled`` (see RT_SAMPLING).

    >>> p = SamplingPriority(True); p.enter(); p.leave()
    """

    def __init__(self, enabled):
        self.active = False
        self.windows = 0
        self.denied = None
        self._on = enabled and hasattr(os, "sched_setscheduler")
        if self._on and os.sched_getscheduler(0) != os.SCHED_OTHER:
            # A reset re-executes the board: a policy set mid-window survives execve.
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    def enter(self):
        if self.active or not self._on:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_RT_PRIORITY))
        except OSError as exc:
            self._on = False
            self.denied = str(exc)
            return
        self.active = True
        self.windows += 1

    def leave(self):
        if self.active:
            self.active = False
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def ticks_add(ticks, delta):
    return (ticks + delta) & TICKS_MAX


def ticks_diff(ticks1, ticks2):
    """Signed difference ticks1 - ticks2 across the 2**30 wrap, as on a board."""
    diff = (ticks1 - ticks2) & TICKS_MAX
    return diff - TICKS_PERIOD if diff >= _HALF_PERIOD else diff


def _tuple8(board_s):
    tm = _real_time.gmtime(int(board_s) + EPOCH_2000_UNIX_S)
    return (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
            tm.tm_wday, tm.tm_yday)


def make_module(state):
    fine_timer_slack()    # this process is the board: its sleep_us should end on time
    slice_asked = []
    priority = SamplingPriority(RT_SAMPLING)
    state_ticks_ms = state.ticks_ms
    mod = types.ModuleType("time")
    mod.__dict__.update({k: v for k, v in vars(_real_time).items()
                         if k not in ("__name__", "__loader__", "__spec__")})
    mod.__doc__ = __doc__

    def ticks_ms():
        if priority.active:
            priority.leave()
        return state_ticks_ms()

    def time():
        if priority.active:
            priority.leave()
        # esp32/esp8266 return whole seconds (an int); the unix port returns a float
        # (MicroPython's ports/unix/modtime.c uses the C double): --float-time models it.
        if state.float_time:
            return state.board_time_s()
        return int(state.board_time_s())

    def time_ns():
        return int(state.board_time_s() * 1e9)

    def gmtime(secs=None):
        return _tuple8(state.board_time_s() if secs is None else secs)

    def mktime(tup):
        if len(tup) < 6:
            raise TypeError("mktime needs a tuple of 8")
        year, month, mday, hour, minute, sec = (int(x) for x in tup[:6])
        # Normalise out-of-range months like MicroPython's timeutils do.
        year += (month - 1) // 12
        month = (month - 1) % 12 + 1
        days = calendar.timegm((year, month, 1, 0, 0, 0)) // 86400 + mday - 1
        return days * 86400 + hour * 3600 + minute * 60 + sec - EPOCH_2000_UNIX_S

    def sleep_ms(ms):
        ms = _int_arg(ms)
        if priority.active:
            priority.leave()
        if ms > 0:
            _real_time.sleep(ms / 1000.0)

    def sleep_us(us):
        # What the sampler relies on, as on the ports: an int only; 0 or less returns at
        # once; never returns before `us` have passed on ticks_us (both read the monotonic
        # clock, and Linux's clock_nanosleep never ends early). A board's sleep_us is a
        # busy-wait in C that ends within ~1 us (ports/esp32/mphalport.c mp_hal_delay_us
        # takes 5 us off for the call itself; ports/esp8266/esp_mphal.c); here it is a real
        # sleep that frees the CPU, like the unix port's usleep, and ends late by the
        # scheduler's wake-up latency (tens of us on a quiet host; the slack is cut and
        # a short slice asked for), which the sampler absorbs: each sample
        # carries its own time, and one over 1 ms late has the window taken again. While
        # it samples, the board's thread runs at real-time priority (SamplingPriority).
        us = _int_arg(us)
        if not slice_asked:
            slice_asked.append(short_slice())   # sampling from now on: see short_slice
        priority.enter()
        if us > 0:
            _real_time.sleep(us / 1e6)

    mod.time = time
    mod.time_ns = time_ns
    mod.gmtime = gmtime
    mod.localtime = gmtime      # the ports have no timezone: localtime == gmtime
    mod.mktime = mktime
    mod.sleep_ms = sleep_ms
    mod.sleep_us = sleep_us
    mod.ticks_ms = ticks_ms
    state.sampling_priority = priority    # the simulator's, not the board's: for tests
    mod.ticks_us = state.ticks_us
    mod.ticks_cpu = state.ticks_us
    mod.ticks_add = ticks_add
    mod.ticks_diff = ticks_diff
    return mod
