# Runs at boot on the board (and in host_sim, which imports it the same way).
# Nothing that escapes the app leaves a board at the REPL until someone power-cycles it:
# the reason is recorded on flash, reported, and the board resets (securenode/crash.py).
from securenode import crash

try:
    from securenode import settings

    settings.preload()  # the validator comes and goes before the app's modules load
    from securenode import app

    app.main()
except KeyboardInterrupt:
    raise  # Ctrl-C on the serial console: the person there wants the REPL
except Exception as exc:  # MemoryError included: the reset frees the heap
    crash.fatal(exc)
