"""params `precision`: auto resolves from the hardware (never from a timing), bf16 autocasts only
the forward passes (every loss runs in fp32), and within one precision and one machine a rerun
is bit-identical and a zero-weight method still trains the baseline student bit for bit."""
import pytest
import torch

from kdpipe.core import runtime
from kdpipe.core.config import TrainConfig
from kdpipe.core.runtime import Runtime, resolve_precision
from kdpipe.learn.loop import fit
from kdpipe.learn.methods.kd import KDConfig, SoftTargetKD
from kdpipe.learn.models import DeepNN, Tapped
from kdpipe.learn.objective import Objective, TeacherOutputs
from kdpipe.learn.teacher_targets import CachedTargets, compute_targets, save_targets
from kdpipe.learn.training import seeded_student
from kdpipe.measure import inference
from tests.conftest import weights

CPU = torch.device("cpu")
RUNTIMES = {"fp32": Runtime(CPU, None, False), "bf16": Runtime(CPU, torch.bfloat16, False)}
TWO_EPOCHS = TrainConfig(2, 1e-3, 32)


@pytest.mark.parametrize("flags, precision, expected", [
    ({"avx2", "amx_bf16", "amx_tile"}, "auto", torch.bfloat16),  # AMX: bf16 in hardware
    ({"avx2", "avx512f", "avx512_bf16"}, "auto", torch.bfloat16),  # AVX-512 BF16, no AMX
    ({"avx2"}, "auto", None),
    ({"avx2", "amx_bf16"}, "fp32", None),
    ({"avx2"}, "bf16", torch.bfloat16),  # asked for: emulated, and said so
])
def test_precision_resolves_from_the_cpu_flags(monkeypatch, capsys, flags, precision, expected):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    assert resolve_precision(precision, CPU) is expected
    emulated = "emulated, slower than fp32" in capsys.readouterr().out
    assert emulated == (precision == "bf16" and not flags & {"amx_bf16", "avx512_bf16"})


@pytest.mark.parametrize("flags, rule", [
    ({"avx2", "amx_bf16", "avx512_bf16"}, "CPU flag amx_bf16"),
    ({"avx512f", "avx512_bf16"}, "CPU flag avx512_bf16"),
    ({"avx2", "avx512f"}, None),
])
def test_the_bf16_rule_names_the_flag_that_decided(monkeypatch, flags, rule):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    assert runtime.bf16_rule(CPU) == rule


def test_cpu_flags_are_read_from_the_machine():
    flags = runtime.cpu_flags()
    assert not flags or "fpu" in flags or "fp" in flags  # x86 or Arm: a real flags line


class RecordsDtypes(Objective):
    """Cross-entropy that records the dtypes it was given and computed in."""

    def __init__(self):
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def forward(self, logits, features, labels, teacher):
        loss = super().forward(logits, features, labels, teacher)
        self.seen |= {logits.dtype, features.dtype, loss.dtype}
        return loss


def test_bf16_autocasts_the_forward_pass_and_every_loss_runs_in_fp32(tiny_data):
    model = seeded_student("LightNN", 0, 10)
    objective = RecordsDtypes()
    fit(model, objective, tiny_data, TrainConfig(1, 1e-3, 100), RUNTIMES["bf16"], seed=0)
    assert objective.seen == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the forward pass itself gives
        assert model(tiny_data.normalize(tiny_data.train_x[:2])).dtype == torch.bfloat16


def test_a_bf16_rerun_on_this_machine_gives_the_same_weights(tiny_data):
    runs = []
    for _ in range(2):
        model = seeded_student("LightNN", 3, 10)  # seeds weights and dropout
        fit(model, Objective(), tiny_data, TWO_EPOCHS, RUNTIMES["bf16"], seed=3)
        runs.append(weights(model))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero_weight_kd_trains_the_baseline_bit_for_bit(tiny_data, tmp_path, precision):
    """Through the teacher cache computed in that precision, as the pipeline's stages do."""
    run = RUNTIMES[precision]
    torch.manual_seed(1)
    teacher = Tapped(DeepNN(), "features").eval()
    logits = compute_targets(teacher, tiny_data.train_x, tiny_data.normalize, run.autocast).logits
    assert logits.dtype == torch.float32  # the cache stays fp32 whatever the pass ran in
    save_targets(tmp_path, {"data_sha256": "d", "teacher_run_id": "t"}, logits)
    cached = CachedTargets(tmp_path, ("logits",), CPU, {"data_sha256": "d", "teacher_run_id": "t"})
    baseline = seeded_student("LightNN", 5, 10)  # seeds weights and dropout, as a stage does
    base = fit(baseline, Objective(), tiny_data, TWO_EPOCHS, run, seed=5)
    kd = seeded_student("LightNN", 5, 10)
    zero = KDConfig(temperature=2.0, soft_target_weight=0.0, ce_weight=1.0)
    distilled = fit(kd, SoftTargetKD(zero), tiny_data, TWO_EPOCHS, run, seed=5, teacher=cached)
    assert torch.equal(weights(baseline), weights(kd))
    assert base.test_acc == distilled.test_acc


def test_a_live_teacher_and_its_cache_agree_in_bf16(tiny_data):
    from kdpipe.learn.teacher_targets import LiveTeacher

    run = RUNTIMES["bf16"]
    torch.manual_seed(2)
    teacher = Tapped(DeepNN(), "features").eval()
    logits = compute_targets(teacher, tiny_data.train_x[:50], tiny_data.normalize,
                             run.autocast, batch=50).logits
    idx = torch.arange(50)
    live = LiveTeacher(teacher, run.autocast)(idx, tiny_data.normalize(tiny_data.train_x[idx]))
    assert isinstance(live, TeacherOutputs) and torch.equal(live.logits, logits)


def test_inference_cost_reports_bf16_only_where_the_stage_runs_in_it(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x" * 1024)
    model = seeded_student("LightNN", 0, 10).model
    assert set(inference.inference_cost(model, path, CPU)) == {
        "size_mb", "inference_ms_batch1", "inference_images_per_second"}
    cost = inference.inference_cost(model, path, CPU, bf16=True)
    assert cost["inference_images_per_second_bf16"] > 0 and cost["inference_ms_batch1_bf16"] > 0
