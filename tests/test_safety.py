import os
import pickle
import socket
import time

import pytest
import torch

from kdpipe.core.errors import TrackingError, UnsafeCheckpointError
from kdpipe.learn.checkpoint import safe_load
from kdpipe.tracking.store import probe


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        safe_load(path)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_a_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps(RunsCode()))
    with pytest.raises(UnsafeCheckpointError):
        safe_load(path)


def test_tensors_and_plain_types_load(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "config": {"lr": 0.1}, "classes": ["a"]}, path)
    assert safe_load(path)["config"] == {"lr": 0.1}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


def test_unreachable_tracking_server_is_detected_within_seconds():
    start = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable.*MLFLOW_TRACKING_URI"):
        probe(f"http://127.0.0.1:{closed_port()}")
    assert time.monotonic() - start < 5
