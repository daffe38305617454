"""Run a virtual board until Ctrl-C: python -m host_sim.pty_board --flash DIR

Prints the pty path to connect to, e.g. `tools/board.py --port /dev/pts/7 repl`.
"""
import argparse
import signal
import time

from host_sim.pty_board.server import BoardError, VirtualBoard
from host_sim.pty_board.standins import module_dirs


def main():
    parser = argparse.ArgumentParser(prog="python -m host_sim.pty_board", description=__doc__)
    parser.add_argument("--flash", required=True, help="directory holding the board's files")
    parser.add_argument("--platform", default="esp32", choices=("esp32", "esp8266"))
    args = parser.parse_args()
    try:
        board = VirtualBoard(args.flash, platform=args.platform, module_dirs=module_dirs())
    except BoardError as e:
        raise SystemExit("virtual board: %s" % e)
    # SIGTERM ends the board as Ctrl-C does: interpreter stopped, pty closed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with board:
        print(board.port, flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
