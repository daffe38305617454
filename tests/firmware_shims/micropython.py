"""The few names of MicroPython's `micropython` module that pure firmware modules use.

Put this directory on sys.path to import firmware modules on CPython in tests.
"""


def const(value):
    """Compile-time constant on a board; the value itself on CPython."""
    return value


def native(func):
    return func


def viper(func):
    return func
