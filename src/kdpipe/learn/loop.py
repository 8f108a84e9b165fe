"""The one training loop. Teacher, baseline student and every distilled student go through
`fit`; they differ only in the objective and in where teacher outputs come from.

Data is already on the device as one normalised tensor per split; a batch is a gather by a
seeded permutation of indices (no DataLoader, no per-sample work).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kdpipe.core.config import TrainConfig
from kdpipe.core.errors import DivergedError
from kdpipe.core.progress import EpochProgress, NoBar, say
from kdpipe.core.runtime import Runtime
from kdpipe.data.prepared import augment, batch_order
from kdpipe.data.views import Views
from kdpipe.learn.checkpoint import Checkpoint
from kdpipe.learn.models import Tapped
from kdpipe.learn.objective import Objective, TeacherOutputs
from kdpipe.learn.state import TrainingState
from kdpipe.measure.evaluate import accuracy, predict, top1

TeacherSource = Callable[[torch.Tensor, torch.Tensor], TeacherOutputs]


@dataclass
class TrainData:
    train_x: torch.Tensor  # uint8 (N, 3, H, W) on the device, as prepared
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor    # held out of train; empty when data.val_fraction is 0
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    normalize: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch -> the model's input
    classes: int = 10      # the width of mixed labels (data.mix)

    def curve(self) -> tuple[str, torch.Tensor, torch.Tensor]:
        """What each epoch is evaluated on: the validation split if there is one, else (as in
        the tutorial) the test split."""
        if len(self.val_y):
            return "val_acc", self.val_x, self.val_y
        return "test_acc", self.test_x, self.test_y


@dataclass
class Trained:
    history: list[dict]    # per epoch: epoch, train_loss, val_acc or test_acc, seconds
    images_seen: int
    curve_acc: float       # the curve's accuracy (val_acc or test_acc) at the end
    test_acc: float        # on the test split, once, after the last epoch
    test_logits: torch.Tensor  # float32 (N test, classes), on the CPU: for fidelity metrics

    @property
    def train_seconds(self) -> float:  # time in training steps, evaluation excluded
        return sum(r["train_seconds"] for r in self.history)

    @property
    def eval_seconds(self) -> float:
        return sum(r["eval_seconds"] for r in self.history)


@dataclass
class Batches:
    """Where each step's input comes from: a batch of the training split in the seeded order,
    as its view for the epoch (data.views) or freshly augmented (data.augment), and the
    teacher's outputs on exactly that input."""
    data: TrainData
    batch_size: int
    teacher: TeacherSource | None = None
    views: Views | None = None
    augment: bool = False

    @property
    def per_epoch(self) -> int:
        return -(-len(self.data.train_y) // self.batch_size)

    def order(self, state: TrainingState) -> list[torch.Tensor]:
        return batch_order(len(self.data.train_y), self.batch_size, state.order_rng)

    def inputs(self, idx: torch.Tensor, shown: torch.Tensor | None, state: TrainingState):
        """(x, y, teacher outputs) of the training images `idx`; `shown`: each image's view
        this epoch."""
        data = self.data
        if self.views:
            keys = self.views.keys(idx, shown[idx])
            x = self.views.render(data.train_x, data.normalize, keys)
            y = self.views.labels(data.train_y, keys, data.classes)
        else:
            x, y, keys = data.normalize(data.train_x[idx]), data.train_y[idx], idx
            if self.augment:
                x = augment(x, state.augment_rng)
        return x, y, self.teacher(keys, x) if self.teacher else TeacherOutputs()


def fit(model: Tapped, objective: Objective, data: TrainData, cfg: TrainConfig,
        runtime: Runtime, seed: int, *, teacher: TeacherSource | None = None,
        augment_batches: bool = False, views: Views | None = None,
        checkpoint: Checkpoint | None = None,
        on_epoch: Callable[[dict], None] = lambda record: None,
        label: str | None = None) -> Trained:
    """Train `model` in place with Adam for `cfg.epochs` epochs, evaluating after each.

    Batch order depends only on `seed`, so every student sees the same batches; with `views`,
    epoch e shows each image the view that (seed, e) picks, and `teacher` is asked for its
    outputs on that view (the cache row `views.keys`). With a
    checkpoint, each finished epoch is saved and a rerun resumes after the last one. With a
    `label` (e.g. kd-43), progress is shown: a line per epoch, a bar on a terminal."""
    batches = Batches(data, cfg.batch_size, teacher, views, augment_batches)
    state = TrainingState.start(model, objective, cfg, seed, runtime.device, batches.per_epoch)
    saved = checkpoint.load() if checkpoint else None
    if saved:
        state.restore(saved)
        say(f"{label or 'model'}: resuming after epoch {len(state.history)} of {cfg.epochs} "
            f"from {checkpoint.path}")
    # Compiled for the full batch shape only: the last, smaller batch of an epoch runs eagerly
    # (the same maths), so the step compiles once instead of once per shape.
    forward = model.forward_with_features
    compiled = torch.compile(forward, dynamic=False) if runtime.compile else forward
    curve_name, curve_x, curve_y = data.curve()
    progress = EpochProgress(label, cfg.epochs, curve_name, len(state.history) + 1) \
        if label else None
    for epoch in range(len(state.history) + 1, cfg.epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(state, batches, epoch, seed, cfg, runtime, progress, compiled)
        train_done = time.perf_counter()
        record = {"epoch": epoch, "train_loss": loss,
                  curve_name: accuracy(model, curve_x, curve_y, data.normalize,
                                       runtime.autocast),
                  "train_seconds": train_done - start,
                  "eval_seconds": time.perf_counter() - train_done}
        state.history.append(record)
        on_epoch(record)  # before the checkpoint: a resumed run never misses an epoch's log
        if progress:
            progress.epoch_done(record, len(data.train_y))
        if checkpoint:
            checkpoint.save(state.snapshot())
    history = state.history
    curve_acc = history[-1][curve_name] if history else \
        accuracy(model, curve_x, curve_y, data.normalize, runtime.autocast)  # no epoch to train
    test_logits = predict(model, data.test_x, data.normalize, runtime.autocast)  # seen once
    return Trained(history, len(data.train_y) * len(history), curve_acc,
                   top1(test_logits, data.test_y.cpu()), test_logits)


def train_epoch(state: TrainingState, batches: Batches, epoch: int, seed: int,
                cfg: TrainConfig, runtime: Runtime, progress: EpochProgress | None,
                compiled: Callable) -> float:
    """One pass over the training split, `compiled` running the full batches; its mean
    loss."""
    model, objective = state.model, state.objective
    model.train()
    objective.train()
    losses = []
    order = batches.order(state)
    shown = batches.views.for_epoch(seed, epoch) if batches.views else None
    steps = progress.steps(epoch, len(order)) if progress else NoBar()
    for i, idx in enumerate(order):
        # The global step, a function of where training is, not of a counter: it survives
        # a resume.
        objective.start_step((epoch - 1) * batches.per_epoch + i + 1, batches.per_epoch)
        x, y, targets = batches.inputs(idx.to(runtime.device, non_blocking=True), shown, state)
        forward = compiled if len(idx) == cfg.batch_size else model.forward_with_features
        with runtime.autocast():
            logits, features = forward(x)
        # The objective outside autocast, on fp32 outputs: every softmax, log-softmax,
        # cross-entropy, KL and regressor runs in fp32 whatever the forward pass ran in.
        features = None if features is None else features.float()
        loss = objective(logits.float(), features, y, targets)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for group in state.optimizer.param_groups for p in group["params"]],
                cfg.grad_clip)
        state.optimizer.step()
        if state.scheduler:
            state.scheduler.step()
        losses.append(loss.detach())
        if len(losses) % FINITE_CHECK_EVERY == 0:
            check_finite(losses, epoch, cfg.lr)
        steps.update()
    steps.close()
    check_finite(losses, epoch, cfg.lr)  # also waits for the GPU: the epoch's time is real
    return torch.stack(losses).mean().item()


# Steps between checks for a NaN/inf loss. A check copies the losses to the host, which
# stalls the GPU; at ~1 ms a step for these small models, every 50 steps costs nothing
# measurable and a diverged run stops within a fraction of an epoch.
FINITE_CHECK_EVERY = 50


def check_finite(losses: list[torch.Tensor], epoch: int, lr: float) -> None:
    finite = torch.isfinite(torch.stack(losses))
    if not finite.all().item():
        step = int((~finite).nonzero()[0, 0])
        raise DivergedError(
            f"training diverged: loss is {losses[step].item()} at epoch {epoch}, step "
            f"{step + 1}. Try a lower learning rate (lr is {lr}) or smaller loss weights.")
