"""A board's raw REPL through mpremote's own transport, with failures as one-line errors."""
import contextlib
import io

from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from tools.boardtool import ports
from tools.boardtool.errors import at


class BoardLink:
    """Raw-REPL session with a board (interrupts whatever it runs).

    >>> with BoardLink("/dev/ttyUSB0") as board:
    ...     board.eval("1 + 1")
    2
    """

    def __init__(self, port, timeout_s=5):
        self.port = port
        self.timeout_s = timeout_s
        self.transport = None

    def __enter__(self):
        ports.check_usable(self.port)
        # mpremote prints what it got before raising: keep that out of our one-line errors.
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                # A read timeout, or mpremote's reads on a pty (read(1) with no inWaiting
                # check) would wait for ever on a device that went silent.
                self.transport = SerialTransport(self.port, baudrate=115200, timeout=1)
            except TransportError as e:
                raise at(self.port, "open port", str(e))
            try:
                self.transport.enter_raw_repl(soft_reset=False, timeout_overall=self.timeout_s)
            except (TransportError, OSError) as e:
                self.transport.close()
                raise at(self.port, "enter raw REPL", "no MicroPython REPL answered within "
                         "%d s: not a MicroPython board, or MicroPython is not flashed yet"
                         % self.timeout_s)
        return self

    def __exit__(self, *exc):
        if self.transport is not None:
            try:
                self.transport.exit_raw_repl()
            except OSError:
                pass
            self.transport.close()
            self.transport = None

    def exec(self, code, step, timeout_s=10):
        """Run code in the raw REPL; its output (bytes). timeout_s bounds the silence between
        two bytes of output, as mpremote's does."""
        try:
            out, err = self.transport.exec_raw(code, timeout=timeout_s)
        except TransportError as e:
            raise at(self.port, step, "lost the raw REPL (%s)" % e)
        if err:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            raise at(self.port, step, "board raised %s" % (lines[-1] if lines else "an error"))
        return out

    def eval(self, expression, step="eval"):
        import ast
        out = self.exec("print(repr(%s))" % expression, step)
        try:
            return ast.literal_eval(out.decode().strip())
        except (ValueError, SyntaxError):
            raise at(self.port, step, "unexpected answer %r" % out[:80])

    def soft_reset_to_main(self):
        """Leave the raw REPL and soft-reset from the friendly one, so main.py runs."""
        t = self.transport
        t.exit_raw_repl()
        t.serial.write(b"\x04")
        t.serial.flush()
