"""The registry's rules: `best` moves on the validation score of the very model registered,
never on test, never across data; a model restored from DVC's cache keeps its version."""
import pytest
from mlflow.protos.databricks_pb2 import BAD_REQUEST, PERMISSION_DENIED

from kdpipe.tracking.registry import (
    ONNX_REGISTERED_MODEL,
    REGISTERED_MODEL,
    data_alias,
    register_best,
    register_best_student,
    version_tags,
)

DATA, OTHER_DATA = "a" * 64, "b" * 64


@pytest.fixture
def client(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("registry")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def trained(val_acc: float, test_acc: float, data: str = DATA) -> dict:
    """A student's record as its training stage writes it, with a real run and logged model."""
    import mlflow

    with mlflow.start_run() as run:
        model = mlflow.initialize_logged_model(name="model")
    return {"seed": 42, "val_acc": val_acc, "test_acc": test_acc, "data_sha256": data,
            "mlflow_run_id": run.info.run_id, "mlflow_model_id": model.model_id}


def holder(client, alias: str = "best"):
    return client.get_model_version_by_alias(REGISTERED_MODEL, alias)


def test_the_first_model_takes_best_and_records_how_it_was_chosen(client):
    version, moved = register_best_student("kd", trained(60.0, 58.0), "val_acc")
    assert moved == [data_alias(DATA), "best"]
    tags = holder(client).tags
    assert holder(client).version == version
    assert (tags["method"], tags["chosen_by"], tags["val_acc"], tags["test_acc"],
            tags["data_digest"]) == ("kd", "val_acc", "60.0", "58.0", DATA)


def test_best_moves_when_better_on_validation_and_stays_when_worse(client):
    first, _ = register_best_student("kd", trained(60.0, 58.0), "val_acc")
    worse_on_val, moved = register_best_student("hint", trained(59.0, 70.0), "val_acc")
    assert moved == [] and holder(client).version == first  # its better test score is ignored
    better_on_val, moved = register_best_student("cosine", trained(61.0, 50.0), "val_acc")
    assert moved == [data_alias(DATA), "best"] and holder(client).version == better_on_val


def test_a_tie_leaves_best_with_the_earlier_model(client):
    first, _ = register_best_student("kd", trained(60.0, 58.0), "val_acc")
    _, moved = register_best_student("hint", trained(60.0, 65.0), "val_acc")
    assert moved == [] and holder(client).version == first


def test_a_choice_made_on_test_never_competes_with_one_made_on_validation(client):
    """A run without a validation split chose on test (chosen_by=test_acc): its score is not
    comparable with a validation score, so a choice made on validation is measured only
    against other choices made on validation."""
    on_test = {k: v for k, v in trained(0.0, 99.0).items() if k != "val_acc"}
    register_best_student("hint", on_test, "test_acc")
    on_val, moved = register_best_student("kd", trained(60.0, 58.0), "val_acc")
    assert moved == [data_alias(DATA), "best"] and holder(client).version == on_val
    _, moved = register_best_student("cosine", trained(59.0, 70.0), "val_acc")
    assert moved == [] and holder(client).version == on_val


def test_a_model_of_other_data_never_takes_best(client):
    first, _ = register_best_student("kd", trained(40.0, 40.0), "val_acc")
    other, moved = register_best_student("kd", trained(90.0, 90.0, OTHER_DATA), "val_acc")
    assert moved == [data_alias(OTHER_DATA)]
    assert holder(client).version == first
    assert holder(client, data_alias(OTHER_DATA)).version == other


def test_an_already_registered_model_reuses_its_version(client):
    record = trained(60.0, 58.0)
    first, _ = register_best_student("kd", record, "val_acc")
    again, moved = register_best_student("kd", record, "val_acc")
    assert again == first and moved == []
    assert len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'")) == 1


def exported() -> tuple[str, str]:
    """(model id, run id) of a model logged by its own run, as stage export logs the ONNX one."""
    import mlflow

    with mlflow.start_run() as run:
        model = mlflow.initialize_logged_model(name="model")
    return model.model_id, run.info.run_id


def test_the_onnx_model_follows_the_same_rules_and_a_re_export_takes_over(client):
    def onnx_best(alias: str = "best") -> str:
        return client.get_model_version_by_alias(ONNX_REGISTERED_MODEL, alias).version

    kd = trained(60.0, 58.0)
    first, moved = register_best(ONNX_REGISTERED_MODEL, *exported(),
                                 version_tags("kd", kd, "val_acc"))
    assert moved == [data_alias(DATA), "best"] and onnx_best() == first
    again, moved = register_best(ONNX_REGISTERED_MODEL, *exported(),
                                 version_tags("kd", kd, "val_acc"))
    assert again != first and moved == [data_alias(DATA), "best"]  # the same student, anew
    _, moved = register_best(ONNX_REGISTERED_MODEL, *exported(),
                             version_tags("hint", trained(59.0, 70.0), "val_acc"))
    assert moved == [] and onnx_best() == again  # worse on validation
    other, moved = register_best(ONNX_REGISTERED_MODEL, *exported(),
                                 version_tags("kd", trained(90.0, 90.0, OTHER_DATA), "val_acc"))
    assert moved == [data_alias(OTHER_DATA)] and onnx_best() == again
    assert onnx_best(data_alias(OTHER_DATA)) == other
    assert client.search_model_versions(f"name = '{REGISTERED_MODEL}'") == []  # untouched


def test_a_concurrent_better_model_is_not_overwritten_by_a_worse_one(client, monkeypatch):
    """The race a lock-free registry must survive: a better model registers and takes the
    aliases between a worse one's read and its write."""
    import mlflow

    register_best_student("kd", trained(60.0, 58.0), "val_acc")
    better, set_alias = trained(62.0, 50.0), mlflow.MlflowClient.set_registered_model_alias

    def another_writer_first(self, *args):
        monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", set_alias)
        register_best_student("cosine", better, "val_acc")
        set_alias(self, *args)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", another_writer_first)
    register_best_student("hint", trained(61.0, 70.0), "val_acc")
    for alias in ("best", data_alias(DATA)):
        assert holder(client, alias).tags["mlflow_run_id"] == better["mlflow_run_id"]


def test_a_set_refused_because_another_writer_created_the_alias_first_reads_again(
        client, monkeypatch):
    """Against PostgreSQL two first-time sets of one alias race: the second insert is refused
    (a unique violation, HTTP 400). The refused writer reads again and the better model wins."""
    import mlflow

    better, set_alias = trained(62.0, 50.0), mlflow.MlflowClient.set_registered_model_alias

    def another_writer_inserts_first(self, *args):
        monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", set_alias)
        register_best_student("cosine", better, "val_acc")
        raise mlflow.MlflowException("duplicate key value violates unique constraint "
                                     '"registered_model_alias_pk"', error_code=BAD_REQUEST)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias",
                        another_writer_inserts_first)
    _, moved = register_best_student("hint", trained(61.0, 70.0), "val_acc")
    assert moved == []
    for alias in ("best", data_alias(DATA)):
        assert holder(client, alias).tags["mlflow_run_id"] == better["mlflow_run_id"]


def test_a_set_refused_for_another_reason_fails_at_once(client, monkeypatch):
    import mlflow

    calls = []

    def denied(self, *args):
        calls.append(args)
        raise mlflow.MlflowException("no permission", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", denied)
    with pytest.raises(mlflow.MlflowException, match="no permission"):
        register_best_student("kd", trained(60.0, 58.0), "val_acc")
    assert len(calls) == 1


def test_a_stage_run_logs_models_without_mlflows_racy_env_var_record(tmp_path, monkeypatch):
    """MLflow iterates the env var names it recorded during log_model while the system-metrics
    thread may add one ("Set changed size during iteration" failed export in CI): stage runs
    turn the record off, and a user's own choice stands."""
    from mlflow.environment_variables import MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING as RECORD

    from kdpipe.tracking.store import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING", raising=False)
    with stage_run("env-record", "student-42", {}):
        assert RECORD.get() is False
    monkeypatch.setenv("MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING", "true")
    with stage_run("env-record", "student-43", {}):
        assert RECORD.get() is True


def test_a_dataset_insert_beaten_by_a_parallel_stage_links_the_winner(tmp_path, monkeypatch):
    """Parallel stages against one PostgreSQL server each insert the same new dataset; all but
    the first are refused (a unique violation, HTTP 400). The refused stage logs it again,
    which links the dataset that won; any other refusal fails at once."""
    import mlflow

    from kdpipe.tracking.run_log import log_dataset
    from kdpipe.tracking.store import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    summary = {"source": "synthetic", "sha256": "ab" * 32}
    log_input, calls = mlflow.log_input, []

    def beaten_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise mlflow.MlflowException('duplicate key value violates unique constraint '
                                         '"dataset_pk"', error_code=BAD_REQUEST)
        return log_input(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", beaten_once)
    with stage_run("datasets", "prepare", {}) as run:
        log_dataset(summary, tmp_path.as_uri())
    [dataset] = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert len(calls) == 2 and dataset.dataset.digest == summary["sha256"][:16]

    def denied(*args, **kwargs):
        raise mlflow.MlflowException("no permission", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(mlflow, "log_input", denied)
    with stage_run("datasets", "prepare", {}), pytest.raises(mlflow.MlflowException):
        log_dataset(summary, tmp_path.as_uri())


def test_a_model_logged_to_another_store_is_not_registered_here(client, capsys):
    """A student restored from DVC's run-cache was logged where it trained (another machine's
    own store): this store cannot register it, says so, and leaves every alias alone."""
    first, _ = register_best_student("kd", trained(60.0, 58.0), "val_acc")
    elsewhere = {**trained(70.0, 70.0), "mlflow_model_id": "m-" + "0" * 32}
    version, moved = register_best_student("hint", elsewhere, "val_acc")
    assert version.startswith("none") and moved == [] and holder(client).version == first
    assert "was logged to another MLflow store" in capsys.readouterr().out
    assert len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'")) == 1
