"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config, a data path, a results table.

    The message is shown as is, on one line, without a traceback.
    """

    exit_code = 2
