"""The one exception type minivae raises for bad input.

Every check at a public boundary raises ``MinivaeError`` with a one-line message that names the
argument, what it got and what it needs.  It subclasses ``ValueError`` so ordinary ``except
ValueError`` code keeps working; the CLI turns it into ``minivae: error: ...`` and exit status 2.
"""


class MinivaeError(ValueError):
    """Bad input or a bad file: the message says what was wrong and what to do."""
