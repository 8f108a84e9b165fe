"""The one way a stage records itself: its MLflow run opened with its params (flattened, as
DVC names them) and tags, and at the end its metrics with the stage's cost (wall time, peak
memory, the machine's other load), logged to the run and written to the stage's metrics file.
Every stage that records goes through `recorded_stage`; what else it logs is in run_log."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kdpipe.core.config import flat
from kdpipe.core.files import write_json
from kdpipe.core.machine import stage_cost
from kdpipe.tracking import store
from kdpipe.tracking.run_log import log_final


@dataclass
class StageRecord:
    run: object                   # the open mlflow.ActiveRun
    metrics_file: Path | None     # metrics/<stage>.json, or None where the stage writes its own
    env: dict = field(default_factory=dict)  # the machine, as MLflow `env.*` tags

    def finish(self, metrics: dict, extra: dict | None = None) -> dict:
        """`metrics` and the stage's cost, added last so that its wall time covers all the stage
        did; logged to the run and written, with `extra` (curves, ids), to the metrics file.
        Returns the metrics with the cost."""
        metrics = {**metrics, **stage_cost()}
        log_final(metrics, self.env)
        if self.metrics_file is not None:
            write_json(self.metrics_file, {**metrics, **(extra or {})})
        return metrics


@contextlib.contextmanager
def recorded_stage(experiment: str, name: str, params: dict, metrics_file: Path | None = None,
                   *, env: dict | None = None, run_id: str | None = None,
                   tags: dict | None = None) -> Iterator[StageRecord]:
    """Open stage `name`'s MLflow run (or continue `run_id`) with `params` (nested sections,
    logged flat) and `tags`; the run ends FINISHED, KILLED or FAILED as the block does."""
    with store.stage_run(experiment, name, flat(params), run_id, tags) as run:
        yield StageRecord(run, metrics_file, env or {})
