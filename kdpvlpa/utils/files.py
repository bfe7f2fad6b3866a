"""Writing files so that a killed run never leaves a half-written one."""

import os
from pathlib import Path


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
