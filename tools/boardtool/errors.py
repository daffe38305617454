"""The one error a board command reports: a line naming the port (or file) and the step."""

EXIT_FAILED = 1      # the board, the port or the image said no
EXIT_USAGE = 2       # a mistake in the command or its input files


class BoardToolError(Exception):
    """A failure a person can act on; str(e) is the whole one-line message.

    >>> raise BoardToolError("/dev/ttyUSB0: permission denied (step: open port)")
    """

    def __init__(self, message, exit_status=EXIT_FAILED):
        super().__init__(message)
        self.exit_status = exit_status


def at(port, step, problem, exit_status=EXIT_FAILED):
    """The usual shape: "<port>: <problem> (step: <step>)"."""
    return BoardToolError("%s: %s (step: %s)" % (port, problem, step), exit_status)
