"""The one error type users see: a clear message, exit code 2, nothing written."""


class UserError(Exception):
    """Bad input from the user (config, path, checkpoint...). The CLI prints it on one line and exits 2."""
