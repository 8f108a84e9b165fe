"""Fidelity metrics against values computed by hand."""
import math

import pytest
import torch

from kdpipe.measure.fidelity import agreement, expected_calibration_error, kl_to_teacher, to_teacher


def logits_of(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).log()


def test_agreement_counts_equal_top1_predictions():
    student = logits_of([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1], [0.2, 0.8]])
    teacher = logits_of([[0.6, 0.4], [0.8, 0.2], [0.5, 0.5 - 1e-9], [0.1, 0.9]])
    assert agreement(student, teacher) == 75.0


def test_kl_is_teacher_to_model_at_temperature_one():
    student = logits_of([[0.5, 0.5], [0.9, 0.1]])
    teacher = logits_of([[0.8, 0.2], [0.9, 0.1]])
    first = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # 0.1927 nats; second is 0
    assert kl_to_teacher(student, teacher) == pytest.approx(first / 2, rel=1e-9)
    assert kl_to_teacher(teacher, teacher) == pytest.approx(0.0, abs=1e-12)
    assert to_teacher(student, teacher) == {"agreement": 100.0,  # ties go to the first class
                                            "kl_to_teacher": pytest.approx(first / 2)}


def test_expected_calibration_error_in_15_bins():
    """Confidences 0.9 (right), 0.58 (wrong), 0.55 (right), 0.82 (right). 15 bins of 1/15:
    0.55 and 0.58 share (0.533, 0.6]: accuracy 0.5, confidence 0.565; the others are alone.
    ECE = (0.1 + 2 x 0.065 + 0.18) / 4 = 0.1025."""
    logits = logits_of([[0.9, 0.1], [0.58, 0.42], [0.55, 0.45], [0.18, 0.82]])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx(10.25, abs=1e-9)
    sure_and_right = logits_of([[1.0 - 1e-12, 1e-12]] * 3)
    assert expected_calibration_error(sure_and_right, torch.zeros(3, dtype=torch.long)) == \
        pytest.approx(0.0, abs=1e-9)
