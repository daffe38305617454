"""The real MicroPython runtime of the simulator (``host_sim.board --runtime micropython``).

The unix port of MicroPython (``.venv/bin/micropython``: real ``socket``, ``ssl`` on Mbed TLS,
``select``, ``VfsLfs2``) runs the unmodified firmware; this package supplies only what a board
has in C and that port lacks, plus the "chip" around the interpreter:

- ``port/`` runs UNDER MicroPython: ``machine``, ``network`` and ``ntptime`` stand-ins and
  ``_simboard`` (the settings the host hands them). Small on purpose: they cost GC heap that
  the same modules cost nothing of on a board, where they are C.
- ``blockdev.py``, ``deploy.py`` and ``boot_board.py`` run under MicroPython too: a file-backed
  block device, the step that writes the firmware into a LittleFS2 image, and the bootstrap
  (``micropython -m boot_board``) that loads the stand-ins, mounts that image at ``/`` (as a
  board does) and imports ``main``.
- ``launcher.py`` runs under CPython: it is the chip. It builds the image, starts
  ``micropython -X heapsize=N``, restarts it on ``machine.reset()``, resets it when the
  watchdog is not fed, keeps the flash across resets and hands the next boot its
  ``reset_cause``.

Reusing the stand-ins elsewhere (e.g. a pty board): put ``host_sim/mp/port`` on MicroPython's
``sys.path`` and point ``SECURENODE_MP_BOARD`` at a JSON file with the fields
``_simboard.py`` documents; without it they use defaults (AP simnet/simkey, 230 V 50 Hz).
"""
