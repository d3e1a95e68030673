"""One error type for mistakes a user can fix: the CLI prints it without a traceback, exit 2."""


class UserError(Exception):
    """A problem with the user's input. The message names the problem and the fix."""

    exit_code = 2
