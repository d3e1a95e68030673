"""One error type for mistakes a user can fix: the CLI prints it without a traceback, exit 2."""


class UserError(Exception):
    """A problem with the user's input. The message names the problem and the fix."""

    exit_code = 2


class RunFailure(UserError):
    """Something failed while running (trials, a download), not in the user's input: exit 1.

    A subclass so every caller that turns UserError into one clear line (no traceback) covers
    it too; only the exit code differs (1 runtime failure, 2 usage error)."""

    exit_code = 1
