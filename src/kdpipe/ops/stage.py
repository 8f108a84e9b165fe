"""Entry-point wrapper for stages: params.yaml read once, for the stage's `main(cfg)`; expected
failures end in one clear line, not a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from kdpipe.core import errors
from kdpipe.core.config import Config, load_config
from kdpipe.tracking import store

EXPECTED = (errors.ConfigError, errors.DataError, errors.TrackingError, errors.DivergedError,
            errors.UnsafeCheckpointError)


def run_stage(main: Callable[[Config], object], track: bool = True) -> None:
    """Run a stage's `main` on the validated params: check the tracking store first if it
    records (seconds, not minutes of retries after the compute is spent), then turn expected
    failures into one line."""
    try:
        if track:
            store.probe(store.tracking_uri())
        main(load_config())
    except EXPECTED as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as err:
        missing = upstream_output(err.filename)
        if missing is None:
            raise
        print(f"error: {missing} is missing: a stage this one depends on writes it; "
              "`dvc repro` runs them in order", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun `dvc repro` to resume from the last finished epoch",
              file=sys.stderr)
        sys.exit(130)


def upstream_output(filename: str | None) -> Path | None:
    """A missing file inside the workspace, relative to it: an output of a stage that has not
    run (a stage script run by hand, out of order). None for anything else (a missing program,
    a file elsewhere), which is not the user's input to name."""
    if not filename:
        return None
    path, workspace = Path(filename).resolve(), Path.cwd().resolve()
    return path.relative_to(workspace) if path.is_relative_to(workspace) else None
