import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr

from kdpipe.learn.methods.cosine import CosineConfig, CosineHidden, cosine_hidden_loss, pool_to
from kdpipe.learn.methods.dist import DIST, DISTConfig, dist_terms
from kdpipe.learn.methods.dkd import DecoupledKD, DKDConfig, decoupled_kd_terms
from kdpipe.learn.methods.hint import HintConfig, HintRegressor, matched_maps
from kdpipe.learn.methods.kd import KDConfig, SoftTargetKD
from kdpipe.learn.methods.lskd import LSKDConfig, StandardizedKD, standardized
from kdpipe.learn.objective import FeatureShapes, Objective, TeacherOutputs, soft_target_loss


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
    student_equal = pool_to(teacher.flatten(1), 1024).view(4, 16, 8, 8) * 3.0  # same direction
    assert cosine_hidden_loss(student_equal, teacher).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(4, 16, 8, 8)
    reference = torch.nn.CosineEmbeddingLoss()(
        student.flatten(1), F.avg_pool1d(teacher.flatten(1), 2), torch.ones(4))
    assert cosine_hidden_loss(student, teacher).item() == pytest.approx(reference.item(), rel=1e-5)


def test_pooling_averages_neighbours_as_the_tutorial_for_its_pair():
    fmap = torch.arange(2048, dtype=torch.float32).view(1, 32, 8, 8)
    pooled = pool_to(fmap.flatten(1), 1024)
    assert pooled.shape == (1, 1024)
    assert pooled[0, :3].tolist() == [0.5, 2.5, 4.5]
    assert torch.equal(pooled, F.avg_pool1d(fmap.flatten(1), 2))  # the tutorial's, bit for bit
    uneven = pool_to(torch.arange(10, dtype=torch.float32).view(1, 10), 4)  # adaptive windows
    assert uneven.shape == (1, 4) and uneven[0, 0].item() == pytest.approx(1.0)


def test_cosine_pools_whichever_representation_is_longer():
    student, teacher = torch.randn(3, 512), torch.randn(3, 64, 2, 2)  # student longer: 512 > 256
    expected = (1 - F.cosine_similarity(pool_to(student, 256), teacher.flatten(1))).mean()
    assert cosine_hidden_loss(student, teacher).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("student_shape, teacher_shape, out", [
    ((16, 8, 8), (32, 8, 8), (32, 8, 8)),     # the tutorial's pair: no pooling
    ((24, 4, 4), (576, 1, 1), (576, 1, 1)),   # the student's larger map pooled to 1x1
    ((8, 2, 2), (64, 8, 8), (64, 2, 2)),      # the teacher's larger map pooled to the student's
])
def test_hint_maps_channels_and_matches_spatial_size(student_shape, teacher_shape, out):
    hint = HintRegressor(HintConfig(feature_weight=1.0, ce_weight=0.0),
                         FeatureShapes(student_shape, teacher_shape))
    features = torch.randn(2, *student_shape)
    mapped, target = matched_maps(hint.regressor(features), torch.randn(2, *teacher_shape))
    assert mapped.shape == target.shape == (2, *out)
    loss = hint(torch.randn(2, 10), features, torch.tensor([0, 1]),
                TeacherOutputs(None, torch.randn(2, *teacher_shape)))
    assert torch.isfinite(loss)


def test_hint_needs_feature_maps_and_says_which_layer():
    from kdpipe.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^teacher.feature_layer: hint needs a feature map"):
        HintRegressor(HintConfig(1.0, 0.0), FeatureShapes((16, 8, 8), (512,)))


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


def test_standardized_logits_are_z_scores_invariant_to_shift_and_scale():
    logits = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    z = standardized(logits)
    mean, std = 3.0, math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)  # unbiased
    assert z[0].tolist() == pytest.approx([(v - mean) / std for v in (1, 2, 3, 6)], rel=1e-6)
    teacher = torch.randn(16, 10)
    assert torch.allclose(standardized(teacher), standardized(3.5 * teacher - 7.0), atol=1e-5)


def test_lskd_is_kd_on_standardized_logits_and_ignores_the_teachers_scale():
    student, teacher, labels = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    lskd = StandardizedKD(LSKDConfig(temperature=2.0, soft_target_weight=0.9, ce_weight=0.1))
    expected = (0.9 * soft_target_loss(standardized(student), standardized(teacher), 2.0)
                + 0.1 * F.cross_entropy(student, labels))
    out = lskd(student, None, labels, TeacherOutputs(teacher))
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)
    rescaled = lskd(student, None, labels, TeacherOutputs(10 * teacher + 3))
    assert rescaled.item() == pytest.approx(out.item(), rel=1e-4)


def test_dkd_terms_match_a_hand_computed_example():
    # One sample, three classes, target 0, T = 1.
    student, teacher = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    p_s = [math.exp(v) / sum(math.exp(u) for u in (2, 1, 0)) for v in (2, 1, 0)]
    p_t = [math.exp(v) / sum(math.exp(u) for u in (1, 0, 1)) for v in (1, 0, 1)]
    b_s, b_t = [p_s[0], 1 - p_s[0]], [p_t[0], 1 - p_t[0]]
    tckd = sum(t * math.log(t / s) for t, s in zip(b_t, b_s))
    o_s = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]  # softmax of [1, 0]
    o_t = [1 / (1 + math.e), math.e / (1 + math.e)]                  # softmax of [0, 1]
    nckd = sum(t * math.log(t / s) for t, s in zip(o_t, o_s))
    got = decoupled_kd_terms(student, teacher, torch.tensor([0]), temperature=1.0)
    assert [g.item() for g in got] == pytest.approx([tckd, nckd], rel=1e-5)


def test_dkd_decomposes_kd_per_sample():
    """Eq. 7 of the DKD paper: KL(teacher || student) = TCKD + (1 - p_t) * NCKD, p_t being the
    teacher's probability of the true class, at the same temperature."""
    torch.manual_seed(1)
    for _ in range(5):
        student, teacher = torch.randn(1, 10) * 3, torch.randn(1, 10) * 3
        label, T = torch.randint(0, 10, (1,)), 2.0
        tckd, nckd = decoupled_kd_terms(student, teacher, label, T)
        p_t = torch.softmax(teacher / T, dim=-1)[0, label].item()
        kd = soft_target_loss(student, teacher, T)  # also scaled by T^2, as the terms
        assert kd.item() == pytest.approx((tckd + (1 - p_t) * nckd).item(), rel=1e-4)


def test_dkd_ramps_its_weight_linearly_over_the_warmup_steps():
    """2 warm-up epochs of 5 steps: weight step / 10 from the first step (1-based) to 1 at the
    warm-up's last step, then 1; no warm-up: 1 from the first step."""
    student, teacher, labels = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    tckd, nckd = decoupled_kd_terms(student, teacher, labels, 4.0)
    ce = F.cross_entropy(student, labels)

    def loss_at(step: int, warmup_epochs: int) -> float:
        dkd = DecoupledKD(DKDConfig(alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0,
                                    warmup_epochs=warmup_epochs))
        dkd.start_step(step, steps_per_epoch=5)
        return dkd(student, None, labels, TeacherOutputs(teacher)).item()

    for step, ramp in ((1, 0.1), (5, 0.5), (9, 0.9), (10, 1.0), (11, 1.0), (50, 1.0)):
        expected = ce + ramp * (tckd + 8.0 * nckd)
        assert loss_at(step, 2) == pytest.approx(expected.item(), rel=1e-6), step
    assert loss_at(1, 0) == pytest.approx((ce + tckd + 8.0 * nckd).item(), rel=1e-6)
    # A 1-epoch warm-up ramps too (per epoch, it gave the full weight from the first step).
    assert loss_at(1, 1) == pytest.approx((ce + 0.2 * (tckd + 8.0 * nckd)).item(), rel=1e-6)


def test_dkd_gives_no_gradient_to_the_masked_target_through_nckd():
    student = torch.randn(3, 10, requires_grad=True)
    labels = torch.tensor([1, 4, 7])
    _, nckd = decoupled_kd_terms(student, torch.randn(3, 10), labels, 4.0)
    nckd.backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[torch.arange(3), labels].abs().max() == 0


# A fixed example for DIST: 3 samples, 4 classes, T = 2.
DIST_STUDENT = [[2.0, 0.5, -1.0, 0.0], [0.0, 1.0, 3.0, -2.0], [1.0, 1.5, 0.5, 0.0]]
DIST_TEACHER = [[3.0, 0.0, -2.0, 1.0], [-1.0, 2.0, 2.5, -1.0], [0.5, 2.0, 0.0, 0.5]]


def softened(rows, temperature):
    z = np.asarray(rows, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_dist_terms_match_scipy_pearson_correlations():
    """Inter-class: 1 - mean over samples of pearson(student row, teacher row); intra-class:
    1 - mean over classes of pearson(student column, teacher column); both times T^2."""
    p_s, p_t = softened(DIST_STUDENT, 2.0), softened(DIST_TEACHER, 2.0)
    inter = 1 - np.mean([pearsonr(p_s[i], p_t[i])[0] for i in range(3)])
    intra = 1 - np.mean([pearsonr(p_s[:, c], p_t[:, c])[0] for c in range(4)])
    got = dist_terms(torch.tensor(DIST_STUDENT), torch.tensor(DIST_TEACHER), temperature=2.0)
    assert [g.item() for g in got] == pytest.approx([4 * inter, 4 * intra], rel=1e-5)
    assert 0 < inter < 1 and 0 < intra < 2  # neither term is trivially 0 in this example


def test_dist_is_zero_when_the_student_matches_the_teacher():
    logits = torch.randn(16, 10) * 3
    for term in dist_terms(logits, logits.clone(), 4.0):
        assert term.item() == pytest.approx(0.0, abs=1e-5)


def test_dist_combines_its_terms_and_cross_entropy_as_configured():
    student, teacher, labels = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    dist = DIST(DISTConfig(beta=2.0, gamma=3.0, temperature=4.0, ce_weight=0.5))
    inter, intra = dist_terms(student, teacher, 4.0)
    expected = 2.0 * inter + 3.0 * intra + 0.5 * F.cross_entropy(student, labels)
    out = dist(student, None, labels, TeacherOutputs(teacher))
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)
    assert DIST.needs == ("logits",)


def test_dkd_weights_tckd_by_alpha_and_nckd_by_beta():
    student, teacher, labels = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    tckd, nckd = decoupled_kd_terms(student, teacher, labels, 4.0)
    dkd = DecoupledKD(DKDConfig(alpha=0.5, beta=3.0, temperature=4.0, ce_weight=0.0))
    assert dkd(student, None, labels, TeacherOutputs(teacher)).item() == pytest.approx(
        (0.5 * tckd + 3.0 * nckd).item(), rel=1e-6)
