"""The MLflow model registry: the chosen student of each comparison, and the aliases that point
at the best one.

Rules (the test set never chooses):
- A model is compared by its own score on the metric it was chosen by (`chosen_by`: val_acc,
  or test_acc only when there is no validation split), never by its method's mean.
- Scores are comparable only on the same data: a model never displaces one trained on other
  data (another data digest). Each data digest has its own alias `best-<digest[:12]>`, and
  `best` stays with the data it was first set on; moving it to other data is a user's explicit
  call (`MlflowClient().set_registered_model_alias("kd-student", "best", <version>)`).
- A model already registered (restored from DVC's run-cache) reuses its version; a newer
  version of the same trained model (its ONNX export, re-exported) takes over its aliases.

The same rules hold for every registered form of the chosen student: `kd-student` (the PyTorch
model its training stage logged) and `kd-student-onnx` (stage `export`'s ONNX model).
"""
from __future__ import annotations

import os

from kdpipe.tracking import in_store, store_lock

REGISTERED_MODEL = "kd-student"
ONNX_REGISTERED_MODEL = "kd-student-onnx"
BEST_ALIAS = "best"


def data_alias(data_digest: str) -> str:
    return f"{BEST_ALIAS}-{data_digest[:12]}"


def version_tags(method: str, record: dict, chosen_by: str) -> dict:
    """What the registered version records about itself and how it was chosen."""
    tags = {"method": method, "seed": str(record["seed"]), "chosen_by": chosen_by,
            "test_acc": str(record["test_acc"]), "data_digest": record["data_sha256"],
            "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "mlflow_run_id": record["mlflow_run_id"]}
    if "val_acc" in record:
        tags["val_acc"] = str(record["val_acc"])
    return tags


def beats(candidate: dict, holder, chosen_by: str) -> bool:
    """Whether `candidate` (version tags) should take an alias held by `holder` (a model
    version, or None): only on the same data, chosen the same way, and strictly better."""
    if holder is None:
        return True
    held = holder.tags
    if held.get("data_digest") != candidate["data_digest"]:
        return False
    if held.get("mlflow_run_id") == candidate["mlflow_run_id"]:
        return True  # the same trained model, registered again (exported anew): the newer wins
    if held.get("chosen_by") != chosen_by or chosen_by not in held:
        return True  # chosen another (older) way on the same data: not comparable, replace it
    return float(candidate[chosen_by]) > float(held[chosen_by])


def register_best_student(method: str, record: dict, chosen_by: str) -> tuple[str, list[str]]:
    """Register the chosen student (`record`: its metrics file) as a version of `kd-student`;
    see `register_best`."""
    return register_best(REGISTERED_MODEL, record["mlflow_model_id"], record["mlflow_run_id"],
                         version_tags(method, record, chosen_by))


def register_best(name: str, model_id: str, run_id: str, tags: dict) -> tuple[str, list[str]]:
    """Register logged model `model_id` (logged by run `run_id`) as a version of `name` with
    `tags` (`version_tags`: the trained model, its data and how it was chosen) and move the
    aliases it beats; checks and moves happen under the store lock, so parallel experiments
    cannot race past each other. Returns (version, aliases moved to it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    chosen_by = tags["chosen_by"]
    moved = []
    if not in_store([model_id]):
        return "none (its model is in another MLflow store)", moved
    with store_lock():
        known = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        version = known[0].version if known else mlflow.register_model(
            f"models:/{model_id}", name, tags=tags).version
        for alias in (data_alias(tags["data_digest"]), BEST_ALIAS):
            try:
                holder = client.get_model_version_by_alias(name, alias)
            except MlflowException:
                holder = None
            if holder is not None and holder.version == version:
                continue
            if beats(tags, holder, chosen_by):
                client.set_registered_model_alias(name, alias, version)
                moved.append(alias)
    return version, moved
