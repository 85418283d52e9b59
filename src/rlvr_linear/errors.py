"""The one exception type that the CLI turns into a single clear error line."""


class RlvrLinearError(Exception):
    """A user-facing error: bad input, a mismatched checkpoint, a missing file.

    The CLI prints ``error: <message>`` and exits with status 2; the Python API lets it propagate.
    """
