"""`board deploy`: the firmware as .mpy for the board's arch, config and DER files, only what
changed (SHA-256 compared on the board, as `mpremote fs cp` does), stale modules removed."""
import contextlib
import hashlib
import io
import subprocess
import tempfile
from pathlib import Path

from mpremote.romfs import make_romfs

from tools.boardtool import firmware
from tools.boardtool.errors import EXIT_USAGE, BoardToolError, at
from tools.boardtool.link import BoardLink

REPO = Path(__file__).resolve().parents[2]
MPREMOTE = REPO / ".venv" / "bin" / "mpremote"
# Directories the deploy owns on the board: modules there that it did not send are removed
# (a stale securenode/app.py would shadow app.mpy: MicroPython looks for .py first).
_OWNED_DIRS = ("securenode", "lib/umqtt")

_HASH_ON_BOARD = """
import hashlib, os
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return h.digest()
def _files(d):
    try:
        return [e[0] for e in os.ilistdir(d) if e[1] == 0x8000]
    except OSError:
        return []
def _empty(d):
    try:
        return not list(os.ilistdir(d))
    except OSError:
        return False
"""


def flash_root_files(directory, data):
    """config.json and the files its tls section names: {flash path: bytes}."""
    directory = Path(directory)
    files = {"config.json": (directory / "config.json").read_bytes()}
    tls = data.get("tls", {})
    ca = tls.get("ca", [])
    names = [ca] if isinstance(ca, str) else list(ca)
    names += [tls[k] for k in ("cert", "key") if tls.get(k)]
    for name in names:
        files[name.lstrip("/")] = (directory / name).read_bytes()
    return files


def plan(directory, port, mpy_word, build_dir, firmware_dir=firmware.FIRMWARE):
    """Everything the board should hold after the deploy, {flash path: bytes}."""
    data, cfg = firmware.load_config(Path(directory) / "config.json")
    firmware.check_device_cert(cfg)
    files = firmware.build_mpy(port, mpy_word, build_dir, firmware_dir)
    files.update(flash_root_files(directory, data))
    return files


def deploy(port, directory, romfs=False, reset=False, firmware_dir=firmware.FIRMWARE,
           say=print):
    """Bring the board at ``port`` up to date with ``directory``; return (copied, unchanged).

    >>> deploy("/dev/ttyUSB0", "device")
    (['config.json', 'securenode/app.mpy'], 31)
    """
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise BoardToolError("%s: no config.json (run `tools/board.py config` first)"
                             % directory, EXIT_USAGE)
    # Refuse bad input before the board is touched at all.
    data, cfg = firmware.load_config(directory / "config.json")
    firmware.check_device_cert(cfg)
    with BoardLink(port) as board:
        mpy_word, platform, has_romfs = board.eval(
            "(__import__('sys').implementation._mpy, __import__('sys').platform, "
            "hasattr(__import__('vfs'), 'rom_ioctl'))", "ask board")
        major, sub, arch = firmware.mpy_target(mpy_word)
        say("board: %s, mpy v%d.%d, arch %s" % (platform, major, sub, arch or "none"))
        if romfs and not has_romfs:
            raise at(port, "romfs", "this board has no ROMFS partition (MicroPython 1.25+ "
                     "with a ROMFS build, e.g. ESP8266_GENERIC-FLASH_2M_ROMFS)", EXIT_USAGE)
        with tempfile.TemporaryDirectory(prefix="securenode-mpy-") as build:
            files = plan(directory, port, mpy_word, build, firmware_dir)
            if romfs:
                return _deploy_romfs(port, board, files, build, say, reset)
            return _sync(port, board, files, say, reset)


def _sync(port, board, files, say, reset):
    board.exec(_HASH_ON_BOARD, "hash files on board")
    copied, unchanged = [], 0
    made_dirs = set()
    for path in sorted(files):
        content = files[path]
        remote = board.eval("_h(%r)" % path, "hash %s on board" % path)
        if remote == hashlib.sha256(content).digest():
            unchanged += 1
            continue
        _make_dirs(board, path, made_dirs)
        try:
            board.transport.fs_writefile(path, content)
        except Exception as e:  # noqa: BLE001 mpremote raises several kinds here
            raise at(port, "write %s" % path, "board refused the write (%s)" % e)
        copied.append(path)
        say("copied %s (%d bytes)" % (path, len(content)))
    removed = _remove_stale(port, board, files)
    for path in removed:
        say("removed stale %s" % path)
    say("%d copied, %d unchanged, %d removed" % (len(copied), unchanged, len(removed)))
    if reset:
        board.soft_reset_to_main()
        say("soft reset: main.py is starting")
    return copied, unchanged


def _make_dirs(board, path, made):
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d in made:
            continue
        board.exec("import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass" % d,
                   "make directory %s" % d)
        made.add(d)


def _remove_stale(port, board, files):
    removed = []
    for d in _OWNED_DIRS:
        names = board.eval("_files(%r)" % d, "list %s" % d)
        for name in names:
            path = "%s/%s" % (d, name)
            if path not in files and name.endswith((".py", ".mpy")):
                board.exec("import os\nos.remove(%r)" % path, "remove %s" % path)
                removed.append(path)
        # An empty securenode/ left on the filesystem is still a package to `import` (a
        # namespace one) and would shadow /rom/securenode: remove it once nothing is in it.
        if (not any(p.startswith(d + "/") for p in files)
                and board.eval("_empty(%r)" % d, "list %s" % d)):
            board.exec("import os\nos.rmdir(%r)" % d, "remove %s" % d)
            removed.append(d + "/")
    return removed


def _deploy_romfs(port, board, files, build, say, reset):
    # Modules go into a ROMFS image (bytecode runs in place from flash: what an ESP8266's heap
    # needs); main.py, config and keys stay on the writable filesystem, where copies of the
    # modules are removed (the filesystem comes first on sys.path and would shadow /rom).
    rom_dir = Path(build) / "romfs"
    rest = {}
    for path, content in files.items():
        if path.endswith(".mpy"):
            target = rom_dir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        else:
            rest[path] = content
    with contextlib.redirect_stdout(io.StringIO()):
        image = make_romfs(str(rom_dir), mpy_cross=False)
    copied, unchanged = _sync(port, board, rest, say, reset=False)
    board.exec("import vfs, hashlib\n_d = vfs.rom_ioctl(2, 0)\n"
               "_rom = None if isinstance(_d, int) else "
               "hashlib.sha256(bytes(memoryview(_d)[:%d])).digest()\ndel _d" % len(image),
               "read ROMFS partition")
    if board.eval("_rom", "read ROMFS partition") == hashlib.sha256(image).digest():
        say("ROMFS up to date (%d bytes)" % len(image))
        unchanged += 1
    else:
        image_path = Path(build) / "securenode.romfs"
        image_path.write_bytes(image)
        board.__exit__(None, None, None)  # mpremote needs the port to itself
        proc = subprocess.run([str(MPREMOTE), "connect", port, "romfs", "deploy",
                               str(image_path)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or "ROMFS image deployed" not in proc.stdout:
            last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["?"]
            raise at(port, "romfs deploy", last[0])
        board.__enter__()
        copied.append("romfs")
        say("ROMFS image written (%d bytes, %d modules)"
            % (len(image), sum(1 for p in files if p.endswith(".mpy"))))
    if reset:
        # /rom is mounted at boot: the new image is used from the next (soft) reset on.
        board.soft_reset_to_main()
        say("soft reset: main.py is starting")
    return copied, unchanged
