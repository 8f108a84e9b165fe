"""The warm process's own checks (kdpipe.ops.warm): what it leaves behind after its imports, and
when it refuses to fork."""
import os
import subprocess
import sys

from tests.conftest import ROOT

OPS = ROOT / "src" / "kdpipe" / "ops"  # warm.py imports by plain name from its own folder


def test_a_warm_process_with_cuda_initialised_does_not_fork(monkeypatch):
    import torch

    from kdpipe.ops import warm

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert "initialised CUDA" in warm.fork_hazard()


def test_the_preload_leaves_one_thread_no_cuda_and_no_telemetry():
    """The real preload (about 10 s on 2 cores), with MLflow's telemetry as outside pytest."""
    check = ("import sys, threading; sys.path.insert(0, sys.argv[1]); import warm; "
             "warm.preload(); import torch, mlflow.telemetry as t; print(threading.active_count(), "
             "torch.cuda.is_initialized(), t.get_telemetry_client(), warm.fork_hazard())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_CURRENT_TEST", "CI") and not k.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", check, str(OPS)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["1", "False", "None", "None"], done.stderr
