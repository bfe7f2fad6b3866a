"""The caption file: JSONL, one record per image, append-only.

A record is written as one line with a single write and flushed at once, so a
killed run leaves at most one torn last line. `repair_torn_tail` removes such a
line before a rerun appends (a line that is a whole record but lacks its
newline keeps the record and gets the newline). Any other malformed line is an
error that names the file and line, and nothing is changed.
"""

import fcntl
import json
import os

REQUIRED_KEYS = ("image_id", "caption", "raw_caption", "status")
STATUSES = ("valid", "retried", "fallback")


class CaptionFileError(ValueError):
    """Raised when a caption file is malformed or inconsistent.

    llm_gen does not import kdpvlpa (whose import selects a Keras backend),
    so training's reader, `kdpvlpa.data.load_caption_file`, has its own
    `kdpvlpa.data.CaptionFileError`.
    """


def _check_record(record, path, line_no):
    if not isinstance(record, dict):
        raise CaptionFileError(
            f"{path}:{line_no}: a record must be a JSON object, got "
            f"{type(record).__name__}."
        )
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise CaptionFileError(f"{path}:{line_no}: record lacks the key(s) {missing}.")
    if record["status"] not in STATUSES:
        raise CaptionFileError(
            f"{path}:{line_no}: status {record['status']!r} is not one of {STATUSES}."
        )
    if not isinstance(record["image_id"], (str, int)) or isinstance(record["image_id"], bool):
        raise CaptionFileError(
            f"{path}:{line_no}: image_id must be a string or an integer, got "
            f"{record['image_id']!r}."
        )
    for key in ("caption", "raw_caption"):
        if not isinstance(record[key], str):
            raise CaptionFileError(
                f"{path}:{line_no}: {key} must be a string, got {record[key]!r}."
            )


def _parse_complete_line(raw, path, line_no):
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CaptionFileError(
            f"{path}:{line_no}: not a JSON record ({e}). The file is damaged "
            "somewhere other than its last line; it was left unchanged."
        ) from None
    _check_record(record, path, line_no)
    return record


def read_records(path, allow_torn_tail=True):
    """Read every record of a caption file.

    Args:
        path: path-like. The JSONL file.
        allow_torn_tail: bool. True skips an unfinished last line (a run that
            was killed while writing); False raises on it.

    Returns:
        `(records, torn)`: the list of records in file order, and the bytes of
        a skipped torn last line (`b""` when there was none).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CaptionFileError(f"Caption file not found: {path}") from None
    records = []
    lines = data.split(b"\n")
    tail = lines.pop()  # bytes after the last newline (b"" if none)
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        records.append(_parse_complete_line(raw, path, line_no))
    torn = b""
    if tail.strip():
        record = _parse_tail(tail, path, len(lines) + 1)
        if record is not None:
            records.append(record)
        elif allow_torn_tail:
            torn = tail
        else:
            raise CaptionFileError(
                f"{path}:{len(lines) + 1}: the last line is an unfinished record "
                "(a killed run?)."
            )
    return records, torn


# Every record this package writes starts so (`image_id` is its first key).
_RECORD_START = b'{"image_id": '


def _parse_tail(raw, path, line_no="last line"):
    """The bytes after a file's last newline: their record when they are a
    whole one, None when they are the start of one that a killed run left.

    Anything else (another file's last line, a JSON document) raises, so that
    nobody's data is taken for a torn line and cut off. NUL bytes at the end
    count as torn: a crash can leave the unsynced end of a file zero-filled.
    """
    stripped = raw.strip()
    try:
        record = json.loads(stripped.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        start = stripped.rstrip(b"\0").strip()
        if (not start or _RECORD_START.startswith(start)
                or start.startswith(_RECORD_START)):
            return None
        raise CaptionFileError(
            f"{path}:{line_no}: neither a caption record nor the start of one "
            "that a killed run left; this does not look like a caption file "
            "written by llm_gen. It was left unchanged."
        ) from None
    _check_record(record, path, line_no)
    return record


def repair_torn_tail(path):
    """Make a caption file end with a whole line before appending to it.

    Returns:
        A message saying what was repaired, or None when nothing was needed.
    """
    path = os.fspath(path)
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        # Only the bytes after the last newline can be torn; read backwards
        # in blocks so that a large file is not read whole.
        block = 1 << 16
        end = size
        tail = b""
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                tail = chunk[cut + 1:] + tail
                break
            tail = chunk + tail
            end = start
        if not tail:
            return None
        keep = size - len(tail)
        if not tail.strip():
            f.truncate(keep)
            return None
        if _parse_tail(tail, path) is not None:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            return "completed a last record that lacked its newline"
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return (
            f"removed an unfinished last line of {len(tail)} bytes left by a "
            "killed run; that image will be generated again"
        )


def dump_record(record):
    """One JSONL line (with its newline) as bytes."""
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "replace")


def _same_file(fd, path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


class CaptionWriter:
    """Appends records to a caption file, one locked writer at a time.

    Args:
        path: path-like. The JSONL file; created if missing.
        fsync_every: int. Records between two `fsync` calls; each record is
            flushed to the operating system at once regardless.
    """

    def __init__(self, path, fsync_every=64):
        self.path = os.fspath(path)
        self.fsync_every = fsync_every
        self._since_sync = 0
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        while True:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                raise CaptionFileError(
                    f"Another process is writing {self.path}; wait for it or give "
                    "a different --out (use --shard to split work)."
                ) from None
            # The lock counts only if the file is still the one at the path:
            # a run that failed before writing removes the empty file it made.
            if _same_file(self._fd, self.path):
                break
            os.close(self._fd)

    def write(self, record):
        data = dump_record(record)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._since_sync += 1
        if self._since_sync >= self.fsync_every:
            self.sync()

    def sync(self):
        os.fsync(self._fd)
        self._since_sync = 0

    def close(self):
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def index_records(records, path):
    """Map image id -> record, raising on an id that appears twice."""
    by_id = {}
    for record in records:
        image_id = record["image_id"]
        if image_id in by_id:
            raise CaptionFileError(
                f"{path}: image {image_id!r} appears more than once."
            )
        by_id[image_id] = record
    return by_id
