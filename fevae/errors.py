"""User-facing errors.

Every problem a user can fix (missing or corrupt data, bad shapes, invalid config values, an
unfinished run) is raised as :class:`FevaeError` with a message of the form
``"<what is wrong> — <how to fix it>"``. The command-line entry points print it as one line
``error: <message>`` and exit with status 2 (see :func:`fevae.utils.cli.run_cli`).
"""

from __future__ import annotations


class FevaeError(Exception):
    """An error the user can fix; ``str(err)`` is one line: what is wrong — how to fix it."""

    exit_code = 2

    def __init__(self, what: str, fix: str | None = None):
        self.what = what
        self.fix = fix
        super().__init__(f"{what} — {fix}" if fix else what)


def require(condition: bool, what: str, fix: str) -> None:
    """Raise :class:`FevaeError` unless ``condition`` holds."""
    if not condition:
        raise FevaeError(what, fix)
