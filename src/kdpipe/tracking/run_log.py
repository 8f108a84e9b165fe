"""What a stage records in its MLflow run (opened by tracking.stage_record.recorded_stage):
the per-epoch curves, the final metrics and the machine, the data and the teacher it learned
from, the trained model, and the comparison."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

DATASET_ATTEMPTS = 3  # inserts of a dataset that a parallel stage's insert beat, then give up

# MLflow metric names are grouped by prefix, which the UI's chart view shows as sections,
# sorted, before the unprefixed "Model metrics": `epoch/` (the per-epoch learning curves, so
# they come first), `stage/` (a stage's costs and counts), `summary/` (the compare run's
# aggregates). The one number measured once per model, `test_acc`, keeps its plain name.
EPOCH_METRICS = ("train_loss", "val_acc", "test_acc")  # logged per epoch, step = epoch


def log_epoch(record: dict) -> None:
    import mlflow

    mlflow.log_metrics({f"epoch/{k}": record[k] for k in EPOCH_METRICS if k in record},
                       step=record["epoch"])


def log_final(metrics: dict, env: dict) -> None:
    """A stage's metrics file (per-epoch values are already logged, under `epoch/`), and the
    machine they were measured on."""
    import mlflow

    final = {k: v for k, v in metrics.items()  # seed: a param; precision: an env tag
             if k == "test_acc" or (k not in (*EPOCH_METRICS, "seed")
                                    and isinstance(v, (int, float)))}
    mlflow.log_metrics({k if k == "test_acc" else f"stage/{k}": float(v) for k, v in final.items()})
    mlflow.set_tags({f"env.{k}": v for k, v in env.items()})


def log_summary(summary: dict) -> None:
    import mlflow

    mlflow.log_dict(summary, "data_summary.json")
    mlflow.log_metrics({f"stage/{split}_images": sum(counts.values())
                        for split, counts in summary["counts"].items()})


def log_model(model, image_size: int = 32) -> str:
    """Log `model` (a CPU copy in eval mode) in MLflow's default pt2 format; return its model
    id. The example batch has 2 images: pt2 export freezes every dimension that is 1."""
    import mlflow
    import numpy as np
    import torch

    cpu_model = copy.deepcopy(model).cpu().eval()
    cpu_model = cpu_model.to(memory_format=torch.contiguous_format)
    example = np.zeros((2, 3, image_size, image_size), dtype=np.float32)
    info = mlflow.pytorch.log_model(
        cpu_model, name="model", input_example=example,
        # Explicit requirements: inferring them costs a subprocess (up to minutes) per model.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    return info.model_id


def link_teacher(saved_teacher: dict) -> None:
    """Record the teacher this run learned from: its logged model as a run input (so the UI
    links the two) and its run id as a tag."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    run_id = mlflow.active_run().info.run_id
    mlflow.MlflowClient().log_inputs(
        run_id, models=[LoggedModelInput(saved_teacher["mlflow_model_id"])])
    mlflow.set_tags({"teacher.run_id": saved_teacher["mlflow_run_id"],
                     "teacher.model_id": saved_teacher["mlflow_model_id"]})


def log_comparison(comparison: dict, files: list[Path], model_ids: list[str]) -> None:
    """The compare run: every model's metrics (as `summary/<model>.<metric>`), each method's gain,
    the report and its figures, and the compared models as inputs."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    numbers = {f"summary/{name}.{key}": value for name, row in comparison["models"].items()
               for key, value in row.items()}
    numbers |= {f"summary/{method}.gain_{key}": value
                for method, gain in comparison["gains"].items() for key, value in gain.items()}
    mlflow.log_metrics({k: float(v) for k, v in numbers.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    mlflow.set_tags({"best_student": comparison["best_student"],
                     "choose_by": comparison["choose_by"]})
    for path in files:
        mlflow.log_artifact(str(path))
    mlflow.MlflowClient().log_inputs(mlflow.active_run().info.run_id,
                                     models=[LoggedModelInput(m) for m in in_store(model_ids)])


def in_store(model_ids: list[str]) -> list[str]:
    """The logged models this store holds. A model restored from DVC's run-cache was logged
    where it was trained: the shared server, or another machine's own store (then it is not
    here, and this run can only name it in its records)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, found = mlflow.MlflowClient(), []
    for model_id in model_ids:
        try:
            client.get_logged_model(model_id)
            found.append(model_id)
        except MlflowException:
            print(f"note: model {model_id} was logged to another MLflow store; set "
                  "MLFLOW_TRACKING_URI to the shared server to link it", flush=True)
    return found


def log_dataset(summary: dict, uri: str, context: str = "training") -> None:
    """The prepared data as an MLflow dataset input: name, source (`uri`: where it came from,
    kdpipe.data.sources.dataset_uri) and digest."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    name = Path(summary["source"]).name.removesuffix(".tar.gz")
    with warnings.catch_warnings():  # MLflow registers two identical file-source classes
        warnings.simplefilter("ignore", UserWarning)
        source_obj = resolve_dataset_source(uri)
    dataset = MetaDataset(source_obj, name=name, digest=summary["sha256"][:16])
    for attempt in range(1, DATASET_ATTEMPTS + 1):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.MlflowException as err:
            # Parallel stages (`dvc queue start -j N`) against one server each insert the
            # dataset the store does not hold yet; the store refuses all but the first (a
            # unique violation, answered 400). Logged again, it links the one that won.
            if attempt == DATASET_ATTEMPTS or err.error_code != "BAD_REQUEST" \
                    or "unique" not in str(err).lower():
                raise
