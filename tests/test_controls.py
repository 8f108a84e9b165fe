"""The controls that tell distillation from regularisation: label smoothing, teacher-free KD and
the shuffled teacher, and the sweep counting them among the baselines."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdpipe.analysis.settings import trained_models
from kdpipe.analysis.sweep import analyse
from kdpipe.core.config import Config
from kdpipe.core.errors import ConfigError
from kdpipe.core.schema import build
from kdpipe.learn.methods import registry
from kdpipe.learn.methods.tfkd import TeacherFreeKD, TfKDConfig, virtual_teacher
from kdpipe.learn.objective import Objective, TeacherOutputs
from kdpipe.learn.shuffled_teacher import ShuffledTeacher, shuffle_non_target
from tests.project import ROOT


def batch(seed=0, rows=16, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, classes, generator=g), torch.randint(0, classes, (rows,), generator=g)


def test_label_smoothing_zero_is_plain_cross_entropy_bit_for_bit():
    logits, labels = batch()
    plain = Objective()
    assert plain.label_smoothing == 0.0
    assert torch.equal(plain(logits, None, labels, TeacherOutputs()),
                       F.cross_entropy(logits, labels))


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
    logits, labels = batch()
    objective = Objective()
    objective.label_smoothing = 0.1
    target = torch.full_like(logits, 0.1 / 10)
    target[torch.arange(len(labels)), labels] += 0.9
    expected = -(target * logits.log_softmax(1)).sum(1).mean()
    assert objective(logits, None, labels, TeacherOutputs()).item() == pytest.approx(
        expected.item(), rel=1e-6)


def test_teacher_free_targets_match_hand_computed_values():
    target = virtual_teacher(torch.tensor([2]), 10, correct_prob=0.99, temperature=20.0)[0]
    right, other = math.exp(0.99 / 20), math.exp(0.01 / 9 / 20)
    assert target[2].item() == pytest.approx(right / (right + 9 * other), rel=1e-6)
    assert target[0].item() == pytest.approx(other / (right + 9 * other), rel=1e-6)
    assert target.sum().item() == pytest.approx(1.0)


def test_teacher_free_kd_is_the_authors_loss():
    """(1 - alpha) CE + alpha * multiplier * nn.KLDivLoss()(log_softmax(z), target), whose
    default "mean" averages over batch and classes."""
    logits, labels = batch(1)
    objective = TeacherFreeKD(TfKDConfig(correct_prob=0.99, temperature=20.0, reg_weight=10.0,
                                         ce_weight=0.9))
    target = virtual_teacher(labels, 10, 0.99, 20.0)
    kl = F.kl_div(logits.log_softmax(1), target, reduction="sum") / target.numel()
    expected = 0.9 * F.cross_entropy(logits, labels) + 10.0 * kl
    assert objective(logits, None, labels, TeacherOutputs()).item() == pytest.approx(
        expected.item(), rel=1e-5)
    assert objective.needs == () and registry.method("tfkd").control


def test_the_shuffled_teacher_keeps_each_rows_target_and_its_other_values():
    logits, labels = batch(2, rows=200)
    shuffled = shuffle_non_target(logits, labels, torch.Generator().manual_seed(0))
    rows = torch.arange(len(labels))
    assert torch.equal(shuffled[rows, labels], logits[rows, labels])
    for i in range(len(labels)):
        others = [c for c in range(10) if c != labels[i]]
        assert torch.equal(shuffled[i, others].sort().values, logits[i, others].sort().values)
    # the same confidence and entropy at any temperature
    for t in (1.0, 4.0):
        p, q = (logits / t).softmax(1), (shuffled / t).softmax(1)
        assert torch.allclose((p * p.log()).sum(1), (q * q.log()).sum(1), atol=1e-6)
    changed = (shuffled != logits).any(1).float().mean().item()
    assert changed > 0.95  # 1 in 9! rows keeps its order by chance
    again = shuffle_non_target(logits, labels, torch.Generator().manual_seed(0))
    assert torch.equal(again, shuffled)


def test_the_shuffled_teacher_maps_each_cached_view_to_its_images_label():
    class Cached:
        tensors = {"logits": torch.randn(6, 10)}  # 3 images x 2 views

    labels = torch.tensor([4, 7, 1])
    source = ShuffledTeacher(Cached(), labels, views=2, seed=3)
    rows = torch.arange(6)
    kept = Cached.tensors["logits"][rows, labels.repeat_interleave(2)]
    assert torch.equal(source(rows, None).logits[rows, labels.repeat_interleave(2)], kept)


def config(**distill) -> Config:
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, section in distill.items():
        if name == "augment":
            raw["data"]["augment"] = section
        else:
            raw["distill"][name] = {**raw["distill"][name], **section}
    return build(Config, raw, "")


def test_a_shuffled_teacher_is_refused_where_it_cannot_apply():
    assert registry.teacher(config(dist={"teacher": "shuffled"}), "dist") == "shuffled"
    assert registry.is_control(config(dist={"teacher": "shuffled"}), "dist")
    assert not registry.is_control(config(), "dist")
    with pytest.raises(ConfigError, match="distill.hint.teacher=shuffled.*features"):
        registry.teacher(config(hint={"teacher": "shuffled"}), "hint")
    with pytest.raises(ConfigError, match="distill.kd.teacher=.*data.augment"):
        registry.teacher(config(kd={"teacher": "shuffled"}, augment=True), "kd")
    with pytest.raises(ConfigError, match="distill.kd.teacher='random': expected one of"):
        registry.teacher(config(kd={"teacher": "random"}), "kd")


def test_controls_are_baselines_in_the_sweep():
    """Label smoothing is a student recipe, tfkd a control: the best baseline is the best of
    them on validation, and the distilled setting's gain is measured against it."""
    seeds = ("1", "2", "3")

    def row(val, control=False):
        return {"val_acc_per_seed": dict(zip(seeds, val)), "test_acc_per_seed":
                dict(zip(seeds, val)), "control": control}

    common = {"seed": 42, "data.source": "x"}
    found = [("plain", {**common, "student.label_smoothing": 0.0, "distill.kd.temperature": 4},
              {"student": row([60, 61, 62]), "kd": row([63, 64, 65]),
               "tfkd": row([62, 63, 64], control=True)}),
             ("ls", {**common, "student.label_smoothing": 0.1, "distill.kd.temperature": 4},
              {"student": row([61, 62, 63])})]
    result = analyse(trained_models(found))
    assert {(b.model, b.control) for b in result["baselines"]} == {
        ("student", False), ("tfkd", True)}
    assert result["best_baseline"].model == "tfkd"
    [kd] = result["rows"]
    assert kd["val_vs_best"]["mean"] == pytest.approx(1.0)
    assert kd["val_vs_same"]["mean"] == pytest.approx(3.0)  # the plain student of its recipe


def test_controls_run_as_stages_and_are_marked_in_the_comparison(built, tmp_path):
    from tests.project import clone, read_json, sh

    repo = clone(built, tmp_path / "repo")
    sh(["dvc", "exp", "run", "-S", "distill.methods=[tfkd,dist]", "-S",
        "distill.dist.teacher=shuffled", "-S", "student.label_smoothing=0.1"], repo)
    models = read_json(repo / "metrics" / "models.json")
    assert (models["tfkd"]["control"], models["dist"]["control"]) == (True, True)
    assert not models["student"]["control"]
    assert "shuffled teacher" in models["dist"]["description"]
    record = read_json(repo / "metrics" / "seeds" / "dist-42.json")
    assert record["control"] and "mlflow_run_id" in record
    assert read_json(repo / "reports" / "params.json")["distill"]["dist"]["teacher"] == \
        "shuffled"
