"""The one exception type for user-facing errors.

Anything a user can cause (bad file, unknown name, wrong config key, missing dataset) raises
``RecipesetError`` with a one-line message that names the file/line or key and says what to do; the CLI
prints that line and exits non-zero instead of showing a traceback.
"""


class RecipesetError(Exception):
    """A user-facing error with a one-line, actionable message."""

    exit_code = 1
