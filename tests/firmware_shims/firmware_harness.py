"""Run one piece of Python on CPython and on genuine MicroPython, for tests/test_firmware_*.py.

Both sides get the same files laid out as on a board's flash (securenode/..., certs,
config.json) in their working directory, run the same code, and hand back what it
printed. MicroPython is the official WebAssembly port run by
tests/micropython_wasm/run.mjs under Node; CPython runs in a subprocess with only
the flash directory and the `micropython` shim (this directory) on its path, so
neither side can see host code the firmware would not see on a board.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware"
SHIMS = Path(__file__).resolve().parent
WASM_DIR = REPO / "tests" / "micropython_wasm"
RUNNER = WASM_DIR / "run.mjs"
PACKAGE_ENTRY = (WASM_DIR / "node_modules" / "@micropython"
                 / "micropython-webassembly-pyscript" / "micropython.mjs")
RUN_TIMEOUT_S = 60


def firmware_files(*modules):
    """The named securenode modules (plus the package's __init__ if present) as a files map."""
    files = {}
    package = FIRMWARE / "securenode"
    names = list(modules)
    if (package / "__init__.py").exists():
        names.append("__init__")
    for name in names:
        files["securenode/%s.py" % name] = (package / ("%s.py" % name)).read_text()
    return files


def require_micropython():
    """Fail (not skip) when the MicroPython toolchain is missing: CI must run these tests."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the MicroPython (WebAssembly) tests need Node 20+; "
                    "install it, then run `make` "
                    "(it runs `npm ci --prefix tests/micropython_wasm`)", pytrace=False)
    if not PACKAGE_ENTRY.exists():
        pytest.fail("@micropython/micropython-webassembly-pyscript is not installed under "
                    "tests/micropython_wasm/node_modules: run `make` "
                    "(it runs `npm ci --prefix tests/micropython_wasm`)", pytrace=False)
    return node


def _job_files(files):
    out = {}
    for path, content in files.items():
        if isinstance(content, bytes):
            out[path] = {"base64": base64.b64encode(content).decode()}
        else:
            out[path] = content
    return out


def run_micropython(files, code, timeout_s=RUN_TIMEOUT_S, expect_ok=True):
    """Run code on MicroPython with files on its flash; return (exit status, stdout, stderr)."""
    node = require_micropython()
    job = {"files": _job_files(files), "code": code, "timeout_ms": int(timeout_s * 1000)}
    proc = subprocess.run([node, str(RUNNER)], input=json.dumps(job), capture_output=True,
                          text=True, timeout=timeout_s + 15)
    if expect_ok and proc.returncode != 0:
        pytest.fail("MicroPython run failed (exit %d):\n%s\n%s"
                    % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]), pytrace=False)
    return proc.returncode, proc.stdout, proc.stderr


def run_cpython(files, code, workdir, timeout_s=RUN_TIMEOUT_S):
    """Run code on CPython in workdir laid out like the board's flash; return stdout."""
    workdir = Path(workdir)
    for path, content in files.items():
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    env = dict(os.environ, PYTHONPATH=str(SHIMS), PYTHONDONTWRITEBYTECODE="1")
    # Code on stdin ("-"): vectors can exceed the kernel's limit for one argument.
    proc = subprocess.run([sys.executable, "-"], input=code, cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        pytest.fail("CPython run failed (exit %d):\n%s\n%s"
                    % (proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]), pytrace=False)
    return proc.stdout


def last_json_line(stdout):
    """The result a vector script printed last, as one JSON line."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "the vector script printed nothing"
    return json.loads(lines[-1])


def run_both(files, code, workdir):
    """Run the same vector script on both; return (cpython_result, micropython_result)."""
    cpy = last_json_line(run_cpython(files, code, workdir))
    _, out, _ = run_micropython(files, code)
    return cpy, last_json_line(out)


def assert_same(a, b, rel=1e-9, path="result"):
    """Deep equality; floats may differ by rel (the ports print floats differently)."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), (path, a, b)
        assert abs(a - b) <= rel * max(abs(a), abs(b), 1e-12), "%s: %r != %r" % (path, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), "%s: keys %s != %s" % (
            path, sorted(a), sorted(b) if isinstance(b, dict) else b)
        for key in a:
            assert_same(a[key], b[key], rel, "%s.%s" % (path, key))
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), "%s: %r != %r" % (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, rel, "%s[%d]" % (path, i))
    else:
        assert a == b, "%s: %r != %r" % (path, a, b)
