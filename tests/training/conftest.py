import pytest

import kdpvlpa  # noqa: F401
from kdpvlpa.data import load_synthetic_lt, make_synthetic_lt


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_lt(root, num_classes=6, num_train=48, num_test=24, image_size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def synthetic_train(synthetic_root):
    return load_synthetic_lt(synthetic_root, "train")
