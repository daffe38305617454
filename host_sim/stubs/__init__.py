"""Stand-ins for the MicroPython modules a SecureNode board provides.

One module per stand-in; each exposes ``make_module(...)`` building a fresh module
object bound to one ``BoardState``. ``install`` swaps them into ``sys.modules``
under their MicroPython names (and u-aliases) *after* the host has imported every
CPython dependency, so host libraries keep the real ``time``, ``socket``, ``ssl``.
"""
import binascii
import collections
import errno
import gc
import hashlib
import io
import json
import os
import random
import re
import select
import struct
import sys

from host_sim.stubs import machine as _machine
from host_sim.stubs import micropython as _micropython
from host_sim.stubs import network as _network
from host_sim.stubs import ntptime as _ntptime
from host_sim.stubs import socket as _socket
from host_sim.stubs import ssl as _ssl
from host_sim.stubs import time as _time

_MEM_TOTAL_BYTES = 111168


def build_modules(state, reset_hook, reset_cause=_machine.PWRON_RESET):
    """Name -> stand-in module for one board (nothing installed yet)."""
    time_mod = _time.make_module(state)
    socket_mod = _socket.make_module(state)
    tls_mod, ssl_mod = _ssl.make_modules(state)
    machine_mod = _machine.make_module(state, time_mod, reset_hook, reset_cause)
    modules = {
        "time": time_mod,
        "socket": socket_mod,
        "tls": tls_mod,
        "ssl": ssl_mod,
        "network": _network.make_module(state),
        "machine": machine_mod,
        "micropython": _micropython.make_module(),
        "ntptime": _ntptime.make_module(state, socket_mod, time_mod, machine_mod),
    }
    for name in ("time", "socket", "ssl"):
        modules["u" + name] = modules[name]
    for real in (struct, binascii, errno, json, hashlib, os, select, random, re, io,
                 collections):
        modules["u" + real.__name__] = real
    return modules


def install(state, reset_hook, reset_cause=_machine.PWRON_RESET):
    """Put the stand-ins into sys.modules; returns the installed mapping."""
    modules = build_modules(state, reset_hook, reset_cause)
    sys.modules.update(modules)
    if not hasattr(gc, "mem_free"):
        gc.mem_free = lambda: _MEM_TOTAL_BYTES - 12000
        gc.mem_alloc = lambda: 12000
    return modules
