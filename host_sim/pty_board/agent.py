# Runs inside the real MicroPython unix port, as the interpreter of a virtual board.
#
# The pty server (host_sim/pty_board/server.py) speaks the board's REPL protocols on the
# serial side; this agent only executes what it is handed, in one persistent __main__ dict,
# as pyexec.c does on a board. A job on stdin is "<kind> <length>\n" + <length> bytes:
#   x  raw REPL code (file input), s  one friendly-REPL entry ("single" input: echoes
#   expression values), f  the name of a file to run if it exists (boot.py, main.py).
# After a job, on stdout: MARK "1", the traceback if one was raised, MARK "2" (the server turns
# them into the two \x04 of the raw REPL). MARK carries a per-boot nonce so ordinary
# output cannot end a job by accident.
#
# argv: agent.py FLASH_DIR NONCE [MODULE_DIR ...]
import sys
import os
import vfs

_flash = sys.argv[1]
_mark = b"\x00\x1e" + sys.argv[2].encode()
_extra = sys.argv[3:]

# The stand-ins' settings (host_sim/mp/port/_simboard.py) are read from a host path named in
# the environment: import them while the host's filesystem is still at "/".
sys.path[:] = _extra
try:
    import _simboard  # noqa: F401
except ImportError:
    pass

# The flash directory becomes "/", as a board's filesystem is (VfsPosix rooted there); the
# machine/network/ntptime stand-ins are mounted under a directory a listing of "/" never shows.
vfs.umount("/")
vfs.mount(vfs.VfsPosix(_flash), "/")
for _n in range(len(_extra)):
    vfs.mount(vfs.VfsPosix(_extra[_n]), "/.sim%d" % _n)
os.chdir("/")
# A board's path: cwd, frozen modules, /lib; then the stand-ins (after, so flash wins).
sys.path[:] = ["", ".frozen", "/lib"] + ["/.sim%d" % i for i in range(len(_extra))]

_in = sys.stdin.buffer
_out = sys.stdout.buffer
_main = {"__name__": "__main__"}


def _read_exact(n):
    data = b""
    while len(data) < n:
        chunk = _in.read(n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data


def _read_job():
    line = b""
    while not line.endswith(b"\n"):
        c = _in.read(1)
        if not c:
            sys.exit(0)
        line += c
    kind, size = line.split()
    return kind, _read_exact(int(size))


def _run(kind, payload):
    if kind == b"f":
        name = payload.decode()
        if not name:
            return
        try:
            os.stat(name)
        except OSError:
            return
        with open(name) as f:
            source = f.read()
        exec(compile(source, name, "exec"), _main)
    elif kind == b"s":
        exec(compile(payload.decode(), "<stdin>", "single"), _main)
    else:
        exec(compile(payload.decode(), "<stdin>", "exec"), _main)


def _serve():
    while True:
        try:
            kind, payload = _read_job()
        except KeyboardInterrupt:
            # An interrupt that lands between jobs has nothing to stop.
            continue
        failure = None
        try:
            _run(kind, payload)
        except SystemExit:
            raise
        except BaseException as e:  # KeyboardInterrupt too: the board prints it and goes on
            failure = e
        _out.write(_mark + b"1")
        if failure is not None:
            sys.print_exception(failure, sys.stdout)
        _out.write(_mark + b"2")


_serve()
