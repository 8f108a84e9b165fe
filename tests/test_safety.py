import os
import pickle
import socket
import sys
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


def test_the_checkpoint_key_changes_with_each_thing_a_resumed_stage_must_match(tmp_path):
    """A killed stage resumes only a checkpoint made from the same model, seed, params, data,
    teacher, device, precision, threads and code: each changes the key (checkpoint.run_key),
    as the training stage passes them."""
    from kdpipe.learn.checkpoint import run_key

    script = tmp_path / "stage.py"
    script.write_text("# a stage\n")
    inputs = {"name": "kd", "seed": 42, "params": {"distill.kd": {"temperature": 4.0}},
              "data": "data-sha", "teacher": {"teacher_run_id": "r1"}, "device": "cpu",
              "precision": "fp32", "threads": 2}
    key = run_key(*inputs.values(), files=[script])
    assert run_key(*inputs.values(), files=[script]) == key
    others = {"name": "dist", "seed": 43, "params": {"distill.kd": {"temperature": 2.0}},
              "data": "other-sha", "teacher": {"teacher_run_id": "r2"}, "device": "cuda",
              "precision": "bf16", "threads": 1}
    for part, other in others.items():
        changed = {**inputs, part: other}
        assert run_key(*changed.values(), files=[script]) != key, part
    script.write_text("# a stage, edited\n")
    assert run_key(*inputs.values(), files=[script]) != key, "its code"


def test_a_stage_key_adds_the_runtime_and_the_stage_script(tmp_path, monkeypatch):
    """checkpoint.stage_key, what the training stages and teacher_targets key their resumable
    state by: run_key of their parts and of the device type, precision, threads and script."""
    from kdpipe.core.runtime import Runtime
    from kdpipe.learn.checkpoint import run_key, stage_key

    script = tmp_path / "stage.py"
    script.write_text("# a stage\n")
    monkeypatch.setattr(sys, "argv", [str(script)])
    fp32 = Runtime(torch.device("cpu"), None, False)
    key = stage_key(fp32, "kd", 42)
    assert key == run_key("kd", 42, "cpu", "fp32", torch.get_num_threads(), files=[script])
    assert stage_key(Runtime(torch.device("cpu"), torch.bfloat16, False), "kd", 42) != key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert stage_key(fp32, "kd", 42) != key
    finally:
        torch.set_num_threads(threads)
    script.write_text("# a stage, edited\n")
    assert stage_key(fp32, "kd", 42) != key
