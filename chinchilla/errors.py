"""The exceptions the CLI turns into a one-line message and exit code 2: bad input
(`UserError`) and faults of the machine (`EnvironmentFault`, from an `OSError`)."""

import errno


class UserError(Exception):
    """Bad input from the user: a config, a data path, a results table.

    The message is shown as is, on one line, without a traceback.
    """

    exit_code = 2


class EnvironmentFault(UserError):
    """The machine, not the input: a full or read-only disk, a denied permission, a path
    that is a file where a folder belongs. One line naming the path and what to do."""


# errno -> what to do about it; anything else keeps the system's own words
_ADVICE = {
    errno.ENOSPC: "no space left on the device; free some space (or pass --out on another "
    "disk) and rerun the same command",
    errno.EDQUOT: "disk quota exceeded; free some space (or pass --out elsewhere) and rerun "
    "the same command",
    errno.EROFS: "read-only file system; pass --out to a writable folder",
    errno.EACCES: "permission denied; fix the permissions or pass --out to a folder you can write",
    errno.EPERM: "operation not permitted; fix the permissions or pass --out to a folder you "
    "can write",
    errno.ENOTDIR: "a file stands where a folder is needed; move it or choose another path",
    errno.EEXIST: "a file stands where a folder is needed; move it or choose another path",
    errno.EISDIR: "is a folder where a file is needed; choose a file path",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and rerun",
    errno.EIO: "input/output error from the disk; check the device, then rerun",
}

# faults of the machine: a run meeting one stops the sweep instead of being recorded as
# failed (every following run would meet it too), and a rerun resumes once it is fixed
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def is_environment_fault(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the path it concerns and what to do."""
    path = exc.filename if exc.filename is not None else None
    advice = _ADVICE.get(exc.errno) or (exc.strerror or str(exc))
    if path is None:
        return advice
    return f"{path}: {advice}"
