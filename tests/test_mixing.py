"""data.mix: mixed views (mixup, CutMix), each a pure function of (seed, image, view), the same
in the teacher's cache and in every training stage, with mixed hard labels; function matching
and gradient clipping."""
import pytest
import torch

from kdpipe.core.config import DataConfig, TrainConfig
from kdpipe.data.mixing import Mixing
from kdpipe.data.prepared import crop_flip
from kdpipe.data.views import Views
from kdpipe.learn.loop import fit
from kdpipe.learn.methods.fm import FMConfig, FunctionMatching
from kdpipe.learn.methods.kd import KDConfig, SoftTargetKD
from kdpipe.learn.objective import Objective
from kdpipe.learn.training import seeded_student
from tests.conftest import weights
from tests.test_views import CPU, Recorder, cached_views, zero_weight_kd_is_the_baseline

TWO_EPOCHS = TrainConfig(2, 1e-3, 50)


def mixing(mode: str, alpha: float = 1.0) -> dict:
    """What check_params writes to data/mixing.json for these params."""
    return DataConfig("synthetic", 0, 0, views=4, mix=mode, mix_alpha=alpha).mixing()


def mixed(mode: str, seed: int = 42, images: int = 200, views: int = 4, alpha: float = 1.0):
    return Views.from_params(seed, images, views, CPU, mixing(mode, alpha), 32)


def test_the_stages_read_the_mixing_weight_only_with_a_mixing_mode():
    assert mixing("none", 0.5) == mixing("none", 1.0) == {"data.mix": "none"}
    assert mixing("cutmix", 0.5) == {"data.mix": "cutmix", "data.mix_alpha": 0.5}
    assert Views.from_params(42, 20, 4, CPU, mixing("none", 0.5)).mixing is None


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_a_mixed_view_is_a_pure_function_of_seed_image_and_view(mode):
    views = mixed(mode)
    again, other = mixed(mode), mixed(mode, seed=43)
    for field in ("partner", "partner_view", "lam"):
        assert torch.equal(getattr(views.mixing, field), getattr(again.mixing, field))
        assert not torch.equal(getattr(views.mixing, field), getattr(other.mixing, field))
    assert torch.equal(mixed(mode, images=50).mixing.lam, views.mixing.lam[:50])
    assert (views.mixing.partner != torch.arange(200)[:, None]).all()  # never the image itself
    assert ((views.mixing.lam >= 0) & (views.mixing.lam <= 1)).all()
    assert torch.equal(views.params, Views.make(42, 200, 4, CPU).params)  # the same crops


def test_mixup_is_the_blend_its_params_name(tiny_data):
    views, keys = mixed("mixup"), torch.tensor([0, 7, 401, 799])
    image, view = keys // 4, keys % 4
    m = views.mixing
    own = crop_flip(tiny_data.normalize(tiny_data.train_x[image]),
                    *views.params[image, view].unbind(-1))
    partner = crop_flip(tiny_data.normalize(tiny_data.train_x[m.partner[image, view]]),
                        *m.partner_view[image, view].unbind(-1))
    lam = m.lam[image, view][:, None, None, None]
    expected = lam * own + (1 - lam) * partner
    assert torch.allclose(views.render(tiny_data.train_x, tiny_data.normalize, keys), expected,
                          atol=1e-6)


def test_cutmix_pastes_the_partners_box_and_weighs_by_the_pixels_kept(tiny_data):
    views, keys = mixed("cutmix"), torch.arange(0, 800, 37)
    image, view = keys // 4, keys % 4
    m = views.mixing
    x = views.render(tiny_data.train_x, tiny_data.normalize, keys)
    own = views.apply(tiny_data.normalize(tiny_data.train_x[image]), keys)
    partner = crop_flip(tiny_data.normalize(tiny_data.train_x[m.partner[image, view]]),
                        *m.partner_view[image, view].unbind(-1))
    for i, (y0, y1, x0, x1) in enumerate(m.box[image, view].tolist()):
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(x[i][:, inside], partner[i][:, inside])
        assert torch.equal(x[i][:, ~inside], own[i][:, ~inside])
        assert m.lam[image[i], view[i]].item() == pytest.approx(1 - inside.sum().item() / 1024)


def test_mixed_hard_labels_match_hand_computed_values():
    mixing = Mixing("mixup", partner=torch.tensor([[1], [0]]),
                    partner_view=torch.zeros(2, 1, 3, dtype=torch.long),
                    lam=torch.tensor([[0.7], [0.25]]), box=None)
    views = Views(torch.zeros(2, 1, 3, dtype=torch.long), 0, mixing)
    labels = views.labels(torch.tensor([3, 5]), torch.tensor([0, 1]), classes=6)
    expected = torch.tensor([[0, 0, 0, 0.7, 0, 0.3], [0, 0, 0, 0.75, 0, 0.25]])
    assert torch.allclose(labels, expected)


def test_the_mixing_weight_follows_its_beta_distribution():
    flat = mixed("mixup", images=2000, views=8, alpha=1.0).mixing.lam
    peaked = mixed("mixup", images=2000, views=8, alpha=0.2).mixing.lam
    assert flat.mean().item() == pytest.approx(0.5, abs=0.02)
    assert ((flat > 0.4) & (flat < 0.6)).float().mean().item() == pytest.approx(0.2, abs=0.02)
    assert ((peaked < 0.1) | (peaked > 0.9)).float().mean().item() > 0.6


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_training_sees_the_mixed_view_the_teacher_was_cached_on(tiny_data, cpu, tmp_path, mode):
    views = mixed(mode)
    teacher, cache = cached_views(tiny_data, tmp_path, views)
    recorder = Recorder(cache)
    kd = SoftTargetKD(KDConfig(temperature=4.0, soft_target_weight=0.5, ce_weight=0.5))
    fit(seeded_student("LightNN", 3, 10), kd, tiny_data, TWO_EPOCHS, cpu, seed=3,
        teacher=recorder, views=views)
    keys, x = recorder.asked[5]
    assert torch.equal(x, views.render(tiny_data.train_x, tiny_data.normalize, keys))
    with torch.no_grad():
        live = teacher(x)
    assert torch.allclose(cache(keys, x).logits, live, atol=1e-5)  # the cache row = live


def test_zero_weight_kd_on_mixed_views_trains_the_mixed_baseline_bit_for_bit(tiny_data, cpu,
                                                                           tmp_path):
    baseline = zero_weight_kd_is_the_baseline(tiny_data, cpu, tmp_path, mixed("cutmix"))
    unmixed = seeded_student("LightNN", 5, 10)
    fit(unmixed, Objective(), tiny_data, TWO_EPOCHS, cpu, seed=5, views=Views.make(42, 200, 4, CPU))
    assert not torch.equal(weights(unmixed), baseline)  # mixing changed training


def test_function_matching_reads_no_label(tiny_data):
    fm = FunctionMatching(FMConfig(temperature=1.0, soft_target_weight=1.0, ce_weight=0.0))
    logits, teacher = torch.randn(4, 10), torch.randn(4, 10)
    from kdpipe.learn.objective import TeacherOutputs

    one = fm(logits, None, torch.tensor([0, 1, 2, 3]), TeacherOutputs(teacher))
    other = fm(logits, None, torch.tensor([9, 9, 9, 9]), TeacherOutputs(teacher))
    assert torch.equal(one, other) and one.item() > 0


def test_gradient_clipping_bounds_every_step(tiny_data, cpu, monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm):
        total = clip(parameters, max_norm)
        norms.append((total.item(), max_norm))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    fit(seeded_student("LightNN", 1, 10), Objective(), tiny_data,
        TrainConfig(1, 1e-3, 50, grad_clip=0.5), cpu, seed=1)
    assert len(norms) == 4 and all(max_norm == 0.5 for _, max_norm in norms)
    norms.clear()
    fit(seeded_student("LightNN", 1, 10), Objective(), tiny_data, TrainConfig(1, 1e-3, 50), cpu,
        seed=1)
    assert norms == []  # 0: no clipping


def test_mixing_is_refused_where_it_cannot_apply():
    import yaml

    from kdpipe.core.config import Config
    from kdpipe.core.errors import ConfigError
    from kdpipe.core.schema import build
    from kdpipe.learn.methods import registry
    from tests.project import ROOT

    def config(**data) -> Config:
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["data"] |= data
        raw["distill"]["methods"] = ["kd", "fm", "dkd", "tfkd", "dist"]
        return build(Config, raw, "")

    with pytest.raises(ConfigError, match="data: mix=mixup mixes cached views: set views"):
        config(mix="mixup")
    with pytest.raises(ConfigError, match="data.mix_alpha=0: expected a number > 0"):
        config(views=4, mix="mixup", mix_alpha=0)
    cfg = config(views=4, mix="cutmix")
    assert registry.settings(cfg, "kd") and registry.settings(cfg, "fm")
    for name in ("dkd", "tfkd"):
        with pytest.raises(ConfigError, match=f"{name} reads each sample's one label"):
            registry.settings(cfg, name)
    cfg.distill.methods.remove("dkd")  # a section no listed method uses is not in the way
    assert registry.settings(cfg, "dkd")
    cfg.distill.sections["dist"] = {**cfg.distill.sections["dist"], "teacher": "shuffled"}
    with pytest.raises(ConfigError, match="dist.teacher=shuffled keeps each row's label"):
        registry.teacher(cfg, "dist")
