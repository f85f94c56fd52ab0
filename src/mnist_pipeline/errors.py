"""The user's mistakes, kept free of heavy imports so that every entry point can raise them."""


class UserError(ValueError):
    """Bad input from the user (a config value, a file): one line, exit status 2, no traceback."""
