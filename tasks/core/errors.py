"""User-facing errors: one line saying what is wrong and where, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (models.toml, an adapter, a path): reported as one line, exit 2.

    The message must name the place (file, key, tensor or path) and what is wrong with it.
    """

    exit_code = 2
