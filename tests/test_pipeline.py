"""End to end: `dvc repro` on synthetic data in a fresh copy of the project, then a KD-only
param change, a new seed and a report-only code change rerun exactly the stages they affect."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT

STAGES = ["prepare", "train_teacher", "train_student@42", "teacher_targets", "distill@kd-42",
          "distill@cosine-42", "distill@hint-42", "compare"]
MODELS = ["teacher", "student", "kd", "cosine", "hint"]
QUICK = {"data": {"source": "synthetic", "limit_train": 300, "limit_test": 200},
         "teacher": {"epochs": 1}, "student": {"epochs": 1}, "seeds": [42]}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def edit_params(repo: Path, changes: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def copy_project(repo: Path) -> dict:
    """Copy the project's files into a new git repo at `repo`; return the env to run it with
    (this interpreter's bin first on PATH, no outside MLflow or DVC settings)."""
    for rel in tracked_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        sh(cmd, repo, env)
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A git repo holding a copy of the project, after one quick `dvc repro`."""
    repo = tmp_path_factory.mktemp("project")
    env = copy_project(repo)
    edit_params(repo, QUICK)
    output = sh(["dvc", "repro"], repo, env)
    return repo, env, output


def test_repro_runs_every_stage_and_writes_metrics(project):
    repo, _, output = project
    assert sorted(ran_stages(output)) == sorted(STAGES)
    assert ran_stages(output)[0] == "prepare" and ran_stages(output)[-1] == "compare"
    for name in MODELS:
        run = json.loads((repo / "metrics" / "seeds" / f"{name}-42.json").read_text())
        assert 0 <= run["test_acc"] <= 100 and run["seed"] == 42
        assert run["num_params"] == (1_186_986 if name == "teacher" else 267_738)
        assert run["train_seconds"] > 0 and run["train_images_per_second"] > 0
        assert run["inference_ms_batch1"] > 0 and run["size_mb"] > 0
        metrics = json.loads((repo / "metrics" / f"{name}.json").read_text())
        assert metrics["test_acc"] == run["test_acc"] and metrics["test_acc_ci95"] is None
        assert metrics["test_acc_per_seed"] == {"42": run["test_acc"]}
        assert (repo / "models" / f"{name}-42.pt").exists()
        assert (repo / "plots" / f"{name}-42.csv").read_text().startswith(
            "epoch,train_loss,test_acc")
    for figure in ("accuracy", "curves", "accuracy_vs_latency"):
        assert (repo / "reports" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    comparison = json.loads((repo / "metrics" / "comparison.json").read_text())
    assert set(MODELS) <= set(comparison)
    assert comparison["teacher"]["speedup_vs_teacher"] == 1.0
    assert all(comparison[name]["speedup_vs_teacher"] > 1 for name in MODELS[1:])
    assert "| **kd**" in (repo / "reports" / "comparison.md").read_text()


def test_mlflow_has_one_finished_run_per_stage_with_lineage(project):
    import mlflow

    repo, _, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("knowledge-distillation")
    assert experiment.artifact_location == (repo / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert sorted(by_name) == sorted(["prepare", "teacher", "student", "teacher_targets", "kd",
                                      "cosine", "hint", "compare"])
    assert len(runs) == len(by_name)
    commit = sh(["git", "rev-parse", "HEAD"], repo, os.environ).strip()
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["git.commit"] == commit
    kd = by_name["kd"]
    assert kd.data.tags["dvc.stage"] == "distill@kd-42"
    assert kd.data.params["distill.kd.temperature"] == "2.0" and kd.data.params["seed"] == "42"
    assert [m.step for m in client.get_metric_history(kd.info.run_id, "test_acc")] == [1]
    assert kd.data.metrics["num_params"] == 267_738
    assert kd.inputs.dataset_inputs[0].dataset.name == "synthetic"
    teacher_model = by_name["teacher"].outputs.model_outputs[0].model_id
    kd_inputs = client.get_run(kd.info.run_id).inputs  # search_runs omits model inputs
    assert [m.model_id for m in kd_inputs.model_inputs] == [teacher_model]
    assert kd.data.tags["teacher.run_id"] == by_name["teacher"].info.run_id


def test_logged_student_model_loads_and_predicts_a_batch(project):
    import mlflow
    import torch

    repo, _, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    kd = mlflow.search_runs(experiment_names=["knowledge-distillation"],
                            filter_string="attributes.run_name = 'kd'", output_format="list")[0]
    model_id = kd.outputs.model_outputs[0].model_id
    model = mlflow.pytorch.load_model(f"models:/{model_id}")
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 3, 32, 32))).float()
    assert model(images).shape == (3, 10)


def test_only_changed_stages_rerun(project):
    repo, env, _ = project
    status = json.loads(sh(["dvc", "status", "--json"], repo, env))
    assert status == {}
    edit_params(repo, {"distill": {"kd": {"temperature": 4, "soft_target_weight": 0.25,
                                          "ce_weight": 0.75},
                                   "cosine": {"hidden_weight": 0.25, "ce_weight": 0.75},
                                   "hint": {"feature_weight": 0.25, "ce_weight": 0.75}}})
    assert ran_stages(sh(["dvc", "repro"], repo, env)) == ["distill@kd-42", "compare"]

    edit_params(repo, {"seeds": [42, 43]})  # a new seed trains only that seed's students
    assert sorted(ran_stages(sh(["dvc", "repro"], repo, env))) == [
        "compare", "distill@cosine-43", "distill@hint-43", "distill@kd-43", "train_student@43"]
    kd = json.loads((repo / "metrics" / "kd.json").read_text())
    assert set(kd["test_acc_per_seed"]) == {"42", "43"} and kd["test_acc_ci95"] is not None
    gains = json.loads((repo / "metrics" / "comparison.json").read_text())
    assert 0 <= gains["kd"]["gain_p_value"] <= 1
    assert "paired t-test p =" in (repo / "reports" / "comparison.md").read_text()

    with open(repo / "src" / "kdpipe" / "report.py", "a") as f:
        f.write("\n# a report-only change\n")
    assert sorted(json.loads(sh(["dvc", "status", "--json"], repo, env))) == ["compare"]


@pytest.mark.slow
def test_real_images_subset_every_model_beats_chance(tmp_path):
    """Issue acceptance on real data: 2,000 training images, 1,000 test images, one epoch per
    model; every model must beat chance (10%) clearly. About 2 minutes on 2 cores."""
    from tests.conftest import SHARED_ARCHIVE

    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"real-image archive not found at {SHARED_ARCHIVE}")
    repo = tmp_path / "project"
    repo.mkdir()
    env = copy_project(repo)
    edit_params(repo, {"data": {"source": str(SHARED_ARCHIVE), "limit_train": 2000,
                                "limit_test": 1000},
                       "teacher": {"epochs": 1}, "student": {"epochs": 1}, "seeds": [42]})
    assert sorted(ran_stages(sh(["dvc", "repro"], repo, env))) == sorted(STAGES)
    for name in MODELS:
        assert json.loads((repo / "metrics" / f"{name}.json").read_text())["test_acc"] >= 15


def test_best_student_is_registered_and_loads_by_alias(project):
    import mlflow
    import torch

    repo, _, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    latest = json.loads((repo / "metrics" / "comparison.json").read_text())
    latest_best = max(latest[name]["test_acc"] for name in ("student", "kd", "cosine", "hint"))
    client = mlflow.MlflowClient()
    versions = client.search_model_versions("name = 'kd-student'")
    assert len(versions) >= 1  # one per compare run (more if an earlier test reran compare)
    best = client.get_model_version_by_alias("kd-student", "best")
    assert float(best.tags["test_acc"]) == max(float(v.tags["test_acc"]) for v in versions)
    assert float(best.tags["test_acc"]) >= latest_best
    assert best.tags["method"] in ("student", "kd", "cosine", "hint")
    model = mlflow.pytorch.load_model("models:/kd-student@best")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_real_mlflow_server_serves_the_runs_over_rest(project, tmp_path):
    import socket
    import time
    import urllib.request

    repo, env, _ = project
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "no server"
                time.sleep(0.5)
        with urllib.request.urlopen(
                f"{base}/api/2.0/mlflow/experiments/get-by-name"
                "?experiment_name=knowledge-distillation", timeout=10) as response:
            experiment_id = json.load(response)["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [experiment_id],
                             "filter": "tags.`dvc.stage` = 'distill@kd-42'"}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.load(response)["runs"]
        assert runs and all(r["info"]["run_name"] == "kd" for r in runs)
        metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
        assert {"test_acc", "train_loss", "num_params"} <= metrics
    finally:
        server.terminate()
        server.wait(timeout=30)
