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
# Set by accelerate_configs/slurm.sbatch: rank 0 writes its stop line there, and the job requeues itself
# (`accelerate launch` exits 143 after a SIGTERM whatever its workers did, so its status cannot say).
STOP_FILE = "LARGEBATCH_STOP_FILE"


def exit_with(e: UserError | Stopped):
    """End the process with `e`'s one line on stderr ("error: ..." or "stopped: ...", a stop on rank 0 only,
    as every rank stops together) and its exit status: 2 for a UserError, EXIT_STOPPED for a stop."""
    stopped, rank0 = isinstance(e, Stopped), os.environ.get("RANK", "0") == "0"
    line = f"{'stopped' if stopped else 'error'}: {e}"
    if not stopped or rank0:
        print(line, file=sys.stderr, flush=True)
    if stopped and rank0 and os.environ.get(STOP_FILE):
        with open(os.environ[STOP_FILE], "w") as f:
            f.write(line + "\n")
    sys.exit(EXIT_STOPPED if stopped else 2)
