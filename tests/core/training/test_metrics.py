import numpy as np
import pytest

from core.training.metrics import compute_metrics, majority_baseline, quadratic_weighted_kappa


def test_perfect_agreement_has_kappa_one_and_full_recall():
    m = compute_metrics([0, 1, 2, 3, 4, 2], [0, 1, 2, 3, 4, 2], 5)
    assert m["accuracy"] == 1.0
    assert m["kappa"] == pytest.approx(1.0)
    assert m["per_class_recall"] == [1.0] * 5
    assert np.trace(np.array(m["confusion_matrix"])) == 6


def test_kappa_matches_known_value():
    # Known answer from sklearn.metrics.cohen_kappa_score(weights="quadratic") on these labels.
    y_true = [0, 0, 1, 1, 2, 2, 3, 4]
    y_pred = [0, 1, 1, 2, 2, 2, 4, 4]
    m = compute_metrics(y_true, y_pred, 5)
    assert m["kappa"] == pytest.approx(0.896551724137931, rel=1e-9)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["per_class_recall"][0] == 0.5


def test_kappa_penalises_far_errors_more_than_near_errors():
    y_true = [0, 1, 2, 3, 4] * 4
    near = [min(4, t + 1) for t in y_true]
    far = [4 - t for t in y_true]
    assert compute_metrics(y_true, near, 5)["kappa"] > compute_metrics(y_true, far, 5)["kappa"]
    assert compute_metrics(y_true, far, 5)["kappa"] < 0


def test_absent_class_recall_is_none_and_degenerate_kappa_is_zero():
    m = compute_metrics([0, 0], [0, 0], 3)
    assert m["per_class_recall"] == [1.0, None, None]
    assert quadratic_weighted_kappa(np.zeros((5, 5))) == 0.0


def test_majority_baseline():
    assert majority_baseline([0, 0, 0, 1, 2]) == pytest.approx(0.6)
