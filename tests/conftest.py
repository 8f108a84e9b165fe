"""Shared fixtures: tiny synthetic data, a CPU runtime and paths to the project."""
from __future__ import annotations

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
    return repo
