import pytest

from llm_gen_test_helpers import write_tiny_split


@pytest.fixture
def tiny_split_files(tmp_path):
    """(split_path, captions_path) of a 12-image split with tail classes
    surfboard, hot dog and bus."""
    return write_tiny_split(tmp_path)
