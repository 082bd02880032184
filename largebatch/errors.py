"""The exceptions a recipe turns into one line on stderr and an exit status, instead of a traceback."""
import os
import sys


class UserError(Exception):
    """Bad input: a flag, a file or a launch that cannot work.

    Recipes print its message as a single line and exit with status 2, so the message must name the
    bad value and the fix.
    """


class Stopped(Exception):
    """A run stopped early on request (SIGTERM, SIGINT) after saving a checkpoint: `--resume` continues it.

    Recipes print its message as a single line and exit with status `EXIT_STOPPED`.
    """


EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL, "try again later": distinct from errors (2) and from being killed (143)


def exit_with(e: UserError | Stopped):
    """End the process with `e`'s one line on stderr ("error: ..." or "stopped: ...", a stop on rank 0 only,
    as every rank stops together) and its exit status: 2 for a UserError, EXIT_STOPPED for a stop."""
    stopped = isinstance(e, Stopped)
    if not stopped or os.environ.get("RANK", "0") == "0":
        print(f"{'stopped' if stopped else 'error'}: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_STOPPED if stopped else 2)
