"""The one exception type for mistakes a user can make (bad manifest, missing data, wrong checkpoint).

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""


class HiclError(Exception):
    """A user-caused error whose message names the field or path and what was expected."""
