"""tests/micropython_wasm/run.mjs: genuine MicroPython 1.27 under Node, with the behaviour the
firmware tests rely on (files on its flash, exit status, stdout, a timeout)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import WASM_DIR, run_micropython  # noqa: E402

PACKAGE = "@micropython/micropython-webassembly-pyscript"


def test_package_is_pinned_exactly_and_locked():
    manifest = json.loads((WASM_DIR / "package.json").read_text())
    assert manifest["dependencies"] == {PACKAGE: "1.27.0"}
    lock = json.loads((WASM_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/" + PACKAGE]["version"] == "1.27.0"


def test_runs_real_micropython_with_files_laid_out_like_flash():
    code = ("import sys, json\n"
            "from securenode import probe\n"
            "print(json.dumps([sys.implementation.name, list(sys.implementation.version[:3]),"
            " probe.VALUE, open('blob.der', 'rb').read().hex()]))\n")
    status, out, _ = run_micropython(
        {"securenode/probe.py": "VALUE = 41 + 1\n", "blob.der": b"\x30\x00\xff"}, code)
    assert status == 0
    assert json.loads(out) == ["micropython", [1, 27, 0], 42, "3000ff"]


def test_a_python_exception_exits_1_with_traceback_after_earlier_output():
    status, out, err = run_micropython(
        {}, "print('before')\nraise ValueError('boom')\n", expect_ok=False)
    assert status == 1
    assert out == "before\n"
    assert "ValueError: boom" in err and "Traceback" in err


def test_a_runaway_loop_is_stopped_by_the_timeout():
    status, _, err = run_micropython({}, "while True:\n    pass\n", timeout_s=0.5,
                                     expect_ok=False)
    assert status == 3
    assert "timed out" in err
