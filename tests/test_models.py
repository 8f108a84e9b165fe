
import pytest
import torch

from kdpipe.learn.models import DeepNN, LightNN, Tapped, count_params
from kdpipe.learn.objective import FeatureShapes


def test_param_counts_match_the_tutorial():
    assert count_params(DeepNN()) == 1_186_986
    assert count_params(LightNN()) == 267_738


def test_forward_with_features_shapes():
    x = torch.randn(4, 3, 32, 32)
    for model, shape in ((DeepNN(), FeatureShapes().teacher), (LightNN(), FeatureShapes().student)):
        logits, fmap = Tapped(model, "features").eval().forward_with_features(x)
        assert logits.shape == (4, 10)
        assert fmap.shape == (4, *shape)
        assert torch.equal(model(x), logits)


def test_flattened_feature_sizes_are_2048_and_1024():
    assert torch.Size(FeatureShapes().teacher).numel() == 2048
    assert torch.Size(FeatureShapes().student).numel() == 1024


def test_inference_cost_is_measured_and_the_student_is_cheaper(tmp_path):
    """Latency itself depends on the machine's load, so it is only checked to be measured; that
    the student is cheaper is checked on what does not: size and floating-point operations."""
    from torch.utils.flop_counter import FlopCounterMode

    from kdpipe.measure.inference import inference_cost

    costs, flops = {}, {}
    for model in (DeepNN(), LightNN()):
        name = type(model).__name__
        path = tmp_path / f"{name}.pt"
        torch.save(model.state_dict(), path)
        costs[name] = inference_cost(model, path, torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            model.eval()(torch.zeros(1, 3, 32, 32))
        flops[name] = counter.get_total_flops()
    teacher, student = costs["DeepNN"], costs["LightNN"]
    assert teacher["size_mb"] == pytest.approx(1_186_986 * 4 / 2**20, rel=0.01)
    assert student["size_mb"] < teacher["size_mb"] / 4
    for cost in (teacher, student):
        assert 0 < cost["inference_ms_batch1"] < 10_000 and cost["inference_images_per_second"] > 0
    assert flops["LightNN"] < flops["DeepNN"] / 4
