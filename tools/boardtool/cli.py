"""The command line: one function per subcommand, a table naming them, --help on each."""
import argparse
import sys
from pathlib import Path

from tools.boardtool import ports
from tools.boardtool.errors import BoardToolError

DEFAULT_DIR = "device"
REPO = Path(__file__).resolve().parents[2]


def cmd_flash(args):
    from tools.boardtool import flash
    flash.flash(args.image, ports.choose(args.port), args.chip, no_stub=args.no_stub,
                no_reset=args.no_reset)
    return 0


def cmd_deploy(args):
    from tools.boardtool import deploy
    deploy.deploy(ports.choose(args.port), args.dir, romfs=args.romfs, reset=args.reset,
                  firmware_dir=args.firmware)
    return 0


def cmd_config(args):
    from tools.boardtool import setup
    setup.make_config(args.dir, args.device_id, args.ssid, args.wifi_key, args.broker,
                      args.broker_port, args.transport)
    return 0


def cmd_enroll(args):
    from tools.boardtool import setup
    kwargs = {"certs_dir": args.certs} if args.certs else {}
    setup.enroll(args.device_id, args.dir, rsa=args.rsa, **kwargs)
    return 0


def cmd_monitor(args):
    from tools.boardtool import monitor
    try:
        return monitor.monitor(ports.choose(args.port), as_json=args.json,
                               timeout_s=args.timeout, restart=args.reset)
    except KeyboardInterrupt:
        return 130


def cmd_repl(args):
    from tools.boardtool import console
    return console.repl(ports.choose(args.port))


def cmd_calibrate(args):
    from tools.boardtool import console
    console.calibrate(ports.choose(args.port), args.dir, args.volts, args.windows)
    return 0


COMMANDS = {
    "flash": cmd_flash, "deploy": cmd_deploy, "config": cmd_config, "enroll": cmd_enroll,
    "monitor": cmd_monitor, "repl": cmd_repl, "calibrate": cmd_calibrate,
}


def parser():
    top = argparse.ArgumentParser(
        prog="tools/board.py",
        description="From a blank ESP32/ESP8266 to readings: flash MicroPython, make the "
                    "device's files, deploy the firmware, watch its events, open its REPL.",
        epilog="The port is auto-detected when one known USB serial bridge is plugged in; "
               "otherwise give --port (or set SECURENODE_PORT). Exit status: 0 done, 1 the "
               "board/port/image said no, 2 a mistake in the command or its files.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name not in ("config", "enroll"):
            p.add_argument("--port", help="serial device, e.g. /dev/ttyUSB0 (default: auto)")
        return p

    p = command("flash", "write a MicroPython image, after checking it is for this chip")
    p.add_argument("image", help="the .bin from micropython.org/download (1.23 or later)")
    p.add_argument("--chip", default="auto",
                   choices=("auto", "esp32", "esp32s3", "esp32c3", "esp8266"))
    p.add_argument("--no-stub", action="store_true",
                   help="talk to the ROM loader only (no whole-chip erase; no verify on ESP8266)")
    p.add_argument("--no-reset", action="store_true",
                   help="leave DTR/RTS alone: put the board in download mode by hand (hold "
                        "BOOT, tap EN); also for pseudo-terminals")

    p = command("deploy", "copy the firmware (.mpy), config.json and DER files; only changes")
    p.add_argument("--dir", default=DEFAULT_DIR, help="device directory (default %(default)s)")
    p.add_argument("--romfs", action="store_true", help="modules into the ROMFS partition")
    p.add_argument("--reset", action="store_true", help="soft-reset afterwards: main.py runs")
    p.add_argument("--firmware", default=str(REPO / "firmware"),
                   help="firmware source tree (default: this checkout's firmware/)")

    p = command("config", "write DIR/config.json, checked by the firmware's own validator")
    p.add_argument("--dir", default=DEFAULT_DIR)
    p.add_argument("--device-id")
    p.add_argument("--ssid")
    p.add_argument("--wifi-key", help="asked for (not echoed) when not given")
    p.add_argument("--broker", help="broker (or endpoint) host name or IP")
    p.add_argument("--broker-port", type=int)
    p.add_argument("--transport", default="mqtts", choices=("mqtts", "jsonl", "wss", "mqtt_wss"))

    p = command("enroll", "make the device's key and certificate (CN = device id) for deploy")
    p.add_argument("device_id")
    p.add_argument("--dir", default=DEFAULT_DIR)
    p.add_argument("--certs", help="CA directory (default: the repo's certs/)")
    p.add_argument("--rsa", action="store_true", help="RSA 2048 key (default ECDSA P-256)")

    p = command("monitor", "show the board's events; exits 1 when it halts with a failure")
    p.add_argument("--json", action="store_true", help="print the events as JSON lines")
    p.add_argument("--timeout", type=float, help="stop after this many seconds (exit 0)")
    p.add_argument("--reset", action="store_true",
                   help="soft-reset the board first and watch main.py from its start")

    command("repl", "mpremote's REPL on the board (Ctrl-] or Ctrl-X leaves)")

    p = command("calibrate", "set sample.volts_per_count from a voltage you measured")
    p.add_argument("--volts", type=float, required=True, help="mains voltage on your meter")
    p.add_argument("--windows", type=int, default=5,
                   help="clean sampling windows to average (retaken for up to 20 s)")
    p.add_argument("--dir", default=DEFAULT_DIR)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BoardToolError as e:
        print("board %s: %s" % (args.command, e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("board %s: interrupted" % args.command, file=sys.stderr)
        return 130
