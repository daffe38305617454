"""Slow flash writes for the simulator, so that a kill can land in the middle of one.

A board programs flash page by page, and a power cut in the middle leaves a torn write: a
prefix of what was being written. CPython hands a small ``write()`` to the kernel in one
call, so SIGKILL alone would almost never tear anything. With ``--flash-us-per-byte N`` the
board process writes files on its flash in 8-byte pieces, each handed to the kernel at once
and followed by a pause of 8*N microseconds: a SIGKILL (the simulator's power cut) during
that time leaves exactly the pieces already written, as a cut would on a board.

Only files opened for writing under the flash directory are affected; reads are not.

Example (inside the board process, before the firmware starts)::

    install_slow_writes("/tmp/b1/flash", us_per_byte=200)
"""
import builtins
import os
import time

PIECE_BYTES = 8


class _SlowFile:
    """A binary or text file whose writes go to the kernel piece by piece, slowly."""

    def __init__(self, raw, text, delay_s):
        self._raw = raw          # unbuffered FileIO
        self._text = text
        self._delay_s = delay_s

    def write(self, data):
        if self._text:
            data = data.encode()
        view = memoryview(bytes(data))
        for start in range(0, len(view), PIECE_BYTES):
            self._raw.write(view[start:start + PIECE_BYTES])
            time.sleep(self._delay_s)
        return len(view)

    def flush(self):
        pass  # every piece already went to the kernel

    def close(self):
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._raw, name)


def install_slow_writes(flash_dir, us_per_byte):
    """Make writes to files under flash_dir slow and piecewise (see the module docstring)."""
    flash_prefix = os.path.abspath(flash_dir) + os.sep
    real_open = builtins.open
    delay_s = us_per_byte * PIECE_BYTES / 1e6

    def board_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str) and ("w" in mode or "a" in mode):
            path = os.path.abspath(file)
            if path.startswith(flash_prefix):
                raw_mode = mode.replace("t", "").replace("b", "") + "b"
                return _SlowFile(real_open(path, raw_mode, buffering=0), "b" not in mode, delay_s)
        return real_open(file, mode, *args, **kwargs)

    builtins.open = board_open
