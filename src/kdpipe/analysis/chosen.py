"""The student `compare` chose, named in a small file that stage `export` depends on.

DVC cannot take a dep's path from a file's content, so `export` cannot declare the chosen
models/<method>-<seed>.pt itself. `compare` writes instead which model it chose and that
model's training run (MLflow run and model ids, which the same stage execution also wrote into
the .pt): the file changes exactly when the chosen model does, so a change that leaves the
chosen model alone (another method retrained, a report edit) reruns `compare` but not `export`.
`export` checks that the .pt on disk carries the same run id before it reads it.
"""
from __future__ import annotations

from pathlib import Path

from kdpipe.core.paths import model_file

CHOSEN_FILE = Path("models/chosen.json")
# What the registry records about a version (kdpipe.tracking.registry.version_tags) and the lineage.
RECORD_KEYS = ("seed", "val_acc", "test_acc", "data_sha256", "mlflow_run_id", "mlflow_model_id")


def chosen(comparison: dict) -> dict:
    """The chosen student of `comparison` (kdpipe.analysis.report.collect): its method, how it was
    chosen, its model file and the identity of the run that trained it."""
    method, record = comparison["best_student"], comparison["best_run"]
    return {"method": method, "chosen_by": comparison["choose_by"],
            "file": model_file(method, record["seed"]).as_posix(),
            "record": {key: record[key] for key in RECORD_KEYS if key in record}}
