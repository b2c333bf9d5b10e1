"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class SsmoeError(Exception):
    """A problem the user can fix (bad setting, missing file). The message says what and how."""

    exit_code = 2
