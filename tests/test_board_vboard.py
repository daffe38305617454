"""The virtual board speaks MicroPython's REPL protocols as pyexec.c does on a board's UART:
checked byte by byte with pyserial, and end to end with the real mpremote."""
import subprocess
import time

import serial

from board_fixtures import REPO, vboard  # noqa: F401 (fixture)

MPREMOTE = str(REPO / ".venv" / "bin" / "mpremote")
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"


def _read_until(link, marker, timeout_s=10):
    data = b""
    deadline = time.monotonic() + timeout_s
    while marker not in data and time.monotonic() < deadline:
        data += link.read(4096)
    assert marker in data, "no %r in %r" % (marker, data[-300:])
    return data


def _link(board):
    link = serial.Serial(board.port, 115200, timeout=0.05)
    return link


def test_raw_repl_frames_output_and_errors_and_keeps_globals(vboard):
    board = vboard()
    link = _link(board)
    link.write(b"\r\x03\x03\r\x01")
    _read_until(link, RAW_BANNER)
    link.write(b"x = 6 * 7\nprint(x)\x04")
    assert _read_until(link, b"\x04\x04>").endswith(b"OK42\r\n\x04\x04>")
    link.write(b"print(x + 1)\n1/0\x04")   # globals persist; the error comes after one \x04
    out = _read_until(link, b"\x04>")
    assert out.startswith(b"OK43\r\n\x04Traceback")
    assert out.endswith(b"ZeroDivisionError: divide by zero\r\n\x04>")
    # A board's traceback: the code's own frames only.
    assert out == (b"OK43\r\n\x04Traceback (most recent call last):\r\n"
                   b'  File "<stdin>", line 2, in <module>\r\n'
                   b"ZeroDivisionError: divide by zero\r\n\x04>")
    link.write(b"\x02")                    # Ctrl-B: friendly REPL with its banner
    assert _read_until(link, b">>> ").startswith(b"\r\nMicroPython v1.29")
    link.close()


def test_raw_paste_mode_grants_windows_of_128_bytes(vboard):
    board = vboard()
    link = _link(board)
    link.write(b"\r\x01")
    _read_until(link, RAW_BANNER)
    link.write(b"\x05A\x01")
    header = _read_until(link, b"R\x01\x80\x00\x01")  # window 128, plus one extra window
    assert header.endswith(b"R\x01\x80\x00\x01")
    code = b"s = 0\n" + b"s += 1\n" * 60 + b"print(s)\n"   # 432 bytes: 3 windows used
    link.write(code[:256])                  # the two windows granted so far
    assert _read_until(link, b"\x01", 5).count(b"\x01") >= 1
    link.write(code[256:] + b"\x04")
    out = _read_until(link, b"\x04>")
    assert out.endswith(b"\x0460\r\n\x04\x04>")  # end-of-data ack, output, two EOFs
    link.close()


def test_soft_reset_runs_main_only_from_the_friendly_repl_and_ctrl_c_stops_it(vboard,
                                                                             tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text("print('boot ran')\n")
    (flash / "main.py").write_text("print('main ran')\nwhile True:\n    pass\n")
    board = vboard(flash)
    link = _link(board)
    _read_until(link, b"main ran\r\n")    # power-on: boot.py, then main.py, which loops
    link.write(b"\r\x03")                  # what mpremote sends first: the loop stops
    assert b"KeyboardInterrupt" in _read_until(link, b">>> ")
    link.write(b"\r\x01")
    _read_until(link, RAW_BANNER)
    link.write(b"\x04")                    # soft reset from the raw REPL: boot.py, no main.py
    out = _read_until(link, RAW_BANNER)
    assert b"OK\r\nMPY: soft reboot\r\nboot ran\r\n" in out and b"main ran" not in out
    link.write(b"\x02")
    _read_until(link, b">>> ")
    link.write(b"\x04")                    # from the friendly REPL: boot.py, then main.py
    out = _read_until(link, b"main ran\r\n")
    assert b"MPY: soft reboot\r\nboot ran\r\nmain ran\r\n" in out
    link.write(b"\x03")                    # the endless loop is interrupted
    out = _read_until(link, b">>> ")
    assert b"KeyboardInterrupt" in out
    link.write(b"21 * 2\r")
    assert _read_until(link, b"42\r\n>>> ")
    link.close()
    assert board.soft_resets == 2    # the power-on boot is not a soft reset


def test_mpremote_fs_commands_work_on_the_flash_directory(vboard, tmp_path):
    board = vboard()
    src = tmp_path / "hello.txt"
    src.write_bytes(b"hello board\n" * 100)
    r = subprocess.run([MPREMOTE, "connect", board.port, "fs", "mkdir", ":d", "+",
                        "fs", "cp", str(src), ":d/hello.txt", "+", "fs", "cp", str(src),
                        ":d/hello.txt", "+", "fs", "ls", ":d", "+", "sha256sum", ":d/hello.txt",
                        "+", "exec", "import os; print(os.getcwd(), sorted(os.listdir('/')))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (board.flash / "d" / "hello.txt").read_bytes() == src.read_bytes()
    assert "Up to date: d/hello.txt" in r.stdout          # the second cp hashed on the board
    # VfsPosix's ilistdir gives no sizes (a board's LittleFS does): mpremote shows 0 here.
    assert " hello.txt" in r.stdout.split("ls :d")[1]
    import hashlib
    assert hashlib.sha256(src.read_bytes()).hexdigest() in r.stdout
    assert "/ ['d']" in r.stdout      # the flash is "/", and nothing of the host shows there
