"""The real-MicroPython runtime's chip: stand-ins, LittleFS2 flash, reset, watchdog, heap.

Each test boots a real MicroPython board process (host_sim.board --runtime micropython) on a
throwaway main.py that exercises one part and prints JSON lines.
"""
import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host_sim.flash import board_command, board_env  # noqa: E402
from host_sim.mp import launcher  # noqa: E402
from host_sim.servers.ntp import NtpServer  # noqa: E402

WIFI_UP = """
import network, time
wlan = network.WLAN(network.STA_IF)
wlan.active(True)
wlan.connect("simnet", "simkey")
while wlan.status() == network.STAT_CONNECTING:
    time.sleep_ms(10)
"""


def run_mp(tmp_path, source, *, wifi=False, options=None, timeout=60, name="flash"):
    """Boot a MicroPython board on `source` as main.py: (exit status, JSON lines, stderr)."""
    flash = tmp_path / name
    flash.mkdir(exist_ok=True)
    (flash / "main.py").write_text((WIFI_UP if wifi else "") + textwrap.dedent(source))
    opts = {"runtime": "micropython"}
    opts.update(options or {})
    proc = subprocess.run(board_command(flash, **opts), env=board_env(), capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines, proc.stderr


def debug(tmp_path, name="flash"):
    path = tmp_path / (name + ".state") / "sim_debug.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_firmware_sees_the_flash_at_root_and_the_interpreters_own_modules(tmp_path):
    rc, lines, err = run_mp(tmp_path, """
        import json, os, sys, socket, ssl, time, machine, network, ntptime
        with open("/note.txt", "w") as f:
            f.write("kept")
        print(json.dumps({"cwd": os.getcwd(), "ls": sorted(os.listdir("/")),
                          "impl": sys.implementation.name, "path": sys.path,
                          "ssl": hasattr(ssl, "SSLContext"), "float_time":
                          isinstance(time.time(), float),
                          "stand_ins": [m.__file__ for m in (machine, network, ntptime)]}))
    """)
    assert rc == 0, err
    r = lines[0]
    assert r["cwd"] == "/" and r["impl"] == "micropython" and r["ssl"] and r["float_time"]
    assert r["ls"] == ["host", "main.py", "note.txt"]
    # A board's sys.path, nothing more: the stand-ins were loaded before the flash went over
    # "/", from the launcher's directory by relative names (no long host path interned).
    assert r["path"] == ["", ".frozen", "/lib"]
    assert r["stand_ins"] == ["machine.mpy", "network.mpy", "ntptime.mpy"]
    # The flash is a real LittleFS2 image: the file is in it, not in the flash directory.
    image = (tmp_path / "flash.state" / "flash.img").read_bytes()
    assert b"littlefs" in image[:8192] and b"note.txt" in image
    assert not (tmp_path / "flash" / "note.txt").exists()


# The same few lines run as main.py on a board and as a bare interpreter's program, so both
# hold the same bytecode when they look.
FREE = "import gc\ngc.collect()\nprint('{\"free\": %d}' % gc.mem_free())\n"


def _bare_free(heap):
    # What a bare interpreter given `heap` has free after a collect: the firmware's heap.
    out = subprocess.run([launcher.tool("micropython"), "-X", "heapsize=%d" % heap, "-c",
                          FREE], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)["free"]


# The allowance is measured, not padded: main.py must find what a bare interpreter given
# the firmware's heap has free, within this many bytes either way (the stand-ins keep the
# board's host paths, whose length varies with where the board lives: +-0.7 KB seen).
STANDIN_MARGIN_BYTES = 1024


def test_main_finds_the_heap_it_was_given_with_the_stand_ins_loaded(tmp_path):
    # The bootstrap loads the stand-ins (C modules on a board) before main.py: their keep is
    # the launcher's allowance, so it must neither eat into the firmware's heap nor pad it.
    for board in ("esp32", "esp8266"):
        rc, lines, err = run_mp(tmp_path, FREE, options={"board": board}, name=board)
        assert rc == 0, err
        heap = launcher.PROFILES[board]
        assert abs(lines[0]["free"] - _bare_free(heap)) <= STANDIN_MARGIN_BYTES, (
            lines[0]["free"], _bare_free(heap))
        assert "board %s, GC heap %d bytes (+%d for the stand-ins)" % (
            board, heap, launcher.STANDIN_HEAP_BYTES) in err
        boot = [d for d in debug(tmp_path, board) if d["kind"] == "boot"][0]
        assert (boot["board"], boot["heap_bytes"]) == (board, heap)
        assert boot["standin_heap_bytes"] == launcher.STANDIN_HEAP_BYTES
    rc, lines, err = run_mp(tmp_path, FREE, options={"heap": "180K"}, name="explicit")
    assert rc == 0, err
    assert abs(lines[0]["free"] - _bare_free(180 * 1024)) <= STANDIN_MARGIN_BYTES


def test_stand_ins_and_bootstrap_run_as_precompiled_bytecode(tmp_path):
    # Compiled by the launcher before the first boot: nothing of theirs is compiled in the
    # board's heap (a .py import compiles in the heap, a transient the firmware would pay).
    rc, lines, err = run_mp(tmp_path, """
        import json, sys
        names = ("machine", "network", "ntptime", "time", "_simboard", "blockdev")
        print(json.dumps({"files": [(n in sys.modules) and sys.modules[n].__file__
                                    for n in names]}))
    """)
    assert rc == 0, err
    # Loaded before main.py (main imported none of them) and loaded from .mpy.
    files = lines[0]["files"]
    assert all(f and f.endswith(".mpy") for f in files), files


# Names the stand-ins and the bootstrap intern before main.py runs (97 measured, with
# "main.py"): a board's C modules intern none, so every one is a name pool slot the firmware
# gets here and not there. 167 before they were cut down.
STANDIN_NAMES_MAX = 100


def test_stand_ins_intern_few_names_before_main(tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text("import micropython\nmicropython.qstr_info()\n")
    proc = subprocess.run(board_command(flash, runtime="micropython"), env=board_env(),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("qstr pool:")][0]
    n_qstr = int(line.split("n_qstr=")[1].split(",")[0])
    assert 50 < n_qstr <= STANDIN_NAMES_MAX, line


def test_stand_ins_carry_their_module_name_as_source_name():
    # Not "machine.py": the import interns the module's name anyway, a file name would be
    # one more interned name before the firmware's.
    from test_memory_manifest import mpy_source
    port = launcher.compile_port()
    names = sorted(p.stem for p in port.glob("*.mpy"))
    assert names == sorted(p.stem for p in launcher._PORT_SOURCES)
    assert [mpy_source((port / (n + ".mpy")).read_bytes()) for n in names] == names


def test_staged_firmware_mpy_carry_their_dotted_module_name(tmp_path):
    # The name a board interns for a module's source file: the module's own (interned by
    # the import anyway), not one more "securenode/x.py" per module kept in RAM for good.
    from test_memory_manifest import mpy_source
    flash = tmp_path / "flash"
    for name in ("__init__.py", "events.py"):
        (flash / "securenode").mkdir(parents=True, exist_ok=True)
        (flash / "securenode" / name).write_bytes(
            (ROOT / "firmware" / "securenode" / name).read_bytes())
    assert launcher.stage(flash, tmp_path / "staged", "mpy") == 2
    staged = tmp_path / "staged" / "securenode"
    assert mpy_source((staged / "events.mpy").read_bytes()) == "securenode.events"
    assert mpy_source((staged / "__init__.mpy").read_bytes()) == "securenode"


def test_heap_cap_is_hard(tmp_path):
    rc, lines, err = run_mp(tmp_path, """
        import json
        try:
            hog = bytearray(200 * 1024)
            print(json.dumps({"got": len(hog)}))
        except MemoryError:
            print(json.dumps({"memory_error": True}))
    """, options={"board": "esp32"})
    assert rc == 0, err
    assert lines == [{"memory_error": True}]


def test_adc_rms_matches_configured_mains_volts(tmp_path):
    rc, lines, err = run_mp(tmp_path, """
        import json, machine, math, time
        adc = machine.ADC(machine.Pin(34))
        vals = []
        t0 = time.ticks_us()
        # At least 10 cycles at 60 Hz and 250 samples: on a loaded host a 200 ms window alone
        # gave fewer than 200 (2 s at most).
        while ((time.ticks_diff(time.ticks_us(), t0) < 200000 or len(vals) < 250)
               and time.ticks_diff(time.ticks_us(), t0) < 2000000):
            vals.append(adc.read_u16())
            time.sleep_us(200)
        rms = math.sqrt(sum(((v - 32768) * 0.0125) ** 2 for v in vals) / len(vals))
        print(json.dumps({"rms": rms, "n": len(vals), "raw": adc.read(),
                          "uid": machine.unique_id().hex()}))
    """, options={"mains_v": 120, "mains_hz": 60, "noise_v": 1.0,
                  "adc_volts_per_count": 0.0125, "device_seed": "adc-1"})
    assert rc == 0, err
    r = lines[0]
    assert r["n"] >= 250 and abs(r["rms"] - 120) / 120 < 0.02
    assert 0 <= r["raw"] <= 4095
    # Same unique_id as the CPython stand-in gives the same seed.
    import hashlib
    assert r["uid"] == hashlib.sha256(b"uid:adc-1").digest()[:6].hex()


def test_adc_takes_what_each_port_takes(tmp_path):
    # ports/esp8266/machine_adc.c: one integer channel (a Pin is a TypeError), 0 the TOUT pin,
    # 1 the supply; ports/esp32/machine_adc.c: a Pin or a GPIO with an ADC channel.
    source = """
        import json, machine
        def error(call):
            try:
                call()
            except Exception as e:
                return "%s: %s" % (type(e).__name__, e)
        out = {"pin": error(lambda: machine.ADC(machine.Pin(5))),
               "two": error(lambda: machine.ADC(2)), "gpio5": error(lambda: machine.ADC(5)),
               "atten": hasattr(machine.ADC, "ATTN_11DB")}
        if out["atten"]:
            out["read"] = 0 <= machine.ADC(machine.Pin(34)).read() <= 4095
        else:
            out["read"] = [0 <= machine.ADC(0).read() <= 1023, machine.ADC(1).read()]
        print(json.dumps(out))
    """
    rc, lines, err = run_mp(tmp_path, source, options={"board": "esp8266"}, name="esp8266")
    assert rc == 0, err
    assert lines[0] == {"pin": "TypeError: can't convert Pin to int",
                        "two": "ValueError: ADC(2) doesn't exist",
                        "gpio5": "ValueError: ADC(5) doesn't exist", "atten": False,
                        "read": [True, 3379]}
    rc, lines, err = run_mp(tmp_path, source, options={"board": "esp32"}, name="esp32")
    assert rc == 0, err
    assert lines[0] == {"pin": "ValueError: invalid pin", "two": None,
                        "gpio5": "ValueError: invalid pin", "atten": True, "read": True}


def test_wifi_statuses_follow_the_virtual_air(tmp_path):
    air = tmp_path / "air.json"
    air.write_text(json.dumps({"aps": {"simnet": {"key": "simkey", "up": True}}}))
    rc, lines, err = run_mp(tmp_path, """
        import json, network, time
        w = network.WLAN(network.STA_IF)
        w.active(True)
        def settle():
            while w.status() == network.STAT_CONNECTING:
                time.sleep_ms(10)
            return w.status()
        w.connect("simnet", "nope")
        wrong = settle()
        w.connect("other", "simkey")
        missing = settle()
        w.connect("simnet", "simkey")
        up = settle()
        with open(%r, "w") as f:
            f.write(json.dumps({"aps": {}}))
        time.sleep_ms(150)
        lost = w.status()
        print(json.dumps({"wrong": wrong, "missing": missing, "up": up, "lost": lost,
                          "want": [network.STAT_WRONG_PASSWORD, network.STAT_NO_AP_FOUND,
                                   network.STAT_GOT_IP, network.STAT_BEACON_TIMEOUT]}))
    """ % ("/host" + str(air)), options={"air": air})
    assert rc == 0, err
    r = lines[0]
    assert [r["wrong"], r["missing"], r["up"], r["lost"]] == r["want"] == [202, 201, 1010, 200]


def test_stand_ins_refuse_keywords_where_the_ports_parse_positionally(tmp_path):
    # network_wlan.c (make_new, active, status), machine_adc.c (the pin) and modmachine.c
    # (freq) take these positionally: a keyword is a TypeError on a board, so it is here.
    rc, lines, err = run_mp(tmp_path, """
        import json, machine, network
        def refused(call):
            try:
                call()
            except TypeError:
                return True
            return False
        w = network.WLAN(network.STA_IF)
        print(json.dumps({"refused": [
            refused(lambda: network.WLAN(interface_id=0)), refused(lambda: w.active(flag=1)),
            refused(lambda: w.status(param="rssi")), refused(lambda: machine.ADC(pin=34)),
            refused(lambda: machine.freq(hz=80000000)), refused(lambda: network.WLAN(0, 1))],
            "positional": [w.active(True), w.active(), w.status("rssi"),
                           0 <= machine.ADC(34).read() <= 4095, machine.freq()]}))
    """)
    assert rc == 0, err
    assert lines[0] == {"refused": [True] * 6, "positional": [None, True, -55, True, 160000000]}


def test_ntptime_queries_the_simulators_server_over_real_udp(tmp_path):
    with NtpServer(offset_s=3600) as ntp:
        rc, lines, err = run_mp(tmp_path, wifi=True, source="""
            import json, ntptime
            print(json.dumps({"ntp": ntptime.time()}))
            try:
                ntptime.settime()
                ok = True
            except Exception as e:
                ok = repr(e)
            print(json.dumps({"settime": ok}))
        """, options={"ntp": "127.0.0.1:%d" % ntp.address[1]})
        assert ntp.queries == 2
    assert rc == 0, err
    assert abs(lines[0]["ntp"] - (time.time() + 3600)) < 5    # the server's clock, 1970 epoch
    assert lines[1] == {"settime": True}


def test_reset_keeps_the_flash_and_reports_its_cause_and_an_unfed_watchdog_resets(tmp_path):
    rc, lines, err = run_mp(tmp_path, """
        import json, machine, time
        try:
            with open("boots") as f:
                n = int(f.read())
        except OSError:
            n = 0
        with open("boots", "w") as f:
            f.write(str(n + 1))
        print(json.dumps({"boot": n, "cause": machine.reset_cause()}))
        if n == 0:
            machine.reset()
            print(json.dumps({"reset_returned": True}))
        elif n == 1:
            wdt = machine.WDT(timeout=600)
            for _ in range(12):          # fed: 1.2 s with a 0.6 s timeout, no reset
                time.sleep_ms(100)
                wdt.feed()
            print(json.dumps({"fed_ok": True}))
            while True:                  # a hang: nothing feeds it any more
                pass
    """)
    assert rc == 0, err
    assert lines == [{"boot": 0, "cause": 1}, {"boot": 1, "cause": 2}, {"fed_ok": True},
                     {"boot": 2, "cause": 3}]
    kinds = [(d["kind"], d.get("reset_cause")) for d in debug(tmp_path)]
    assert kinds == [("flash", None), ("boot", 1), ("reset", 2), ("boot", 2), ("reset", 3),
                     ("boot", 3), ("exit", None)]


def test_an_uncaught_exception_exits_1_with_the_traceback_on_the_console(tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text("import json\nprint(json.dumps({'a': 1}))\n1 / 0\n")
    proc = subprocess.run(board_command(flash, runtime="micropython"), env=board_env(),
                          capture_output=True, text=True, timeout=60)
    # This port prints it on stdout, where a board's REPL prints it: the console.
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == '{"a": 1}'
    assert "ZeroDivisionError: divide by zero" in proc.stdout


def test_flash_that_does_not_mount_is_reported_not_reformatted(tmp_path):
    rc, _, err = run_mp(tmp_path, "print('{}')\n")
    assert rc == 0, err
    image = tmp_path / "flash.state" / "flash.img"
    with open(image, "r+b") as f:       # both superblock copies (blocks 0 and 1) wiped
        f.write(b"\x00" * 8192)
    rc, lines, err = run_mp(tmp_path, "print('{}')\n")
    assert rc == 3 and lines == []
    assert "does not mount as LittleFS2" in err and "Traceback" not in err


@pytest.mark.parametrize("flag,value,needle", [
    ("clock", "1700000000", "--clock"),
    ("tls_verify_error", "valueerror", "--tls-verify-error"),
    ("heap", "12", "heap must be bytes"),
])
def test_options_that_do_not_apply_are_refused_in_one_line(tmp_path, flag, value, needle):
    rc, _, err = run_mp(tmp_path, "print('{}')\n", options={flag: value})
    assert rc == 2 and needle in err and "Traceback" not in err


def test_mpy_cross_output_matches_the_interpreter():
    assert launcher.mpy_cross_version() == launcher.interpreter_mpy()


def test_parse_heap():
    assert launcher.parse_heap("112K") == 114688
    assert launcher.parse_heap("2M") == 2097152
    with pytest.raises(ValueError):
        launcher.parse_heap("lots")
    assert math.isclose(launcher.PROFILES["esp32"] / 1024, 112)


def test_mpy_of_another_version_is_refused_before_the_board_boots(tmp_path):
    emits = launcher.mpy_cross_version()
    with pytest.raises(launcher.LaunchError, match="emits mpy v%d.%d but the interpreter "
                       "loads v5.0" % emits):
        launcher.check_mpy_cross((5, 0))
    src = tmp_path / "m.py"
    src.write_text("x = 1\n")
    with pytest.raises(launcher.LaunchError, match="cannot load"):
        launcher.compile_mpy(src, tmp_path / "m.mpy", "m.py", (5, 0))
    launcher.compile_mpy(src, tmp_path / "m.mpy", "m.py", launcher.interpreter_mpy())
