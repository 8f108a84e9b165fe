"""End to end: `dvc repro` on synthetic data in a fresh copy of the project runs every stage,
writes every output and records every stage execution in MLflow with its lineage."""
import json
import subprocess
import urllib.request

import numpy as np
import pytest

from tests.project import (
    MODELS_PER_SEED,
    clean_env,
    clone,
    ran_stages,
    read_json,
    stop_server,
    wait_for_server,
)
from tests.test_safety import closed_port

STAGES = ["check_params", "prepare", "train_teacher", "train_student@42", "teacher_targets",
          "distill@kd-42", "distill@cosine-42", "distill@hint-42", "compare", "export"]
MODELS = ["teacher", "student", "kd", "cosine", "hint"]


def mlflow_client(repo):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_repro_runs_every_stage_and_writes_every_output(built):
    ran = ran_stages((built / "repro.log").read_text())
    assert sorted(ran) == sorted(STAGES) and ran[-2:] == ["compare", "export"]
    assert ran[0] == "check_params"  # any params problem is reported before any work
    for name in MODELS:
        run = read_json(built / "metrics" / "seeds" / f"{name}-42.json")
        assert 0 <= run["test_acc"] <= 100 and 0 <= run["val_acc"] <= 100 and run["seed"] == 42
        assert run["num_params"] == (1_186_986 if name == "teacher" else 267_738)
        assert run["train_seconds"] > 0 and run["train_images_per_second"] > 0
        assert run["inference_ms_batch1"] > 0 and run["size_mb"] > 0
        assert [r["epoch"] for r in run["history"]] == [1] and run["curve"] == "val_acc"
        metrics = read_json(built / "metrics" / "models.json")[name]
        assert metrics["test_acc"] == run["test_acc"] and metrics["test_acc_ci95"] is None
        assert metrics["test_acc_per_seed"] == {"42": run["test_acc"]}
        assert (built / "plots" / "loss" / f"{name}-42.csv").read_text().startswith(
            "epoch,train_loss\n1,")
        assert (built / "plots" / "accuracy" / f"{name}-42.csv").read_text() == \
            f"epoch,accuracy\n1,{run['val_acc']}\n"
    for figure in ("accuracy", "gains", "curves", "accuracy_vs_latency"):
        assert (built / "reports" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    models = read_json(built / "metrics" / "models.json")
    assert models["teacher"]["speedup_vs_teacher"] == 1.0
    assert all(models[name]["speedup_vs_teacher"] > 1 for name in MODELS[1:])
    for name in MODELS[1:]:  # fidelity on test, of every student
        assert 0 <= models[name]["agreement"] <= 100 and models[name]["kl_to_teacher"] >= 0
        assert 0 <= models[name]["test_ece"] <= 100
    # what `dvc exp show` shows: the chosen student, mean accuracies and gains, nothing more
    comparison = read_json(built / "metrics" / "comparison.json")
    assert comparison["best"] in MODELS[1:] and list(comparison) == ["best", *MODELS]
    assert comparison["kd"] == {
        "val": round(models["kd"]["val_acc"], 2),
        "gain": pytest.approx(models["kd"]["test_acc"] - models["student"]["test_acc"],
                              abs=0.006)}
    assert comparison["teacher"] == {"test": round(models["teacher"]["test_acc"], 2)}
    assert "| **kd**" in (built / "reports" / "comparison.md").read_text()
    assert read_json(built / "reports" / "params.json")["data"]["val_fraction"] == 0.1


def test_every_saved_tensor_is_on_the_cpu(built):
    import torch

    for path in (built / "models").glob("*.pt"):
        state = torch.load(path, map_location=None, weights_only=True)["state_dict"]
        assert all(t.device.type == "cpu" for t in state.values()), path


def test_a_student_stage_records_where_its_time_went(built):
    """The stage's wall time covers its training and evaluation (what a stage costs beyond
    them is a benchmark's question: benchmarks/run.py)."""
    run = read_json(built / "metrics" / "seeds" / "student-42.json")
    assert 0 < run["train_seconds"] and 0 <= run["eval_seconds"]
    assert run["wall_seconds"] >= run["train_seconds"] + run["eval_seconds"]


def test_mlflow_has_one_finished_run_per_stage_with_lineage(built):
    client = mlflow_client(built)
    experiment = client.get_experiment_by_name("knowledge-distillation")
    assert experiment.artifact_location == (built / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert sorted(by_name) == sorted(["prepare", "teacher-42", *MODELS_PER_SEED,
                                      "teacher_targets", "compare", "export"])
    assert len(runs) == len(by_name)
    commit = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=built, capture_output=True,
                            text=True).stdout.strip()  # the commit before the lock file
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["git.commit"] == commit
    kd = by_name["kd-42"]
    assert kd.data.tags["dvc.stage"] == "distill@kd-42"
    assert kd.data.params["distill.kd.temperature"] == "2.0" and kd.data.params["seed"] == "42"
    assert [m.step for m in client.get_metric_history(kd.info.run_id, "epoch/val_acc")] == [1]
    assert kd.data.metrics["stage/num_params"] == 267_738
    assert kd.data.metrics["test_acc"] == read_json(built / "metrics/seeds/kd-42.json")["test_acc"]
    assert kd.inputs.dataset_inputs[0].dataset.name == "synthetic"
    teacher_model = by_name["teacher-42"].outputs.model_outputs[0].model_id
    kd_inputs = client.get_run(kd.info.run_id).inputs  # search_runs omits model inputs
    assert [m.model_id for m in kd_inputs.model_inputs] == [teacher_model]
    assert kd.data.tags["teacher.run_id"] == by_name["teacher-42"].info.run_id
    record = read_json(built / "metrics" / "seeds" / "kd-42.json")
    assert record["mlflow_run_id"] == kd.info.run_id
    assert record["mlflow_model_id"] == kd.outputs.model_outputs[0].model_id


def test_training_runs_record_system_metrics(built):
    client = mlflow_client(built)
    experiment = client.get_experiment_by_name("knowledge-distillation")
    [run] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'teacher-42'")
    system = {key for key in run.data.metrics if key.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system


def test_compare_prints_the_link_to_the_runs_page(built):
    experiment = mlflow_client(built).get_experiment_by_name("knowledge-distillation")
    assert (f"MLflow runs: http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
            "?workflowType=machine_learning") in (built / "repro.log").read_text()


def test_dvc_plots_draw_loss_and_accuracy_for_every_model_and_seed(built):
    from tests.project import sh

    shown = json.loads(sh(["dvc", "plots", "show", "--json"], built))
    assert not shown.get("errors")
    for plot in ("plots/loss", "plots/accuracy"):
        files = {name.split("/")[-1] for name in shown["data"] if name.startswith(plot + "/")}
        assert files == {f"{m}-42.csv" for m in MODELS}, plot


def test_logged_student_model_loads_and_predicts_a_batch(built, tmp_path):
    import mlflow
    import torch

    built = clone(built, tmp_path / "repo")  # loading a logged model writes beside it
    mlflow_client(built)
    model_id = read_json(built / "metrics" / "seeds" / "kd-42.json")["mlflow_model_id"]
    model = mlflow.pytorch.load_model(f"models:/{model_id}")
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 3, 32, 32))).float()
    assert model(images).shape == (3, 10)


def test_the_best_student_is_registered_as_chosen_on_validation(built, tmp_path):
    import mlflow
    import torch

    built = clone(built, tmp_path / "repo")  # loading a registered model writes beside it
    client = mlflow_client(built)
    models = read_json(built / "metrics" / "models.json")
    best = client.get_model_version_by_alias("kd-student", "best")
    record = read_json(built / "metrics" / "seeds" / f"{best.tags['method']}-42.json")
    assert best.tags["chosen_by"] == "val_acc"
    assert float(best.tags["val_acc"]) == record["val_acc"]
    assert float(best.tags["test_acc"]) == record["test_acc"]
    assert best.tags["data_digest"] == record["data_sha256"]
    assert best.run_id == record["mlflow_run_id"]
    students = ("student", "kd", "cosine", "hint")
    assert record["val_acc"] == max(models[name]["val_acc"] for name in students)
    data_best = client.get_model_version_by_alias("kd-student",
                                                  f"best-{record['data_sha256'][:12]}")
    assert data_best.version == best.version
    model = mlflow.pytorch.load_model("models:/kd-student@best")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_real_mlflow_server_serves_the_runs_over_rest(built, tmp_path):
    port = closed_port()
    server = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{built / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    answer = 120  # seconds a request may take: a busy host slows a fresh server's first answers
    try:
        wait_for_server(base, server)
        with urllib.request.urlopen(
                f"{base}/api/2.0/mlflow/experiments/get-by-name"
                "?experiment_name=knowledge-distillation", timeout=answer) as response:
            experiment_id = json.load(response)["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [experiment_id],
                             "filter": "tags.`dvc.stage` = 'distill@kd-42'"}).encode())
        with urllib.request.urlopen(request, timeout=answer) as response:
            runs = json.load(response)["runs"]
        assert [r["info"]["run_name"] for r in runs] == ["kd-42"]
        metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
        assert {"test_acc", "epoch/val_acc", "epoch/train_loss", "stage/num_params"} <= metrics
    finally:
        stop_server(server)


@pytest.mark.slow
def test_real_images_subset_every_model_beats_chance(tmp_path):
    """Real data: 2,000 training images, 1,000 test images, one epoch per model; every model
    must beat chance (10%) clearly. About 2 minutes on 2 cores."""
    from tests.conftest import SHARED_ARCHIVE
    from tests.project import copy_project, edit_params, sh

    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"real-image archive not found at {SHARED_ARCHIVE}")
    repo = copy_project(tmp_path / "project")
    edit_params(repo, {"data": {"source": str(SHARED_ARCHIVE), "limit_train": 2000,
                                "limit_test": 1000},
                       "teacher": {"epochs": 1}, "student": {"epochs": 1}, "seeds": [42]})
    assert sorted(ran_stages(sh(["dvc", "repro"], repo))) == sorted(STAGES)
    for name in MODELS:
        assert read_json(repo / "metrics" / "models.json")[name]["test_acc"] >= 15
