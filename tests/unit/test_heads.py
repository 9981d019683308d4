"""The heads' maths on the driver side: class weights, class checks, early-stopping and promotion choices, the
decision threshold, test metrics and the Keras/pyfunc parity check, on small arrays with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipelines.training.heads import BinaryHead, MulticlassHead, RegressionHead, TrainingInputError, get_head

pytestmark = pytest.mark.fast


def test_class_weights_are_inverse_frequency_and_one_when_balanced() -> None:
    binary, multi = get_head("binary"), get_head("multiclass")
    assert binary.class_weights({0: 50, 1: 50}, 2) == {0: 1.0, 1: 1.0}
    assert binary.class_weights({0: 90, 1: 10}, 2) == pytest.approx({0: 100 / 180, 1: 5.0})
    assert multi.class_weights({0: 10, 1: 20, 2: 30}, 3) == pytest.approx({0: 2.0, 1: 1.0, 2: 60 / 90})
    assert get_head("regression").class_weights({0: 1}, 1) is None


def test_a_split_that_cannot_teach_the_head_is_refused() -> None:
    with pytest.raises(TrainingInputError, match="single class"):
        BinaryHead().class_weights({0: 10, 1: 0}, 2)
    with pytest.raises(TrainingInputError, match=r"no rows of class ids \[1, 3\]"):
        MulticlassHead().check_classes({0: 5, 2: 5}, 4)
    with pytest.raises(ValueError, match="unknown head 'ranking'; known: \\['binary', 'multiclass', 'regression'\\]"):
        get_head("ranking")


def test_early_stopping_and_promotion_follow_the_head() -> None:
    conf = {"monitor": "val_rmse", "patience": 3, "min_delta": 0.01}
    assert RegressionHead().early_stopping(conf) == {"monitor": "val_rmse", "patience": 3, "min_delta": 0.01,
                                                    "mode": "min"}
    assert BinaryHead().early_stopping(conf)["monitor"] == "val_auc"  # not one it logs: its default
    assert BinaryHead().early_stopping(conf)["mode"] == "max"
    assert BinaryHead().early_stopping({**conf, "monitor": "val_loss"})["mode"] == "min"
    assert BinaryHead().promotion("log_loss") == ("log_loss", True)
    assert BinaryHead().promotion("rmse") == ("roc_auc", False)
    assert MulticlassHead().promotion("macro_f1") == ("macro_f1", False)
    assert RegressionHead().promotion("r2") == ("r2", False)


def test_result_types_name_the_serving_outputs() -> None:
    assert BinaryHead().result_type == "probability double, prediction int"
    assert MulticlassHead().result_type == "prediction int, label string, probability double"
    assert RegressionHead().result_type == "prediction double"


def test_binary_threshold_and_metrics() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    head = BinaryHead()
    assert head.threshold(y, p) == pytest.approx(0.6)  # every positive caught, one false positive: F1 6/7
    m = head.metrics(y, p, 0.65, None)
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert (m["accuracy"], m["precision"], m["recall"]) == (pytest.approx(4 / 6), pytest.approx(2 / 3),
                                                            pytest.approx(2 / 3))
    assert m["positive_rate"] == 0.5 and m["rows"] == 6
    one_class = head.metrics(np.zeros(3, dtype=int), np.array([0.1, 0.2, 0.3]), 0.5, None)
    assert math.isnan(one_class["roc_auc"]) and one_class["accuracy"] == 1.0
    assert head.summary(m) == {"test_roc_auc": f"{8 / 9:.4f}", "test_pr_auc": f"{m['pr_auc']:.4f}"}


def test_multiclass_and_regression_metrics() -> None:
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = MulticlassHead().metrics(np.array([0, 1, 2, 1]), MulticlassHead().scores(proba), None, ["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert (m["f1.a"], m["f1.b"], m["f1.c"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 1.0)
    assert m["log_loss"] == pytest.approx(-(3 * math.log(0.8) + math.log(0.3)) / 4)
    r = RegressionHead().metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0]), None, None)
    assert r == {"rmse": 1.0, "mae": 0.5, "r2": pytest.approx(1 - 4 / 5), "rows": 4.0}
    assert RegressionHead().labels([1, 2.5]).dtype == np.float64 and BinaryHead().labels([1.0, 0.0]).tolist() == [1, 0]


def test_parity_between_keras_outputs_and_pyfunc_structs() -> None:
    expected = np.array([[0.25], [0.75]])
    assert BinaryHead().parity(expected, [{"probability": 0.25}, {"probability": 0.75}]) == (0.0, True)
    diff, same = BinaryHead().parity(expected, [{"probability": 0.25}, {"probability": 0.7}])
    assert diff == pytest.approx(0.05) and not same
    assert BinaryHead().parity(expected, []) == (math.inf, False)
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    assert MulticlassHead().parity(probs, [{"prediction": 1, "probability": 0.8},
                                           {"prediction": 0, "probability": 0.9}]) == (0.0, True)
    assert not MulticlassHead().parity(probs, [{"prediction": 0, "probability": 0.8},
                                               {"prediction": 0, "probability": 0.9}])[1]
    big = np.array([[1e6]])  # float32 outputs: tolerance relative to the values
    assert RegressionHead().parity(big, [{"prediction": 1e6 + 1}]) == (1.0, True)
    assert not RegressionHead().parity(np.array([[1.0]]), [{"prediction": 1.001}])[1]


@pytest.mark.parametrize("head", ["binary", "multiclass"])
def test_a_classifying_head_plots_its_confusion_matrices(head: str, tmp_path: Path) -> None:
    """Both classifying heads draw their confusion matrices with the one plot; the binary one thresholds first."""
    from types import SimpleNamespace

    y = np.array([0, 1, 1, 0, 1])
    scores = np.array([0.2, 0.9, 0.4, 0.6, 0.8]) if head == "binary" else np.eye(3)[[0, 1, 2, 0, 1]]
    baseline = SimpleNamespace(kind="logreg", test_labels=y, test_scores=scores, threshold=0.5)
    get_head(head).plots(tmp_path, y, scores, 0.5, [baseline], ["a", "b", "c"], "horovod")
    made = sorted(p.name for p in tmp_path.iterdir())
    expected = {"binary": ["confusion_matrix_test.png", "confusion_matrix_test_baseline.png", "roc_curve_test.png"],
                "multiclass": ["confusion_matrix_test.png", "confusion_matrix_test_baseline.png"]}[head]
    assert made == expected
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in made)
