"""The exceptions a recipe turns into one line on stderr and an exit status, instead of a traceback."""
import errno
import os
import re
import resource
import shutil
import signal
import sys
from pathlib import Path


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
    as every rank stops together) and its exit status: 2 for a UserError, EXIT_STOPPED for a stop, which
    further SIGTERMs and SIGINTs no longer interrupt (the interpreter's shutdown takes seconds)."""
    stopped, rank0 = isinstance(e, Stopped), os.environ.get("RANK", "0") == "0"
    if stopped:  # the checkpoint is written: a repeated Ctrl-C or SLURM's next SIGTERM must not turn 75 into a kill
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    line = f"{'stopped' if stopped else 'error'}: {e}"
    if not stopped or rank0:
        print(line, file=sys.stderr, flush=True)
    if stopped and rank0 and os.environ.get(STOP_FILE):
        with open(os.environ[STOP_FILE], "w") as f:
            f.write(line + "\n")
    sys.exit(EXIT_STOPPED if stopped else 2)


def write_failure(e: BaseException, where: str | os.PathLike) -> tuple[str, str]:
    """(cause, fix) of a write under the folder `where` that raised `e`, in words for the user's one line.

    OSError carries its errno; safetensors (Rust) folds it into its own error's message as "(os error N)";
    torch's zip writer reports a short write only as "unexpected pos", so the cause is read off the
    file-size limit and the disk instead.
    """
    code = e.errno if isinstance(e, OSError) else None
    found = re.search(r"\(os error (\d+)\)", str(e))
    code = code or (int(found.group(1)) if found else None)
    short = code is None and "unexpected pos" in str(e)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if code == errno.EFBIG or (short and limit != resource.RLIM_INFINITY):
        return (f"{os.strerror(errno.EFBIG)} (the file-size limit is {limit // 1024} KB)",
                "raise the limit (ulimit -f unlimited)")
    folder = Path(where)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if code in (errno.ENOSPC, errno.EDQUOT) or short:
        free = shutil.disk_usage(folder).free / 1e6
        what = os.strerror(code) if code else "the write came up short, as on a full disk"
        return f"{what} ({free:.1f} MB free in {folder})", "free space"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR):
        return os.strerror(code), "choose a place you can write to"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return (os.strerror(code) if code else f"{type(e).__name__}: {first}"), "fix that"
