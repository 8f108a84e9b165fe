import math

import pytest
import torch

from kdpipe.core.config import TrainConfig
from kdpipe.core.errors import DivergedError
from kdpipe.learn.checkpoint import Checkpoint
from kdpipe.learn.loop import fit
from kdpipe.learn.methods.dkd import DecoupledKD, DKDConfig
from kdpipe.learn.methods.hint import HintConfig, HintRegressor
from kdpipe.learn.methods.kd import KDConfig, SoftTargetKD
from kdpipe.learn.models import DeepNN, LightNN, Tapped
from kdpipe.learn.objective import Objective
from kdpipe.learn.teacher_targets import CachedTargets, LiveTeacher, compute_targets, save_targets
from kdpipe.learn.training import seeded_student
from tests.conftest import weights

TWO_EPOCHS = TrainConfig(epochs=2, lr=1e-3, batch_size=32)
META = {"data_sha256": "d", "teacher_run_id": "t", "teacher_layer": "features"}  # its inputs


def tapped(model: torch.nn.Module) -> Tapped:
    return Tapped(model, "features")


def test_training_lowers_the_loss_and_beats_chance(tiny_data, cpu):
    model = seeded_student("LightNN", 0, 10)
    result = fit(model, Objective(), tiny_data, TrainConfig(5, 1e-3, 32), cpu, seed=0)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["test_acc"] > 20  # chance is 10%
    assert result.images_seen == 5 * 200


def test_same_seed_same_weights_and_metrics(tiny_data, cpu):
    runs = [fit(m := seeded_student("LightNN", 7, 10), Objective(), tiny_data, TWO_EPOCHS, cpu,
                seed=7) and weights(m) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def hint_objective() -> HintRegressor:
    torch.manual_seed(5)  # the regressor starts the same in every run
    return HintRegressor(HintConfig(feature_weight=0.5, ce_weight=0.5))


def live_teacher(cpu) -> LiveTeacher:
    torch.manual_seed(6)
    return LiveTeacher(tapped(DeepNN()), cpu.autocast)


def objective_for(case: str) -> Objective:
    if case.startswith("hint"):
        return hint_objective()
    if case.startswith("dkd"):  # resumed in the middle of its 2-epoch warm-up
        return DecoupledKD(DKDConfig(alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0,
                                     warmup_epochs=2))
    return Objective()


@pytest.mark.parametrize("case", ["student", "student, cosine schedule",
                                  "hint, live teacher, augmented", "dkd warm-up, live teacher"])
def test_resume_from_checkpoint_matches_an_uninterrupted_run(tiny_data, cpu, tmp_path, case):
    """Model, optimizer, learning-rate schedule, the hint regressor, DKD's warm-up and every RNG
    (batch order, dropout, augmentation) continue where the interrupted run stopped."""
    distill = not case.startswith("student")
    schedule = {"schedule": "cosine", "warmup_epochs": 1} if "cosine" in case else {}

    def run(epochs: int, stop_after: int, checkpoint=None):
        objective = objective_for(case)
        teacher = live_teacher(cpu) if distill else None
        model = seeded_student("LightNN", 1, 10)
        cfg = TrainConfig(epochs, 1e-3, 32, **schedule)
        result = fit(model, objective, tiny_data, cfg, cpu, seed=1, teacher=teacher,
                     augment_batches="augmented" in case, checkpoint=checkpoint,
                     on_epoch=lambda r: stop(r["epoch"] == stop_after))
        return model, objective, result

    def stop(now: bool):
        if now:
            raise KeyboardInterrupt

    straight, straight_objective, _ = run(3, stop_after=0)
    checkpoint = Checkpoint("run", key="k", folder=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(3, stop_after=2, checkpoint=checkpoint)  # killed during its second epoch's end
    assert [r["epoch"] for r in checkpoint.load()["history"]] == [1]
    resumed, resumed_objective, result = run(3, stop_after=0, checkpoint=checkpoint)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert torch.equal(weights(resumed), weights(straight))
    if case.startswith("hint"):  # the regressor: the only objective with weights
        assert torch.equal(weights(resumed_objective), weights(straight_objective))


def test_objectives_see_the_global_step_also_after_a_resume(tiny_data, cpu, tmp_path):
    """200 images in batches of 32: 7 steps an epoch. A run killed at the end of its second
    epoch (before that epoch's checkpoint) resumes after the first, at global step 8."""
    class Recording(Objective):
        def start_step(self, step, steps_per_epoch):
            seen.append((step, steps_per_epoch))

    def stop_at_second(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    seen, cfg = [], TrainConfig(3, 1e-3, 32)
    checkpoint = Checkpoint("run", key="k", folder=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        fit(seeded_student("LightNN", 0, 10), Recording(), tiny_data, cfg, cpu, seed=0,
            checkpoint=checkpoint, on_epoch=stop_at_second)
    assert seen == [(step, 7) for step in range(1, 15)]
    seen.clear()
    fit(seeded_student("LightNN", 0, 10), Recording(), tiny_data, cfg, cpu, seed=0,
        checkpoint=checkpoint)
    assert seen == [(step, 7) for step in range(8, 22)]


def test_a_checkpoint_holds_only_cpu_tensors(tmp_path):
    from kdpipe.learn.checkpoint import on_cpu, safe_load

    model = LightNN()
    state = on_cpu({"model": model.state_dict(), "nested": [torch.ones(2)]})
    assert state["model"]._metadata == model.state_dict()._metadata
    Checkpoint("c", key="k", folder=tmp_path).save(state)
    loaded = safe_load(tmp_path / "c.pt")
    assert all(t.device.type == "cpu" for t in loaded["model"].values())


def test_learning_rate_schedules():
    from kdpipe.learn.state import lr_schedule

    def rates(schedule: str, warmup: int) -> list[float]:
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = lr_schedule(optimizer, TrainConfig(4, 0.1, 32, schedule, warmup), 5)
        if scheduler is None:
            return []
        seen = []
        for _ in range(20):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    assert rates("constant", 0) == []  # the tutorial's Adam, untouched
    assert rates("constant", 1)[:6] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])
    cosine = rates("cosine", 1)
    assert cosine[4] == pytest.approx(0.1)                   # warm-up done: the peak
    assert cosine[5 + 15 // 2] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert all(a >= b for a, b in zip(cosine[4:], cosine[5:])) and cosine[-1] < 0.002


def test_checkpoint_with_another_key_is_ignored(tmp_path):
    Checkpoint("teacher", key="old", folder=tmp_path).save({"history": []})
    assert Checkpoint("teacher", key="new", folder=tmp_path).load() is None
    assert Checkpoint("teacher", key="old", folder=tmp_path).load() is not None


def test_divergence_stops_with_epoch_step_and_a_hint(tiny_data, cpu):
    class Exploding(Objective):
        def extra(self, logits, features, teacher, labels):
            return logits.sum() * float("inf")

    with pytest.raises(DivergedError, match=r"epoch 1, step 1\. Try a lower learning rate"):
        fit(seeded_student("LightNN", 0, 10), Exploding(), tiny_data, TWO_EPOCHS, cpu, seed=0)


def test_teacher_gets_no_gradient_and_stays_unchanged(tiny_data, cpu):
    teacher = tapped(DeepNN())
    before = weights(teacher).clone()
    objective = SoftTargetKD(KDConfig(temperature=2.0, soft_target_weight=0.5, ce_weight=0.5))
    fit(tapped(LightNN()), objective, tiny_data, TrainConfig(1, 1e-3, 64), cpu, seed=0,
        teacher=LiveTeacher(teacher, cpu.autocast))
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert torch.equal(weights(teacher), before)
    assert not teacher.training


@pytest.mark.parametrize("method", ["kd", "cosine", "hint", "dkd", "lskd", "dist"])
def test_cached_targets_give_the_same_loss_as_a_live_teacher(tiny_data, cpu, tmp_path, method):
    from kdpipe.core.config import load_config
    from kdpipe.learn.methods import registry
    from tests.conftest import ROOT

    torch.manual_seed(0)
    teacher = tapped(DeepNN()).eval()
    logits, features, _ = compute_targets(teacher, tiny_data.train_x, tiny_data.normalize,
                                          cpu.autocast)
    save_targets(tmp_path / "targets", META, logits, features)
    objective = registry.objective(load_config(ROOT / "params.yaml"), method)
    cached = CachedTargets(tmp_path / "targets", objective.needs, cpu.device, META)
    live = LiveTeacher(teacher, cpu.autocast)
    idx = torch.tensor([5, 17, 3, 190, 42])
    x, y = tiny_data.normalize(tiny_data.train_x[idx]), tiny_data.train_y[idx]
    s_logits, s_features = tapped(LightNN()).forward_with_features(x)
    loss_cached = objective(s_logits, s_features, y, cached(idx, x))
    loss_live = objective(s_logits, s_features, y, live(idx, x))
    assert loss_cached.item() == pytest.approx(loss_live.item(), rel=1e-4)


def test_targets_of_other_data_or_another_teacher_are_refused(tmp_path):
    from kdpipe.core.errors import DataError

    save_targets(tmp_path / "t", META, torch.zeros(2, 10), torch.zeros(2, 32, 8, 8))
    cpu = torch.device("cpu")
    with pytest.raises(DataError, match="other data than data/prepared"):
        CachedTargets(tmp_path / "t", ("logits",), cpu, META | {"data_sha256": "other"})
    with pytest.raises(DataError, match="another teacher .teacher_run_id t, expected u"):
        CachedTargets(tmp_path / "t", ("logits",), cpu, META | {"teacher_run_id": "u"})
    with pytest.raises(DataError, match="another teacher.feature_layer .teacher_layer features, "
                                        "expected conv"):
        CachedTargets(tmp_path / "t", ("features",), cpu, META | {"teacher_layer": "conv"})
    with pytest.raises(DataError, match="another data.views .views 0, expected 4"):
        CachedTargets(tmp_path / "t", ("logits",), cpu, META | {"views": 4})
    # logits do not depend on the tap: a logit-only method accepts any layer
    assert CachedTargets(tmp_path / "t", ("logits",), cpu, META | {"teacher_layer": "conv"}
                         ).tensors["logits"].shape == (2, 10)


def test_augmentation_switches_distillation_to_the_live_teacher(tiny_data, cpu, tmp_path):
    from kdpipe.learn.teacher_targets import teacher_source

    teacher = tapped(DeepNN())
    save_targets(tmp_path / "t", META, torch.zeros(200, 10), torch.zeros(200, 32, 8, 8))
    args = {"teacher": teacher, "teacher_saved": {"mlflow_run_id": "t"},
            "autocast": cpu.autocast, "folder": tmp_path / "t", "needs": ("logits",),
            "device": cpu.device, "data_sha256": "d", "views": 0}
    assert isinstance(teacher_source(augment=False, **args), CachedTargets)
    live = teacher_source(augment=True, **args)
    assert isinstance(live, LiveTeacher)
    # Live outputs follow the (augmented) batch; cached ones follow only the sample index.
    idx = torch.arange(4)
    x = tiny_data.normalize(tiny_data.train_x[idx])
    assert torch.equal(live(idx, x).logits, teacher.eval()(x))
    assert not torch.equal(live(idx, x.flip(3)).logits, live(idx, x).logits)


def test_distillation_with_augmentation_trains(tiny_data, cpu):
    teacher = tapped(DeepNN())
    objective = SoftTargetKD(KDConfig(temperature=4.0, soft_target_weight=0.5, ce_weight=0.5))
    result = fit(seeded_student("LightNN", 0, 10), objective, tiny_data, TWO_EPOCHS, cpu, seed=0,
                 teacher=LiveTeacher(teacher, cpu.autocast), augment_batches=True)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)


def test_with_a_validation_split_curves_use_it_and_test_is_seen_once(tiny_data, cpu):
    from dataclasses import replace

    data = replace(tiny_data, train_x=tiny_data.train_x[:150], train_y=tiny_data.train_y[:150],
                   val_x=tiny_data.train_x[150:], val_y=tiny_data.train_y[150:])
    result = fit(seeded_student("LightNN", 0, 10), Objective(), data, TWO_EPOCHS, cpu, seed=0)
    assert all("val_acc" in r and "test_acc" not in r for r in result.history)
    assert 0 <= result.test_acc <= 100
    plain = fit(seeded_student("LightNN", 0, 10), Objective(), tiny_data, TWO_EPOCHS, cpu, seed=0)
    assert plain.test_acc == plain.history[-1]["test_acc"]
