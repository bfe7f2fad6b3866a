import pytest

from kdpvlpa.utils.files import atomic_write


class Killed(Exception):
    pass


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write(path, lambda tmp: tmp.write_text('{"map": 1}'))
    assert path.read_text() == '{"map": 1}'

    def half_then_killed(tmp):
        tmp.write_text('{"map": ')
        raise Killed()

    with pytest.raises(Killed):
        atomic_write(path, half_then_killed)
    assert path.read_text() == '{"map": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_the_temporary_name_keeps_the_ending_savers_check(tmp_path):
    seen = []
    atomic_write(tmp_path / "last.weights.h5", lambda tmp: (seen.append(tmp.name),
                                                            tmp.write_bytes(b"x")))
    assert seen[0].endswith(".weights.h5") and seen[0] != "last.weights.h5"
    assert (tmp_path / "last.weights.h5").read_bytes() == b"x"


def test_os_errors_read_as_a_user_reads_them(tmp_path):
    import errno

    from kdpvlpa.utils.files import describe_os_error

    try:
        open(tmp_path / "missing" / "x.txt")
    except OSError as error:
        assert describe_os_error(error) == (
            f"No such file or directory: {tmp_path / 'missing' / 'x.txt'}")
    error = OSError(errno.ENOSPC, "Not enough disk space for the cache (2 GB).")
    assert str(error).startswith("[Errno 28]")
    assert describe_os_error(error) == "Not enough disk space for the cache (2 GB)."
    assert describe_os_error(OSError("plain")) == "plain"
