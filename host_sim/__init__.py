"""Host-side simulator for SecureNode boards.

Each simulated board is one OS process (``python -m host_sim.board``) running the
unmodified firmware from a flash directory, with stand-ins for the MicroPython
modules a board provides (see ``host_sim.stubs``). ``host_sim.flash`` lays out a
board's flash directory and builds the command line that starts it.
"""
