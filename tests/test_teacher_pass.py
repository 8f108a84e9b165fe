"""A killed teacher pass resumes from its finished chunks, and only from its own."""
import contextlib

import pytest
import torch

from kdpipe.data.views import Views
from kdpipe.learn.models import DeepNN, Tapped
from kdpipe.learn.teacher_targets import compute_targets, remove_chunks

CPU = torch.device("cpu")
KEY, OTHER_KEY = "a" * 64, "b" * 64
CHUNK, BATCH = 300, 100  # 200 images x 4 views = 800 rows: chunks of 300, 300 and 200


class Killed(Exception):
    pass


class CountingTeacher:
    """The teacher, counting the rows it is run on; killed once it has run `dies_after` rows."""

    def __init__(self, teacher: Tapped, dies_after: int | None = None):
        self.teacher, self.dies_after, self.rows = teacher, dies_after, 0

    def eval(self):
        return self

    def forward_with_features(self, x):
        if self.dies_after is not None and self.rows >= self.dies_after:
            raise Killed
        self.rows += len(x)
        return self.teacher.forward_with_features(x)


@pytest.fixture
def setup(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the chunks go to ./.checkpoints
    torch.manual_seed(1)
    teacher = Tapped(DeepNN(), "features").eval()
    views = Views.make(42, 200, 4, CPU)

    def run(model, key):
        return compute_targets(model, tiny_data.train_x, tiny_data.normalize,
                               contextlib.nullcontext, views, batch=BATCH, resume_key=key,
                               chunk=CHUNK)
    return teacher, run, tmp_path / ".checkpoints"


def test_a_killed_pass_resumes_at_its_first_unfinished_chunk(setup):
    teacher, run, folder = setup
    whole = run(teacher, None)
    with pytest.raises(Killed):
        run(CountingTeacher(teacher, dies_after=400), KEY)  # in the second chunk
    assert len(list(folder.glob("*.pt"))) == 1  # the first chunk only

    resumed_teacher = CountingTeacher(teacher)
    resumed = run(resumed_teacher, KEY)
    assert resumed_teacher.rows == resumed.computed_rows == 800 - CHUNK
    assert torch.equal(resumed.logits, whole.logits) and torch.equal(resumed.maps, whole.maps)


def test_chunks_of_another_key_are_never_used_and_outlive_its_cleanup(setup):
    teacher, run, folder = setup
    run(teacher, OTHER_KEY)  # another pass's (other params, teacher or code) finished chunks
    fresh = CountingTeacher(teacher)
    assert run(fresh, KEY).computed_rows == fresh.rows == 800
    remove_chunks(KEY, folder)
    left = sorted(p.name for p in folder.glob("*.pt"))
    assert len(left) == 3 and all(OTHER_KEY[:16] in name for name in left)
