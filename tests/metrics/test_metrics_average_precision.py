"""Per-class AP against sklearn, long-tail groups and mAP."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from kdpvlpa.metrics import average_precision
from kdpvlpa.metrics import class_groups
from kdpvlpa.metrics import long_tail_map
from kdpvlpa.metrics import mean_average_precision


def sklearn_ap(y, s, sample_weight=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-negative columns warn
        return np.array(
            [
                average_precision_score(y[:, c], s[:, c], sample_weight=sample_weight)
                for c in range(y.shape[1])
            ]
        )


def test_by_hand_with_ties():
    # Column 0: scores 0.9 (pos), 0.4 (neg), 0.4 (pos). Thresholds 0.9 -> P 1,
    # R 1/2; 0.4 (both tied rows enter together) -> P 2/3, R 1.
    # AP = 1/2·1 + 1/2·2/3 = 5/6. Column 1: the only positive ranks first
    # (tied with nothing), AP = 1.
    y = np.array([[1, 0], [0, 1], [1, 0]])
    s = np.array([[0.9, 0.2], [0.4, 0.8], [0.4, 0.1]])
    np.testing.assert_allclose(average_precision(y, s), [5 / 6, 1.0], atol=1e-15)
    np.testing.assert_allclose(average_precision(y, s), sklearn_ap(y, s), atol=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_random_with_ties_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, c = 200, 12
    y = (rng.random((n, c)) < rng.uniform(0.01, 0.5, c)).astype(int)
    y[0] = 1  # every class has a positive
    # Coarse scores: many ties, some columns constant.
    s = np.round(rng.random((n, c)) + 0.3 * y, 1)
    s[:, 3] = 0.5
    np.testing.assert_allclose(average_precision(y, s), sklearn_ap(y, s), atol=1e-12)


def test_continuous_scores_bool_and_float_labels():
    rng = np.random.default_rng(7)
    y = rng.random((50, 5)) < 0.3
    y[0] = True
    s = rng.normal(size=(50, 5))
    expected = sklearn_ap(y.astype(int), s)
    for labels in (y, y.astype(float), y.astype(np.int8)):
        np.testing.assert_allclose(average_precision(labels, s), expected, atol=1e-12)


def test_sample_weight_matches_sklearn():
    rng = np.random.default_rng(8)
    y = (rng.random((60, 4)) < 0.4).astype(int)
    y[0] = 1
    s = np.round(rng.random((60, 4)), 1)
    w = rng.random(60) * (rng.random(60) > 0.2)
    np.testing.assert_allclose(
        average_precision(y, s, sample_weight=w), sklearn_ap(y, s, w), atol=1e-12
    )


def test_class_without_positives():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.2, 0.3], [0.4, 0.8], [0.9, 0.1]])
    ap = average_precision(y, s)
    assert np.isnan(ap[1]) and ap[0] == pytest.approx(average_precision_score(y[:, 0], s[:, 0]))
    # sklearn 1.9 warns and returns 0.0 for such a class; the option
    # reproduces it.
    with pytest.warns(UserWarning):
        assert average_precision_score(y[:, 1], s[:, 1]) == 0.0
    assert average_precision(y, s, no_positive_value=0.0)[1] == 0.0


def test_all_positive_and_single_image():
    y = np.ones((3, 1))
    s = np.array([[0.1], [0.5], [0.5]])
    assert average_precision(y, s)[0] == 1.0
    np.testing.assert_allclose(
        average_precision([[1, 0]], [[0.3, 0.3]]), [1.0, np.nan]
    )


def test_mean_excludes_missing_classes_with_warning():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    s = np.array([[0.9, 0.2, 0.5], [0.4, 0.8, 0.5], [0.4, 0.1, 0.5]])
    with pytest.warns(UserWarning, match=r"indices \[2\]"):
        value = mean_average_precision(y, s)
    assert value == pytest.approx(100 * (5 / 6 + 1.0) / 2)


def test_class_groups_boundaries():
    groups = class_groups([100, 99, 20, 19, 0, 1000, 21])
    np.testing.assert_array_equal(groups["head"], [0, 5])
    np.testing.assert_array_equal(groups["medium"], [1, 2, 6])
    np.testing.assert_array_equal(groups["tail"], [3, 4])
    custom = class_groups([100, 50, 10], head_threshold=50, tail_threshold=11)
    np.testing.assert_array_equal(custom["head"], [0, 1])
    np.testing.assert_array_equal(custom["tail"], [2])


def test_long_tail_map_percent_and_groups():
    rng = np.random.default_rng(9)
    y = (rng.random((80, 4)) < 0.4).astype(int)
    y[0] = 1
    s = rng.random((80, 4))
    freq = [100, 99, 20, 19]  # head, medium, medium, tail
    ap = sklearn_ap(y, s)
    result = long_tail_map(y, s, freq)
    assert list(result) == ["total", "head", "medium", "tail"]
    assert result["total"] == pytest.approx(100 * ap.mean(), abs=1e-10)
    assert result["head"] == pytest.approx(100 * ap[0], abs=1e-10)
    assert result["medium"] == pytest.approx(100 * ap[1:3].mean(), abs=1e-10)
    assert result["tail"] == pytest.approx(100 * ap[3], abs=1e-10)
    assert all(isinstance(v, float) for v in result.values())


def test_long_tail_map_empty_group_and_missing_class():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    s = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.4, 0.7, 0.3]])
    with pytest.warns(UserWarning, match="no positive"):
        result = long_tail_map(y, s, [500, 300, 5])
    assert result["total"] == pytest.approx(100.0)
    assert result["head"] == pytest.approx(100.0)
    assert np.isnan(result["medium"])  # no class in the group
    assert np.isnan(result["tail"])  # the only tail class has no positive


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 3\), scores.shape=\(2, 2\)"):
        average_precision(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        average_precision(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="at least one image"):
        average_precision(np.ones((0, 3)), np.ones((0, 3)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        average_precision([[2, 0]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="finite"):
        average_precision([[1, 0]], [[np.nan, 0.2]])
    with pytest.raises(ValueError, match="sample_weight"):
        average_precision([[1, 0]], [[0.1, 0.2]], sample_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"C=2.*len\(class_freq\)=3"):
        long_tail_map([[1, 0]], [[0.1, 0.2]], [5, 50, 500])
    with pytest.raises(ValueError, match="non-negative"):
        class_groups([5, -1])
