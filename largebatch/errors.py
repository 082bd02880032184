"""The one error type the project raises for things a user can fix."""


class UserError(Exception):
    """Bad input: a flag, a file or a launch that cannot work.

    Recipes print its message as a single line and exit with status 2, so the message must name the
    bad value and the fix.
    """
