"""The one exception type for mistakes a user can fix (bad config, missing data, ...).

The CLI prints its message as a single line and exits non-zero; anything else that
escapes is a bug and keeps its traceback.
"""


class TriptychError(Exception):
    """A user-facing error: the message alone must tell what went wrong and how to fix it."""
