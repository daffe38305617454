"""tools/board.py's parts, one module per job: ports, firmware (host-side checks), deploy,
monitor, flash, setup (config, enroll), console (repl, calibrate), cli."""
