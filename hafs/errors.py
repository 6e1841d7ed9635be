"""The one error type users see: a single line naming the field and the fix, never a traceback."""


class HafsError(Exception):
    """A problem with input (inventory, config, arguments) explained in one line.

    ``exit_code`` is what the CLI returns: 2 for usage and configuration errors
    (the convention of argparse and most Unix tools), 1 for a failed operation.
    """

    exit_code = 2
