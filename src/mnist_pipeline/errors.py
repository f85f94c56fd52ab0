"""The user's mistakes, kept free of heavy imports so that every entry point can raise them."""


class UserError(ValueError):
    """Bad input from the user (a config value, a file): one line, exit status 2, no traceback."""


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (its class name if it has none): for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
