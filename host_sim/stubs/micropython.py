"""`micropython` stand-in: decorators are identities, memory calls are harmless."""
import types


def make_module():
    mod = types.ModuleType("micropython")
    levels = {"opt": 0}

    def const(value):
        return value

    def _identity(f):
        return f

    def opt_level(level=None):
        if level is None:
            return levels["opt"]
        levels["opt"] = int(level)
        return None

    def mem_info(verbose=None):
        print("stack: 736 out of 15360\nGC: total: 111168, used: 12000, free: 99168")

    mod.const = const
    mod.native = _identity
    mod.viper = _identity
    mod.mem_info = mem_info
    mod.qstr_info = lambda verbose=None: None
    mod.alloc_emergency_exception_buf = lambda size: None
    mod.heap_lock = lambda: 0
    mod.heap_unlock = lambda: 0
    mod.opt_level = opt_level
    mod.schedule = lambda func, arg: func(arg)
    mod.kbd_intr = lambda chr_: None
    return mod
