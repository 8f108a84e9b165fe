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

Concurrent compare runs, on one machine or on many against one tracking server, need no lock:
each alias is computed from all registered versions, and set again until a read after the
last set finds nothing to change, so the last writer always decides with every version there.
Two writers creating the same alias at once: the store refuses the second insert (PostgreSQL:
a unique violation, answered 400); that writer reads again and decides with what won.
"""
from __future__ import annotations

import os

from kdpipe.tracking.run_log import in_store

REGISTERED_MODEL = "kd-student"
ONNX_REGISTERED_MODEL = "kd-student-onnx"
BEST_ALIAS = "best"
SET_ALIAS_ATTEMPTS = 5  # refused sets of an alias (another writer's insert won) before giving up
NOT_A_RACE = {"PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_DOES_NOT_EXIST"}  # fail at once


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


def best_on(versions: list, data_digest: str, chosen_by: str) -> str | None:
    """The version with the highest `chosen_by` score among those trained on `data_digest`
    and chosen the same way. A tie keeps the earlier trained model (only a strictly higher score
    displaces), but of one trained model's versions the newest counts (a re-export)."""
    newest: dict[str, object] = {}  # trained model (its run id) -> its newest version
    for v in versions:
        if v.tags.get("data_digest") == data_digest and v.tags.get("chosen_by") == chosen_by \
                and chosen_by in v.tags:
            run = v.tags.get("mlflow_run_id", str(v.version))
            if run not in newest or int(v.version) > int(newest[run].version):
                newest[run] = v
    first = {run: min(int(v.version) for v in versions
                      if v.tags.get("mlflow_run_id", str(v.version)) == run) for run in newest}
    best = min(newest.items(), key=lambda item: (-float(item[1].tags[chosen_by]),
                                                 first[item[0]]), default=None)
    return str(best[1].version) if best else None


def wanted_aliases(client, name: str, data_digest: str, chosen_by: str) -> tuple[dict, dict]:
    """(where the aliases of `name` point now, where they should, as version strings):
    `best-<digest>` at the best version on this data, `best` at the best on the data it is on
    (this data if it is on none)."""
    model = client.get_registered_model(name)
    held = {alias: str(v) for alias, v in model.aliases.items()}
    # Read after the holders, so that every version an alias holds is in the list.
    versions = list(client.search_model_versions(f"name = '{name}'"))
    tags = {str(v.version): v.tags for v in versions}
    best_data = tags.get(held[BEST_ALIAS], {}).get("data_digest") if BEST_ALIAS in held \
        else data_digest
    wanted = {data_alias(data_digest): best_on(versions, data_digest, chosen_by),
              BEST_ALIAS: best_on(versions, best_data, chosen_by) or held.get(BEST_ALIAS)}
    return held, wanted


def register_best_student(method: str, record: dict, chosen_by: str) -> tuple[str, list[str]]:
    """Register the chosen student (`record`: its metrics file) as a version of `kd-student`;
    see `register_best`."""
    return register_best(REGISTERED_MODEL, record["mlflow_model_id"], record["mlflow_run_id"],
                         version_tags(method, record, chosen_by))


def register_best(name: str, model_id: str, run_id: str, tags: dict) -> tuple[str, list[str]]:
    """Register logged model `model_id` (logged by run `run_id`) as a version of `name` with
    `tags` (`version_tags`: the trained model, its data and how it was chosen) and settle the
    aliases (see the module's docstring for why no lock is needed). Returns (version, aliases
    this call moved to it)."""
    import mlflow

    client = mlflow.MlflowClient()
    if not in_store([model_id]):
        return "none (its model is in another MLflow store)", []
    known = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    version = known[0].version if known else mlflow.register_model(
        f"models:/{model_id}", name, tags=tags).version
    moved: list[str] = []
    refused = 0
    while True:
        held, wanted = wanted_aliases(client, name, tags["data_digest"], tags["chosen_by"])
        changes = {alias: v for alias, v in wanted.items() if v and held.get(alias) != v}
        if not changes:
            return version, moved
        try:
            for alias, target in changes.items():
                client.set_registered_model_alias(name, alias, target)
                if target == str(version) and alias not in moved:
                    moved.append(alias)
        except mlflow.MlflowException as err:
            refused += 1
            if refused == SET_ALIAS_ATTEMPTS or err.error_code in NOT_A_RACE:
                raise
