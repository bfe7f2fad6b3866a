"""Reading text files with clear errors, and writing files so that a killed
run never leaves a half-written one."""

import codecs
import contextlib
import fcntl
import os
from pathlib import Path


def read_text(path, what, error=ValueError):
    """The text of a UTF-8 file; a leading byte-order mark is dropped.

    Args:
        path: str or `Path`. An existing file.
        what: str. What the file is, for the message ("Caption file").
        error: the exception class to raise for bytes that are not UTF-8.

    Returns:
        str.

    Raises:
        `error`: the file is not UTF-8; the message names the file, the line
            and the byte.
    """
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(
            f"{what} {path} is not UTF-8 text: byte 0x{data[e.start]:02x} on line "
            f"{line} ({e.reason}). Save it as UTF-8."
        ) from None


def describe_os_error(error):
    """`OSError` as a user reads it: "Permission denied: out/c.jsonl"."""
    if error.strerror and error.filename:
        paths = [str(f) for f in (error.filename, error.filename2) if f]
        return f"{error.strerror}: {' -> '.join(paths)}"
    if error.strerror:  # `OSError(errno.ENOSPC, "Not enough ...")`: no "[Errno 28]"
        return error.strerror
    return str(error)


def atomic_write(path, write):
    """Writes `path` through a temporary file that replaces it when complete.

    `write(tmp)` writes the whole file to `tmp`, the sibling `.tmp-<name>`:
    its name ends like `path`'s (savers that read the format from the name,
    such as `model.save` or `savefig`, see the same ending), and a temporary
    file left by a killed process is overwritten by the next write. The file
    is flushed to disk before it replaces `path`, so a crash leaves either the
    old file or the new one. On any error the temporary file is removed. One
    writer per file at a time.

    Args:
        path: str or `Path`. The file to write.
        write: callable taking the temporary `Path`.

    Returns:
        `path` as a `Path`.

    Example:
    >>> atomic_write("metrics.json", lambda tmp: tmp.write_text("{}"))  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def exclusive_lock(path, error, message):
    """Holds an exclusive lock on `path` (created if needed) for the block.

    The lock is the operating system's (`flock`): it goes with the process,
    so a killed run never leaves a stale one behind.

    Args:
        path: str or `Path`. The lock file.
        error: the exception class to raise when another process holds it.
        message: str. The message of that exception.
    """
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(message) from None
        yield
