"""Lay out a simulated board's flash and build the command line that boots it.

Example::

    from host_sim.flash import prepare_flash, board_command
    prepare_flash(".sim/b1/flash", config, {"ca.der": ca_der, "device.key.der": key_path})
    argv = board_command(".sim/b1/flash", port="esp32", ntp=("127.0.0.1", 12300))
    subprocess.Popen(argv, cwd=repo_root, stdout=subprocess.PIPE)

The same directory boots on real MicroPython with ``runtime="micropython"`` (and e.g.
``board="esp32-spiram"``, ``bytecode="mpy"``): host_sim.mp.launcher writes it into the board's
LittleFS2 image (``<flash>.state/flash.img``) at every start, keeping what only the image holds
(the outbox, stored credentials).
"""
import json
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "firmware"
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy")


class FlashError(Exception):
    """The flash image cannot be laid out (e.g. firmware not built)."""


def prepare_flash(flash_dir, config, files=None, firmware_dir=FIRMWARE_DIR):
    """Copy the firmware as ``make deploy`` would, then config.json and extra files.

    ``files`` maps a flash path ("ca.der") to bytes or a host Path to copy.
    securenode/ and lib/ are replaced wholesale so no stale module survives.
    Returns the flash directory as a Path.
    """
    flash = Path(flash_dir)
    firmware = Path(firmware_dir)
    if not (firmware / "main.py").is_file():
        raise FlashError("%s is missing" % (firmware / "main.py"))
    flash.mkdir(parents=True, exist_ok=True)
    shutil.copy2(firmware / "main.py", flash / "main.py")
    for sub in ("securenode", "lib"):
        if (flash / sub).exists():
            shutil.rmtree(flash / sub)
        if (firmware / sub).is_dir():
            shutil.copytree(firmware / sub, flash / sub, ignore=_SKIP)
    (flash / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for name, content in (files or {}).items():
        target = flash / name
        if target.resolve().parent != flash.resolve() and flash.resolve() not in target.resolve().parents:
            raise FlashError("file %r would land outside the flash" % name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (bytes, bytearray)):
            target.write_bytes(bytes(content))
        else:
            shutil.copyfile(Path(content), target)
    return flash


def board_command(flash_dir, **options):
    """The argv that boots the board in flash_dir; options mirror the CLI flags.

    >>> board_command("f", port="esp8266", ntp=("127.0.0.1", 123), clock="host")[3:]
    ['--flash', 'f', '--port', 'esp8266', '--ntp', '127.0.0.1:123', '--clock', 'host']
    """
    argv = [sys.executable, "-m", "host_sim.board", "--flash", str(flash_dir)]
    for key, value in options.items():
        if value is None:
            continue
        if key == "ntp" and isinstance(value, (tuple, list)):
            value = "%s:%d" % (value[0], value[1])
        argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def board_env():
    """Environment for a board process started from any cwd (repo on PYTHONPATH)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("SECURENODE_SIM_RTC", None)
    env.pop("SECURENODE_SIM_RESET_CAUSE", None)
    return env
