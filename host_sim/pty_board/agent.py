# Runs inside the real MicroPython unix port, as the interpreter of a virtual board.
#
# The pty server (host_sim/pty_board/server.py) speaks the board's REPL protocols on the
# serial side; this agent only executes what it is handed, in one persistent __main__ dict,
# as pyexec.c does on a board. A job on stdin is "<kind> <length>\n" + <length> bytes:
#   x  raw REPL code (file input), s  one friendly-REPL entry ("single" input: echoes
#   expression values), f  the name of a file to run if it exists (boot.py, main.py).
# On stdout, around a job's own output: MARK "0" when it starts, MARK "1" when it ended, the
# traceback if it raised, MARK "2" (the server turns 1 and 2 into the raw REPL's two \x04).
# MARK is a per-boot nonce, so ordinary output cannot end a job by accident, and each mark
# carries the job's number in 8 hex digits, so a mark repeated after a Ctrl-C is recognised.
#
# argv: agent.py FLASH_DIR NONCE [MODULE_DIR ...]
import io
import os
import sys
import vfs

_flash = sys.argv[1]
_mark = b"\x00\x1e" + sys.argv[2].encode()
_extra = sys.argv[3:]
_AGENT = sys.argv[0]

# The stand-ins (machine, network, ntptime: C modules on a board) are imported now, while
# the host's filesystem is still at "/", as a board has its built-ins before any code runs;
# they read their settings (host_sim/mp/port/_simboard.py) from a host path.
sys.path[:] = _extra
for _d in _extra:
    for _name in sorted(os.listdir(_d)):
        if _name.endswith(".py"):
            __import__(_name[:-3])

# A board with a ROMFS partition: its `vfs` has rom_ioctl (mp/_vboard_vfs.py), the partition
# is a host file ($SECURENODE_VBOARD_ROMFS), mounted at /rom at boot when it holds an image.
_romfs = None
_rom_partition = os.getenv("SECURENODE_VBOARD_ROMFS")
if _rom_partition:
    sys.path[:] = [_AGENT.rsplit("/", 1)[0] + "/mp"]
    import _vboard_vfs
    _romfs = _vboard_vfs.attach(_rom_partition)
    sys.modules["vfs"] = _vboard_vfs

# The flash directory becomes "/", as a board's filesystem is (VfsPosix rooted there), and
# sys.path is a board's: cwd, frozen modules, (ROMFS,) /lib. Nothing of the host shows.
vfs.umount("/")
vfs.mount(vfs.VfsPosix(_flash), "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
if _romfs is not None and _romfs[:3] == b"\xd2\xcd\x31":
    vfs.mount(vfs.VfsRom(_romfs), "/rom")
    sys.path[:] = ["", ".frozen", "/rom", "/rom/lib", "/lib"]
del _romfs

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


def _print_exception(e):
    # As a board prints it: the frames of the code that ran, none of this agent's.
    buf = io.StringIO()
    sys.print_exception(e, buf)
    own = '  File "%s"' % _AGENT
    _out.write("\n".join(l for l in buf.getvalue().split("\n") if not l.startswith(own))
               .encode())


def _serve():
    seq = 0
    while True:
        try:
            kind, payload = _read_job()
        except KeyboardInterrupt:
            # A Ctrl-C that came as the last job ended: nothing to stop (no byte was read).
            continue
        seq += 1
        tag = b"%08x" % seq
        failure = None
        try:
            _out.write(_mark + b"0" + tag)  # started: from here a Ctrl-C lands in the job
            _run(kind, payload)
        except SystemExit:
            raise
        except BaseException as e:  # KeyboardInterrupt too: the board prints it and goes on
            failure = e
        # A late Ctrl-C may land anywhere below: retry the step it broke. A mark written twice
        # carries the same job number, and the server takes each mark once.
        step = 0
        while step < 3:
            try:
                if step == 0:
                    _out.write(_mark + b"1" + tag)
                    step = 1
                if step == 1:
                    if failure is not None:
                        _print_exception(failure)
                    step = 2
                if step == 2:
                    _out.write(_mark + b"2" + tag)
                    step = 3
            except KeyboardInterrupt:
                pass


_serve()
