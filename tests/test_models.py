import contextlib

import pytest
import torch

from kdpipe.losses import STUDENT_FEATURES, TEACHER_FEATURES
from kdpipe.models import DeepNN, LightNN, Tapped, count_params


def test_param_counts_match_the_tutorial():
    assert count_params(DeepNN()) == 1_186_986
    assert count_params(LightNN()) == 267_738


def test_forward_with_features_shapes():
    x = torch.randn(4, 3, 32, 32)
    for model, shape in ((DeepNN(), TEACHER_FEATURES), (LightNN(), STUDENT_FEATURES)):
        logits, fmap = Tapped(model, "features").eval().forward_with_features(x)
        assert logits.shape == (4, 10)
        assert fmap.shape == (4, *shape)
        assert torch.equal(model(x), logits)


def test_flattened_feature_sizes_are_2048_and_1024():
    assert torch.Size(TEACHER_FEATURES).numel() == 2048
    assert torch.Size(STUDENT_FEATURES).numel() == 1024


def test_inference_cost_is_measured_and_the_student_is_faster(tmp_path):
    from kdpipe.inference import inference_cost

    costs = {}
    for model in (DeepNN(), LightNN()):
        path = tmp_path / f"{type(model).__name__}.pt"
        torch.save(model.state_dict(), path)
        costs[type(model).__name__] = inference_cost(model, path, torch.device("cpu"),
                                                     contextlib.nullcontext)
    teacher, student = costs["DeepNN"], costs["LightNN"]
    assert teacher["size_mb"] == pytest.approx(1_186_986 * 4 / 2**20, rel=0.01)
    assert student["size_mb"] < teacher["size_mb"] / 4
    assert 0 < student["inference_ms_batch1"] < teacher["inference_ms_batch1"]
    assert student["inference_images_per_second"] > 3 * teacher["inference_images_per_second"]
