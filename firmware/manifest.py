# Freeze SecureNode into your own MicroPython image.
#
# Frozen bytecode runs from flash: a board keeps none of it in its heap, which is the
# difference between an ESP8266 that runs the node and one that raises MemoryError at import
# (tests/bench/results/memory.md has the figures). Build a board's firmware with it:
#
#     make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/firmware/manifest.py
#
# main.py stays on the board's filesystem (as config.json and the certificates do): it only
# starts the app, and keeping it there lets you stop the node from the REPL.
# tests/test_memory_manifest.py checks that mpy-cross compiles every module named here and
# that every firmware module is named.

# The port's own frozen modules (ntptime, the filesystem set-up): a board needs them still.
include("$(PORT_DIR)/boards/manifest.py")

# The node: one package, every module of it (each is loaded only when its configuration
# uses it; frozen, an unused one costs flash, not RAM).
package("securenode")
