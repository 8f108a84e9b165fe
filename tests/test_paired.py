"""The paired design: for a seed, every student starts from the same weights and sees the same
batches, so a method whose own term has weight 0 must train the baseline student bit for bit,
through the real stages and the cached teacher outputs."""
import torch

from kdpipe.learn.checkpoint import safe_load
from tests.project import and_export, chosen_student, clone, edit_params, ran_stages, read_json, sh

ZERO = {"kd": {"soft_target_weight": 0, "ce_weight": 1},
        "cosine": {"hidden_weight": 0, "ce_weight": 1},
        "hint": {"feature_weight": 0, "ce_weight": 1}}


def test_a_zero_weight_method_trains_the_baseline_student_bit_for_bit(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    before = chosen_student(repo)
    edit_params(repo, {"distill": ZERO})
    assert sorted(ran_stages(sh(["dvc", "repro"], repo))) == sorted([
        "check_params", "compare", "distill@cosine-42", "distill@hint-42", "distill@kd-42",
        *and_export(before, repo)])
    baseline = safe_load(repo / "models" / "student-42.pt")["state_dict"]
    base_record = read_json(repo / "metrics" / "seeds" / "student-42.json")
    for method in ZERO:
        state = safe_load(repo / "models" / f"{method}-42.pt")["state_dict"]
        assert all(torch.equal(state[k], baseline[k]) for k in baseline), method
        record = read_json(repo / "metrics" / "seeds" / f"{method}-42.json")
        for key in ("test_acc", "val_acc", "history"):
            assert record[key] == base_record[key], (method, key)



def test_with_views_the_cache_holds_every_view_and_the_pair_still_holds(built, tmp_path):
    """data.views through the real stages: teacher_targets caches the teacher on each image's
    2 views, the distill stage reads them, and a zero-weight kd still trains the baseline
    student (on the same views) bit for bit."""
    import numpy as np

    repo = clone(built, tmp_path / "repo")
    edit_params(repo, {"data": {"views": 2}, "distill": {"methods": ["kd"], "kd": ZERO["kd"]}})
    sh(["dvc", "repro"], repo)
    train_images = sum(read_json(repo / "data" / "prepared" / "summary.json")["counts"]["train"]
                       .values())
    assert read_json(repo / "data" / "teacher_targets" / "meta.json")["views"] == 2
    assert len(np.load(repo / "data" / "teacher_targets" / "logits.npy")) == 2 * train_images
    baseline = safe_load(repo / "models" / "student-42.pt")
    kd = safe_load(repo / "models" / "kd-42.pt")
    assert baseline["config"]["data.views"] == kd["config"]["data.views"] == 2
    assert all(torch.equal(kd["state_dict"][k], v) for k, v in baseline["state_dict"].items())
