"""The one way a stage records itself (tracking.stage_record): its run, its metrics with the
stage's cost, in MLflow and in its metrics file; nothing written when the stage fails; and every
stage script goes through it."""
import ast
import json

import mlflow
import pytest

from kdpipe.tracking.stage_record import recorded_stage
from tests.conftest import ROOT

COST = ("wall_seconds", "peak_rss_mb", "other_load_per_core")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    return tmp_path


def test_a_finished_stage_logs_and_writes_its_metrics_with_its_cost(store):
    out = store / "metrics" / "prepare.json"
    with recorded_stage("stages", "prepare", {"data": {"source": "synthetic"}, "seed": 42}, out,
                        env={"device": "cpu"}, tags={"model": "x"}) as stage:
        metrics = stage.finish({"cached_samples": 7}, extra={"curve": "val_acc"})
    written = json.loads(out.read_text())
    assert set(written) == {"cached_samples", *COST, "curve"}
    assert metrics == {k: written[k] for k in ("cached_samples", *COST)}
    run = mlflow.get_run(stage.run.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "prepare"
    assert run.data.params == {"data.source": "synthetic", "seed": "42"}  # flat, as DVC names
    assert run.data.metrics["stage/cached_samples"] == 7
    assert {f"stage/{k}" for k in COST} <= set(run.data.metrics)
    assert run.data.tags["env.device"] == "cpu" and run.data.tags["model"] == "x"


def test_a_stage_that_fails_before_finishing_writes_no_metrics(store):
    out = store / "metrics" / "teacher_targets.json"
    with pytest.raises(RuntimeError), recorded_stage("stages", "teacher_targets", {}, out) as stage:
        raise RuntimeError("the teacher pass failed")
    assert not out.exists()
    assert mlflow.get_run(stage.run.info.run_id).info.status == "FAILED"


def test_a_resumed_stage_continues_its_run_without_logging_params_again(store):
    with recorded_stage("stages", "kd-42", {"seed": 42}) as first:
        pass
    with recorded_stage("stages", "kd-42", {"seed": 43}, run_id=first.run.info.run_id) as again:
        again.finish({"test_acc": 50.0})
    run = mlflow.get_run(first.run.info.run_id)
    assert run.data.params == {"seed": "42"} and run.data.metrics["test_acc"] == 50.0


def stage_scripts():
    return sorted((ROOT / "stages").glob("*.py"))


@pytest.mark.parametrize("script", stage_scripts(), ids=lambda p: p.stem)
def test_every_stage_has_one_shape(script):
    """main(cfg), run by run_stage (which reads params.yaml once); a run opened only through
    recorded_stage, never by MLflow or the store directly."""
    tree = ast.parse(script.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    assert [a.arg for a in main.args.args] == ["cfg"]
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "run_stage" in calls and "load_config" not in calls
    assert not calls & {"store.stage_run", "mlflow.start_run", "stage_run"}


def test_no_module_but_the_stage_record_opens_a_run():
    opening = [path.relative_to(ROOT).as_posix()
               for path in [*(ROOT / "src" / "kdpipe").rglob("*.py"), *stage_scripts()]
               if "stage_run(" in path.read_text() or "start_run(" in path.read_text()]
    assert sorted(opening) == ["src/kdpipe/tracking/stage_record.py",
                               "src/kdpipe/tracking/store.py"]


def test_a_stage_continues_its_run_whatever_experiment_the_process_had_active(store):
    with recorded_stage("stages", "kd-42", {"seed": 42}) as first:
        pass
    mlflow.set_experiment("something-else")  # as code run earlier in the process may
    with recorded_stage("stages", "kd-42", {}, run_id=first.run.info.run_id) as again:
        again.finish({"test_acc": 1.0})
    assert mlflow.get_run(first.run.info.run_id).data.metrics["test_acc"] == 1.0


def test_teacher_targets_with_a_live_teacher_records_its_run(store, monkeypatch):
    """With data.augment there is nothing to cache, yet the stage is recorded as every other."""
    import runpy

    import yaml

    from kdpipe.core.config import load_config
    from kdpipe.core.paths import METRICS_DIR, PREPARED_DIR, TARGETS_DIR
    from kdpipe.data.prepared import prepare

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"] |= {"source": "synthetic", "limit_train": 100, "limit_test": 50, "augment": True}
    (store / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(store)
    cfg = load_config()
    prepare(cfg.data, cfg.seed, store, PREPARED_DIR)
    for stage in ("check_params", "teacher_targets"):  # as DVC runs them, not as __main__
        runpy.run_path(str(ROOT / "stages" / f"{stage}.py"))["main"](cfg)
    assert json.loads((TARGETS_DIR / "meta.json").read_text())["live_teacher"] is True
    assert json.loads((METRICS_DIR / "teacher_targets.json").read_text())["cached_samples"] == 0
    (run,) = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list")
    assert run.info.run_name == "teacher_targets" and run.info.status == "FINISHED"
    assert run.data.params["data.augment"] == "True"
    assert run.data.metrics["stage/cached_samples"] == 0
