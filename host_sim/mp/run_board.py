# The board process's script: `micropython -X heapsize=N run_board.py`, started by
# host_sim.mp.launcher from its compiled copy of host_sim/mp. The boot itself is boot_board,
# compiled to .mpy by the launcher: a script is compiled from source in the heap, so this one
# is a single import (an uncaught exception still ends here, printed on the console).
import boot_board  # noqa: F401
