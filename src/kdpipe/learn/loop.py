"""The one training loop. Teacher, baseline student and every distilled student go through
`fit`; they differ only in the objective and in where teacher outputs come from.

Data is already on the device as one normalised tensor per split; a batch is a gather by a
seeded permutation of indices (no DataLoader, no per-sample work).
"""
from __future__ import annotations

import math
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
from kdpipe.learn.losses import Objective, TeacherOutputs
from kdpipe.learn.models import Tapped
from kdpipe.measure.evaluate import accuracy, predict

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
    device = runtime.device
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=cfg.lr)
    steps_per_epoch = -(-len(data.train_y) // cfg.batch_size)
    scheduler = lr_schedule(optimizer, cfg, steps_per_epoch)
    order_rng = torch.Generator().manual_seed(seed)  # on CPU: same order on every device
    augment_rng = torch.Generator(device).manual_seed(seed + 1)
    forward = model.forward_with_features
    # Compiled for the full batch shape only: the last, smaller batch of an epoch runs eagerly
    # (the same maths), so the step compiles once instead of once per shape.
    compiled = torch.compile(forward, dynamic=False) if runtime.compile else forward
    history: list[dict] = []
    curve_name, curve_x, curve_y = data.curve()
    state = checkpoint.load() if checkpoint else None
    if state:
        restore(state, model, objective, optimizer, order_rng, augment_rng, device)
        if scheduler:
            scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        say(f"{label or 'model'}: resuming after epoch {len(history)} of {cfg.epochs} from "
            f"{checkpoint.path}")
    progress = EpochProgress(label, cfg.epochs, curve_name, len(history) + 1) if label else None
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        model.train()
        objective.train()
        start = time.perf_counter()
        losses = []
        batches = batch_order(len(data.train_y), cfg.batch_size, order_rng)
        shown = views.for_epoch(seed, epoch) if views else None
        steps = progress.steps(epoch, len(batches)) if progress else NoBar()
        for i, idx in enumerate(batches):
            # The global step, a function of where training is, not of a counter: it survives
            # a resume.
            objective.start_step((epoch - 1) * steps_per_epoch + i + 1, steps_per_epoch)
            idx = idx.to(device, non_blocking=True)
            x, y, keys = data.normalize(data.train_x[idx]), data.train_y[idx], idx
            if views:
                keys = views.keys(idx, shown[idx])
                x = views.apply(x, keys)
            elif augment_batches:
                x = augment(x, augment_rng)
            targets = teacher(keys, x) if teacher else TeacherOutputs()
            step = compiled if len(idx) == cfg.batch_size else forward
            with runtime.autocast():
                logits, features = step(x)
            # The objective outside autocast, on fp32 outputs: every softmax, log-softmax,
            # cross-entropy, KL and regressor runs in fp32 whatever the forward pass ran in.
            features = None if features is None else features.float()
            loss = objective(logits.float(), features, y, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler:
                scheduler.step()
            losses.append(loss.detach())
            if len(losses) % FINITE_CHECK_EVERY == 0:
                check_finite(losses, epoch, cfg.lr)
            steps.update()
        steps.close()
        check_finite(losses, epoch, cfg.lr)  # also waits for the GPU: the epoch's time is real
        train_done = time.perf_counter()
        record = {"epoch": epoch, "train_loss": torch.stack(losses).mean().item(),
                  curve_name: accuracy(model, curve_x, curve_y, data.normalize,
                                       runtime.autocast),
                  "train_seconds": train_done - start,
                  "eval_seconds": time.perf_counter() - train_done}
        history.append(record)
        on_epoch(record)  # before the checkpoint: a resumed run never misses an epoch's log
        if progress:
            progress.epoch_done(record, len(data.train_y))
        if checkpoint:
            checkpoint.save(snapshot(model, objective, optimizer, order_rng, augment_rng,
                                     device) | {"history": history} |
                            ({"scheduler": scheduler.state_dict()} if scheduler else {}))
    curve_acc = history[-1][curve_name] if history else \
        accuracy(model, curve_x, curve_y, data.normalize, runtime.autocast)  # no epoch to train
    test_logits = predict(model, data.test_x, data.normalize, runtime.autocast)  # seen once
    test_acc = 100.0 * (test_logits.argmax(1) == data.test_y.cpu()).double().mean().item()
    return Trained(history, len(data.train_y) * len(history), curve_acc, test_acc, test_logits)


def lr_schedule(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """The learning rate per step as a factor of `cfg.lr`: a linear warm-up over
    `cfg.warmup_epochs`, then constant or a cosine decay to 0 at the last step. None for the
    tutorial's constant rate without warm-up (Adam alone, as before schedules existed)."""
    if cfg.schedule == "constant" and not cfg.warmup_epochs:
        return None
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def snapshot(model, objective, optimizer, order_rng, augment_rng, device) -> dict:
    """Everything a resumed run needs to continue bit-identically, as CPU tensors."""
    return {"model": model.state_dict(), "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(), "order_rng": order_rng.get_state(),
            "augment_rng": augment_rng.get_state(), "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state()} if device.type == "cuda" else {})}


def restore(state, model, objective, optimizer, order_rng, augment_rng, device) -> None:
    model.load_state_dict(state["model"])
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the params' device
    order_rng.set_state(state["order_rng"])
    augment_rng.set_state(state["augment_rng"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"])
