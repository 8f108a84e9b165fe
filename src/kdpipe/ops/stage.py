"""Entry-point wrapper for stages: params.yaml read once, for the stage's `main(cfg)`; expected
failures end in one clear line, not a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable

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
    except KeyboardInterrupt:
        print("interrupted: rerun `dvc repro` to resume from the last finished epoch",
              file=sys.stderr)
        sys.exit(130)
