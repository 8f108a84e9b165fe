import torch

from kdpipe.models import STUDENT_FEATURES, TEACHER_FEATURES, DeepNN, LightNN, count_params


def test_param_counts_match_the_tutorial():
    assert count_params(DeepNN()) == 1_186_986
    assert count_params(LightNN()) == 267_738


def test_forward_with_features_shapes():
    x = torch.randn(4, 3, 32, 32)
    for model, shape in ((DeepNN(), TEACHER_FEATURES), (LightNN(), STUDENT_FEATURES)):
        logits, fmap = model.eval().forward_with_features(x)
        assert logits.shape == (4, 10)
        assert fmap.shape == (4, *shape)
        assert torch.equal(model(x), logits)


def test_flattened_feature_sizes_are_2048_and_1024():
    assert torch.Size(TEACHER_FEATURES).numel() == 2048
    assert torch.Size(STUDENT_FEATURES).numel() == 1024
