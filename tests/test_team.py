"""On several machines: a shared DVC remote with the run-cache lets a second clone restore
every stage without running it."""
import filecmp

import yaml

from tests.conftest import ROOT
from tests.project import clone, ran_stages, sh

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_stays_run_cacheable(built):
    from dvc.repo import Repo
    from dvc.stage.cache import _can_hash

    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        assert not body.get("always_changed"), name
        outs = [o for o in body.get("outs", []) + body.get("metrics", []) if isinstance(o, dict)]
        assert not any(v.get("persist") for o in outs for v in o.values()), name
    with Repo(str(built)) as repo:
        stages = list(repo.index.stages)
        assert len(stages) == 10 and all(_can_hash(s) for s in stages)


def test_a_second_clone_restores_every_stage_from_the_shared_remote(built, tmp_path):
    a = clone(built, tmp_path / "a")
    sh(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote")], a)
    sh(["git", "commit", "-qam", "shared remote"], a)
    sh(["dvc", "push", "--run-cache"], a)
    sh(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], a)
    sh(["git", "push", "-q", str(tmp_path / "origin.git"), "HEAD:main"], a)

    b = tmp_path / "b"
    sh(["git", "clone", "-q", "-b", "main", str(tmp_path / "origin.git"), str(b)], tmp_path)
    sh(["dvc", "pull", "--run-cache"], b)
    output = sh(["dvc", "repro"], b)
    assert ran_stages(output) == [], output
    assert sh(["dvc", "status"], b).strip() == "Data and pipelines are up to date."
    outputs = ["data/prepared/train_images.npy", "data/teacher_targets/logits.npy",
               "models/teacher-42.pt", "models/kd-42.pt", "metrics/seeds/hint-42.json",
               "metrics/models.json", "metrics/comparison.json", "reports/comparison.md",
               "reports/params.json", "plots/accuracy/student-42.csv", "models/chosen.json",
               "models/student.onnx", "metrics/export.json", "reports/export.md"]
    for path in outputs:
        assert filecmp.cmp(a / path, b / path, shallow=False), path
