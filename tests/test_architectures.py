"""Your own models: torchvision architectures and builders in your code, taps by layer name,
pretrained teachers, and the stages that follow them."""
import shutil

import pytest
import torch

from kdpipe.core.errors import ConfigError, DataError
from kdpipe.learn.models import Tapped, build_model, default_feature_layer, feature_shape
from kdpipe.learn.pretrained import pretrained_weights
from tests.project import clone, edit_params, ran_stages, read_json, sh, stale_stages

BUILDER = '''from torch import nn


def small_cnn(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
'''


@pytest.mark.parametrize("arch, layer, shape", [
    ("DeepNN", "features", (32, 8, 8)),
    ("LightNN", "features", (16, 8, 8)),
    ("resnet18", "layer4", (512, 1, 1)),
    ("mobilenet_v3_small", "features", (576, 1, 1)),
])
def test_every_built_in_architecture_builds_with_its_default_tap(arch, layer, shape):
    model = build_model(arch, num_classes=7)
    assert default_feature_layer(model) == layer
    tapped = Tapped(model, layer)
    logits, features = tapped.eval().forward_with_features(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 7) and features.shape == (2, *shape)
    assert feature_shape(tapped, 32) == shape


def test_a_builder_in_your_code_is_imported_from_the_repository(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(BUILDER)
    monkeypatch.chdir(tmp_path)
    model = build_model("my_models:small_cnn", num_classes=4)
    assert Tapped(model, "4").forward_with_features(torch.zeros(2, 3, 32, 32))[1].shape == (
        2, 16, 16, 16)
    with pytest.raises(ConfigError, match=r"^student.arch='my_models:big': my_models has no "
                                          r"function 'big'; it has small_cnn"):
        build_model("my_models:big", 4, key="student.arch")


def test_unknown_names_fail_with_the_close_matches():
    with pytest.raises(ConfigError, match=r"^teacher.arch='resnet81': unknown architecture; "
                                          r"did you mean resnet18"):
        build_model("resnet81", key="teacher.arch")
    with pytest.raises(ConfigError, match=r"^student.feature_layer='layer5': no such module; "
                                          r"valid names: conv1, bn1, relu, maxpool, layer1"):
        Tapped(build_model("resnet18"), "layer5", key="student.feature_layer")


def test_a_model_without_a_default_layer_trains_but_cannot_give_features():
    model = Tapped(build_model("vit_b_16", num_classes=10), None, key="student.feature_layer")
    assert model.forward_with_features(torch.zeros(1, 3, 224, 224))[1] is None
    with pytest.raises(ConfigError, match=r"^student.feature_layer='': VisionTransformer has "
                                          r"no default feature layer; set one. valid names:"):
        feature_shape(model, 224)


def test_pretrained_weights_round_trip_and_mismatches_are_named(tmp_path):
    trained = build_model("LightNN")
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    torch.save({"arch": "LightNN", "state_dict": trained.state_dict()}, tmp_path / "file.pt")
    for name in ("plain.pt", "file.pt"):
        weights, sha256 = pretrained_weights(tmp_path / name, build_model("LightNN"), "LightNN")
        assert all(torch.equal(weights[k], v) for k, v in trained.state_dict().items())
        assert len(sha256) == 64
    with pytest.raises(ConfigError, match=r"does not fit teacher.arch='DeepNN': 6 missing "
                                          r"\(features.2.weight, .*; 2 unexpected \(features.3"
                                          r".weight, features.3.bias\); 5 of another shape"):
        pretrained_weights(tmp_path / "plain.pt", build_model("DeepNN"), "DeepNN")
    other = build_model("LightNN", num_classes=3).state_dict()
    torch.save(other, tmp_path / "three.pt")
    with pytest.raises(ConfigError, match=r"2 of another shape \(classifier.3.weight \(3, 256\) "
                                          r"vs \(10, 256\)"):
        pretrained_weights(tmp_path / "three.pt", build_model("LightNN"), "LightNN")
    with pytest.raises(DataError, match="does not exist"):
        pretrained_weights(tmp_path / "none.pt", build_model("LightNN"), "LightNN")


def test_a_safetensors_teacher_loads(tmp_path):
    from safetensors.torch import save_file

    trained = build_model("LightNN")
    save_file(trained.state_dict(), str(tmp_path / "t.safetensors"))
    weights, _ = pretrained_weights(tmp_path / "t.safetensors", build_model("LightNN"), "LightNN")
    assert torch.equal(weights["classifier.0.weight"], trained.state_dict()["classifier.0.weight"])


def test_a_pretrained_teacher_is_evaluated_not_trained(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    shutil.copy(repo / "models" / "teacher-42.pt", repo / "teachers" / "deepnn.pt")
    edit_params(repo, {"teacher": {"pretrained": "teachers/deepnn.pt"}})
    assert "train_teacher" in ran_stages(sh(["dvc", "repro"], repo))
    before = read_json(built / "metrics" / "seeds" / "teacher-42.json")
    after = read_json(repo / "metrics" / "seeds" / "teacher-42.json")
    assert after["epochs"] == 0 and after["history"] == []
    assert (after["test_acc"], after["val_acc"]) == (before["test_acc"], before["val_acc"])


def test_your_builder_file_reruns_exactly_the_stages_that_build_it(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    (repo / "my_models.py").write_text(BUILDER)
    edit_params(repo, {"student": {"arch": "my_models:small_cnn", "code": "my_models.py",
                                   "feature_layer": "4"}})
    assert sorted(ran_stages(sh(["dvc", "repro"], repo))) == [
        "check_params", "compare", "distill@cosine-42", "distill@hint-42", "distill@kd-42",
        "export", "train_student@42"]
    assert read_json(repo / "metrics" / "models.json")["kd"]["num_params"] < 3000
    with open(repo / "my_models.py", "a") as f:
        f.write("\n# an edit\n")
    assert stale_stages(repo) == ["distill@cosine-42", "distill@hint-42", "distill@kd-42",
                                  "export", "train_student@42"]


def test_a_builder_and_its_code_param_must_agree(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    edit_params(repo, {"student": {"arch": "my_models:small_cnn"}})
    done = sh_fails(["dvc", "repro", "check_params"], repo)
    assert ("student: code='src/kdpipe/learn/models.py' does not define "
            "arch='my_models:small_cnn'; expected code: my_models.py") in done


def sh_fails(cmd, repo) -> str:
    import subprocess

    from tests.project import clean_env

    done = subprocess.run(cmd, cwd=repo, env=clean_env(), capture_output=True, text=True)
    assert done.returncode != 0
    return done.stdout + done.stderr
