"""`python -m tools.basestation ...` (from the repository root) or `python tools/basestation`."""

import sys

if __package__ in (None, ""):
    # Run as a directory: make the repository root importable so the package's own
    # relative imports work.
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
    from tools.basestation.cli import main
else:
    from .cli import main

sys.exit(main())
