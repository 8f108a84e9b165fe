import math

import pytest
import torch
import torch.nn.functional as F

from kdpipe.config import CosineConfig, HintConfig, KDConfig
from kdpipe.losses import (
    CosineHidden,
    HintRegressor,
    Objective,
    SoftTargetKD,
    TeacherOutputs,
    cosine_hidden_loss,
    pooled_hidden,
    soft_target_loss,
)


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(8, 10)
    assert soft_target_loss(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_matches_a_hand_computed_value():
    # One sample, two classes, T = 2: p = softmax(s/2), q = softmax(t/2), KL(q||p) * T^2.
    student, teacher = torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, 0.0]])
    q = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax([1, 0])
    p = [1 / (1 + math.e), math.e / (1 + math.e)]  # softmax([0, 1])
    expected = 4 * sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))
    assert soft_target_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_equals_the_tutorials_formula():
    s, t, T = torch.randn(16, 10), torch.randn(16, 10), 2.0
    soft_targets = F.softmax(t / T, dim=-1)
    soft_prob = F.log_softmax(s / T, dim=-1)
    tutorial = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / s.shape[0] * T**2
    assert soft_target_loss(s, t, T).item() == pytest.approx(tutorial.item(), rel=1e-5)


def test_cosine_loss_is_zero_for_parallel_vectors_and_matches_torch():
    teacher = torch.rand(4, 32, 8, 8)
    student_equal = pooled_hidden(teacher).view(4, 16, 8, 8) * 3.0  # same direction
    assert cosine_hidden_loss(student_equal, teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(4, 16, 8, 8)
    reference = torch.nn.CosineEmbeddingLoss()(
        student.flatten(1), F.avg_pool1d(teacher.flatten(1), 2), torch.ones(4))
    assert cosine_hidden_loss(student, teacher).item() == pytest.approx(reference.item(), rel=1e-5)


def test_pooled_hidden_averages_neighbouring_pairs():
    fmap = torch.arange(2048, dtype=torch.float32).view(1, 32, 8, 8)
    pooled = pooled_hidden(fmap)
    assert pooled.shape == (1, 1024)
    assert pooled[0, :3].tolist() == [0.5, 2.5, 4.5]


def test_objectives_combine_weights_as_configured():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    features, t_fmap = torch.randn(8, 16, 8, 8), torch.rand(8, 32, 8, 8)
    teacher = TeacherOutputs(torch.randn(8, 10), t_fmap)
    ce = F.cross_entropy(logits, labels)
    assert Objective()(logits, features, labels, teacher).item() == pytest.approx(ce.item())

    kd = SoftTargetKD(KDConfig(temperature=2.0, soft_target_weight=0.25, ce_weight=0.75))
    expected = 0.25 * soft_target_loss(logits, teacher.logits, 2.0) + 0.75 * ce
    assert kd(logits, features, labels, teacher).item() == pytest.approx(expected.item())

    cos = CosineHidden(CosineConfig(hidden_weight=0.5, ce_weight=1.0))
    expected = 0.5 * cosine_hidden_loss(features, t_fmap) + ce
    assert cos(logits, features, labels, teacher).item() == pytest.approx(expected.item())

    hint = HintRegressor(HintConfig(feature_weight=0.25, ce_weight=0.75))
    expected = 0.25 * F.mse_loss(hint.regressor(features), t_fmap) + 0.75 * ce
    assert hint(logits, features, labels, teacher).item() == pytest.approx(expected.item())


def test_hint_regressor_is_trainable_and_maps_16_to_32_channels():
    hint = HintRegressor(HintConfig(feature_weight=1.0, ce_weight=0.0))
    assert hint.regressor(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    assert sum(p.numel() for p in hint.parameters()) == 16 * 32 * 9 + 32
