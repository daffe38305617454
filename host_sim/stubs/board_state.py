"""Per-board state shared by the stand-in modules (one board per process).

The stand-ins never keep module-level globals of their own: everything a board
owns (clock, WiFi association, air, ADC waveform, debug log) lives in one
``BoardState`` that ``host_sim.stubs.install`` hands to each of them.
"""
import json
import math
import os
import random
import threading
import time as _time

TICKS_PERIOD = 1 << 30          # MicroPython's ticks wrap at 2**30 on esp32 and esp8266
TICKS_MAX = TICKS_PERIOD - 1
EPOCH_2000_UNIX_S = 946684800   # 2000-01-01T00:00:00Z, the ports' time epoch
AIR_REREAD_S = 0.1
DEFAULT_AIR = {"aps": {"simnet": {"key": "simkey", "up": True}}, "link": "up"}

PORTS = ("esp32", "esp8266")
MPY_VERSIONS = ("1.24", "1.29")


class BoardState:
    """Everything one simulated board owns.

    >>> state = BoardState(port="esp32", clock_unix_s=None)
    >>> state.board_time_s() < 60
    True
    """

    def __init__(self, port="esp32", mpy="1.24", air_path=None, ntp_addr=None,
                 clock_unix_s=None, ticks_start_ms=0, mains_v=230.0, mains_hz=50.0,
                 noise_v=1.0, adc_volts_per_count=0.0125, device_seed="board",
                 state_dir=None, verify_error="oserror", argv=None, float_time=False):
        if port not in PORTS:
            raise ValueError("port must be one of %s" % (PORTS,))
        if mpy not in MPY_VERSIONS:
            raise ValueError("mpy must be one of %s" % (MPY_VERSIONS,))
        self.port = port
        self.mpy = mpy
        self.air_path = air_path
        self.ntp_addr = ntp_addr
        self.mains_v = float(mains_v)
        self.mains_hz = float(mains_hz)
        self.noise_v = float(noise_v)
        self.adc_volts_per_count = float(adc_volts_per_count)
        self.device_seed = device_seed
        self.state_dir = state_dir
        self.verify_error = verify_error
        self.argv = argv
        self.float_time = bool(float_time)   # time.time() as a float, as on the unix port
        self.rng = random.Random(device_seed)
        self.noise_rng = random.Random()
        # Ticks: a board's counters start near zero at boot; --ticks-start moves the
        # origin (e.g. close to the 2**30 wrap) so firmware wrap handling is exercised.
        self._origin_ns = _time.monotonic_ns()
        self._ticks_start_us = (int(ticks_start_ms) * 1000)
        self._ticks_start_ms = int(ticks_start_ms)
        # RTC: board seconds since 2000 = _rtc_base_s + elapsed since _rtc_set_ns.
        board_s = 0 if clock_unix_s is None else int(clock_unix_s) - EPOCH_2000_UNIX_S
        self._rtc_base_s = float(board_s)
        self._rtc_set_ns = self._origin_ns
        self._air_cache = None
        self._air_read_at = -1.0
        self._air_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self.wifi = None            # network.WLAN STA state, created by the network stand-in

    # --- clocks -------------------------------------------------------------------
    def elapsed_us(self):
        """Microseconds since boot, unwrapped (the ADC waveform's time base)."""
        return (_time.monotonic_ns() - self._origin_ns) // 1000

    def ticks_us(self):
        return (self._ticks_start_us + self.elapsed_us()) & TICKS_MAX

    def ticks_ms(self):
        return (self._ticks_start_ms + self.elapsed_us() // 1000) & TICKS_MAX

    def board_time_s(self):
        """Float seconds since 2000-01-01 by the board's RTC."""
        return self._rtc_base_s + (_time.monotonic_ns() - self._rtc_set_ns) / 1e9

    def set_board_time_s(self, seconds):
        self._rtc_base_s = float(seconds)
        self._rtc_set_ns = _time.monotonic_ns()

    def board_unix_s(self):
        return self.board_time_s() + EPOCH_2000_UNIX_S

    # --- air ----------------------------------------------------------------------
    def air(self):
        """The virtual air, re-read from --air at most every 100 ms."""
        if self.air_path is None:
            return DEFAULT_AIR
        with self._air_lock:
            now = _time.monotonic()
            if self._air_cache is None or now - self._air_read_at >= AIR_REREAD_S:
                try:
                    with open(self.air_path) as f:
                        self._air_cache = json.load(f)
                except (OSError, ValueError):
                    # A file being rewritten by a test reads as empty/partial: keep the
                    # last good air; with none yet, the air is empty (no APs).
                    if self._air_cache is None:
                        self._air_cache = {"aps": {}, "link": "up"}
                self._air_read_at = now
            return self._air_cache

    def link(self):
        return self.air().get("link", "up")

    def associated(self):
        """True while the STA interface holds a WiFi association (status GOT_IP)."""
        return self.wifi is not None and self.wifi.has_ip()

    # --- ADC ----------------------------------------------------------------------
    def adc_u16(self):
        """The synthetic mains waveform at the current board ticks_us, as read_u16()."""
        t_s = self.elapsed_us() / 1e6
        v = math.sqrt(2.0) * self.mains_v * math.sin(2.0 * math.pi * self.mains_hz * t_s)
        if self.noise_v > 0:
            v += self.noise_rng.gauss(0.0, self.noise_v)
        counts = int(round(32768 + v / self.adc_volts_per_count))
        return 0 if counts < 0 else 65535 if counts > 65535 else counts

    # --- debug log (never seen by the firmware) ------------------------------------
    def debug(self, kind, **fields):
        """Append one JSON line to <state_dir>/sim_debug.jsonl (not stdout)."""
        if self.state_dir is None:
            return
        fields["kind"] = kind
        fields["board_unix_s"] = int(self.board_unix_s())
        line = json.dumps(fields, sort_keys=True)
        with self._log_lock:
            os.makedirs(self.state_dir, exist_ok=True)
            with open(os.path.join(self.state_dir, "sim_debug.jsonl"), "a") as f:
                f.write(line + "\n")
