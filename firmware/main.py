# Runs at boot on the board (and in host_sim, which imports it the same way).
# Nothing that escapes the app leaves a board at the REPL until someone power-cycles it:
# the reason is recorded on flash, reported, and the board resets (securenode/crash.py).
# crash.py is loaded only then: by that time the app's frames are gone and their heap with
# them, so the import finds room even after a MemoryError, and a running node keeps none of it.
try:
    from securenode import settings

    settings.preload()  # the validator comes and goes before the app's modules load
    from securenode import app

    app.main()
except KeyboardInterrupt:
    raise  # Ctrl-C on the serial console: the person there wants the REPL
except Exception as exc:  # MemoryError included: the reset frees the heap
    from securenode import crash

    crash.fatal(exc)
