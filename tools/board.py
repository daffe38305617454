#!/usr/bin/env python3
"""SecureNode's board tool: flash, deploy, config, enroll, monitor, repl, calibrate.

    tools/board.py flash ESP32_GENERIC-20250415-v1.25.0.bin
    tools/board.py enroll node-1 && tools/board.py config --device-id node-1 --ssid home \\
        --broker 192.168.1.10
    tools/board.py deploy --reset && tools/board.py monitor

Each subcommand has --help; the parts live in tools/boardtool/ (one module per job).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.boardtool.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
