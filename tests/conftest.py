"""Shared fixtures: tiny synthetic data, a CPU runtime and paths to the project."""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
sys.path.insert(0, str(ROOT / "src"))  # the workspace's code, even without an install

from kdpipe.core.runtime import Runtime  # noqa: E402
from kdpipe.data.prepared import MEAN, STD, Normalize, to_device  # noqa: E402
from kdpipe.data.sources import make_synthetic  # noqa: E402
from kdpipe.learn.loop import TrainData  # noqa: E402


@pytest.fixture(autouse=True)
def process_state_restored():
    """Each test leaves the process as it found it: environment, MLflow's tracking URI (which
    MLflow mirrors into the environment), sys.path, and no module imported from a test's temp
    folder (a user's model builder, say) stays importable by the next test."""
    env, path, modules = dict(os.environ), list(sys.path), set(sys.modules)
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != env.get("MLFLOW_TRACKING_URI") \
            and "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(env.get("MLFLOW_TRACKING_URI"))
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = path
    homes = (str(ROOT), sys.prefix, sys.base_prefix)
    for name in set(sys.modules) - modules:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if file and not file.startswith(homes):
            del sys.modules[name]


@pytest.fixture(scope="session", autouse=True)
def no_warm_process_outlives_the_run():
    """Ends every warm stage launcher the run's pipelines started (tests.project.WARM_DIR)."""
    import psutil

    from tests.project import WARM_DIR

    yield
    for process in psutil.process_iter(["cmdline"]):
        if str(WARM_DIR) in " ".join(process.info["cmdline"] or []):
            process.terminate()
    shutil.rmtree(WARM_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic():
    return make_synthetic(seed=0)


@pytest.fixture
def cpu() -> Runtime:
    return Runtime(torch.device("cpu"), None, False)


@pytest.fixture
def tiny_data(synthetic) -> TrainData:
    """200 training and 100 test images, preloaded as the training stages do."""
    train, test = synthetic["train"], synthetic["test"]
    device = torch.device("cpu")
    return TrainData(to_device(train.images[:200], device), torch.from_numpy(train.labels[:200]),
                     to_device(train.images[:0], device), torch.from_numpy(train.labels[:0]),
                     to_device(test.images[:100], device), torch.from_numpy(test.labels[:100]),
                     Normalize(MEAN, STD, device))


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def weights(model: torch.nn.Module) -> torch.Tensor:
    """All of `model`'s parameters as one flat tensor, to compare two trainings bit for bit."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """The project after one quick `dvc repro` (tests.project.QUICK). Shared and read-only:
    a test that changes anything works on its own `clone(built, tmp_path / ...)`."""
    from tests.project import QUICK, clean_env, copy_project, edit_params, sh

    repo = copy_project(tmp_path_factory.mktemp("built"))
    edit_params(repo, QUICK)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "quick"], repo)
    # Sample system metrics often: the quick run's stages last about a second each.
    env = {**clean_env(), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}
    (repo / "repro.log").write_text(sh(["dvc", "repro"], repo, env))
    sh(["git", "add", "dvc.lock"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], repo)
    before = digests(repo)
    yield repo
    after = digests(repo)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"tests changed the shared `built` project (clone it first): {changed}"


# What reading a project may touch: DVC's and git's own caches of what they looked at.
NOT_CONTENT = (".dvc/tmp", ".git/index")


def digests(repo: Path) -> dict[str, str]:
    """sha256 of every file of `repo` but NOT_CONTENT, by path."""
    return {rel: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in repo.rglob("*") if path.is_file() and not path.is_symlink()
            for rel in [path.relative_to(repo).as_posix()]
            if not rel.startswith(NOT_CONTENT) and "__pycache__" not in rel}
