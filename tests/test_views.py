"""data.views: K fixed views per image, a pure function of (seed, image, view); the teacher's
outputs on each cached once; every model of a seed shown the same view of each image in each
epoch, with the teacher's output on exactly that view."""
import pytest
import torch

from kdpipe.core.config import TrainConfig
from kdpipe.data.prepared import PAD
from kdpipe.data.views import Views
from kdpipe.learn.loop import fit
from kdpipe.learn.methods.kd import KDConfig, SoftTargetKD
from kdpipe.learn.models import DeepNN, Tapped
from kdpipe.learn.objective import Objective, TeacherOutputs
from kdpipe.learn.teacher_targets import CachedTargets, LiveTeacher, compute_targets, save_targets
from kdpipe.learn.training import seeded_student
from tests.conftest import weights

CPU = torch.device("cpu")
TWO_EPOCHS = TrainConfig(2, 1e-3, 50)
META = {"data_sha256": "d", "teacher_run_id": "t", "views": 4}


def test_a_view_depends_only_on_seed_image_and_view_index():
    views = Views.make(42, 200, 4, CPU)
    assert views.params.shape == (200, 4, 3)
    # the first 50 images' views do not depend on how many images there are
    assert torch.equal(Views.make(42, 50, 4, CPU).params, views.params[:50])
    assert torch.equal(Views.make(42, 200, 2, CPU).params, views.params[:, :2])
    assert not torch.equal(Views.make(43, 200, 4, CPU).params, views.params)
    dy, dx, flip = views.params.unbind(-1)
    assert dy.min() == 0 and dy.max() == 2 * PAD and dx.min() == 0 and dx.max() == 2 * PAD
    assert 0.35 < flip.float().mean() < 0.65  # about half the views mirrored


def test_each_epoch_shows_each_image_one_view_chosen_by_the_models_seed():
    views = Views.make(42, 1000, 4, CPU)
    epoch1, epoch2 = views.for_epoch(7, 1), views.for_epoch(7, 2)
    assert torch.equal(epoch1, views.for_epoch(7, 1))  # a pure function: resumes need nothing
    assert not torch.equal(epoch1, epoch2) and not torch.equal(epoch1, views.for_epoch(8, 1))
    assert set(epoch1.tolist()) == {0, 1, 2, 3}


def test_a_view_is_the_padded_crop_and_flip_its_parameters_name(tiny_data):
    views = Views.make(0, 200, 3, CPU)
    image = tiny_data.normalize(tiny_data.train_x[5:6])
    for v in range(3):
        dy, dx, flip = views.params[5, v].tolist()
        padded = torch.nn.functional.pad(image, (PAD,) * 4)
        expected = padded[..., dy:dy + 32, dx:dx + 32]
        expected = expected.flip(3) if flip else expected
        assert torch.equal(views.apply(image, views.keys(torch.tensor([5]), torch.tensor([v]))),
                           expected)


class Recorder:
    """A teacher source that keeps what the training loop asked it for."""

    def __init__(self, cache: CachedTargets):
        self.cache, self.asked = cache, []

    def __call__(self, keys, x) -> TeacherOutputs:
        self.asked.append((keys.clone(), x.clone()))
        return self.cache(keys, x)


def cached_views(tiny_data, tmp_path, views):
    import contextlib

    torch.manual_seed(1)
    teacher = Tapped(DeepNN(), "features").eval()
    logits, maps, _ = compute_targets(teacher, tiny_data.train_x, tiny_data.normalize,
                                      contextlib.nullcontext, views, features=False, batch=128)
    assert logits.shape == (200 * 4, 10) and maps is None  # no method here needs features
    save_targets(tmp_path, META, logits)
    return teacher, CachedTargets(tmp_path, ("logits",), CPU, META)


def test_training_sees_the_cached_view_and_the_teacher_output_on_it(tiny_data, cpu, tmp_path):
    views = Views.make(42, 200, 4, CPU)
    teacher, cache = cached_views(tiny_data, tmp_path, views)
    recorder = Recorder(cache)
    kd = SoftTargetKD(KDConfig(temperature=4.0, soft_target_weight=0.5, ce_weight=0.5))
    fit(seeded_student("LightNN", 3, 10), kd, tiny_data, TWO_EPOCHS, cpu, seed=3,
        teacher=recorder, views=views)
    (keys, x), live = recorder.asked[5], LiveTeacher(teacher, cpu.autocast)
    images = keys // 4
    assert torch.equal(keys % 4, views.for_epoch(3, 2)[images])  # batch 5: epoch 2's views
    # the very crop teacher_targets made, and the teacher's output on it, cached = live
    assert torch.equal(x, views.apply(tiny_data.normalize(tiny_data.train_x[images]), keys))
    assert torch.allclose(cache(keys, x).logits, live(keys, x).logits, atol=1e-5)


def zero_weight_kd_is_the_baseline(tiny_data, cpu, tmp_path, views) -> torch.Tensor:
    """Trains the baseline and kd with weight 0 from the cache on `views`, asserts they end bit
    for bit the same, and returns the baseline's weights."""
    _, cache = cached_views(tiny_data, tmp_path, views)
    baseline = seeded_student("LightNN", 5, 10)
    fit(baseline, Objective(), tiny_data, TWO_EPOCHS, cpu, seed=5, views=views)
    kd = seeded_student("LightNN", 5, 10)
    zero = KDConfig(temperature=2.0, soft_target_weight=0.0, ce_weight=1.0)
    fit(kd, SoftTargetKD(zero), tiny_data, TWO_EPOCHS, cpu, seed=5, teacher=cache, views=views)
    assert torch.equal(weights(baseline), weights(kd))
    return weights(baseline)


def test_zero_weight_kd_on_views_trains_the_views_baseline_bit_for_bit(tiny_data, cpu,
                                                                      tmp_path):
    baseline = zero_weight_kd_is_the_baseline(tiny_data, cpu, tmp_path,
                                              Views.make(42, 200, 4, CPU))
    plain = seeded_student("LightNN", 5, 10)
    fit(plain, Objective(), tiny_data, TWO_EPOCHS, cpu, seed=5)
    assert not torch.equal(weights(plain), baseline)  # the views did change training


def test_views_and_per_batch_augmentation_exclude_each_other(tmp_path):
    from kdpipe.core.config import load_config
    from kdpipe.core.errors import ConfigError
    from tests.conftest import ROOT

    text = (ROOT / "params.yaml").read_text().replace("augment: false", "augment: true")
    (tmp_path / "params.yaml").write_text(text.replace("views: 0", "views: 4"))
    with pytest.raises(ConfigError, match=r"^data: views=4 and augment=true: choose one"):
        load_config(tmp_path / "params.yaml")
