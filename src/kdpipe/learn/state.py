"""A training run's state: everything the loop changes as it goes (weights, the optimizer and
its schedule, the random generators, the per-epoch history), which a checkpoint saves after
each epoch and a resumed run restores, to continue bit for bit as if never stopped."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdpipe.core.config import TrainConfig
from kdpipe.learn.models import Tapped
from kdpipe.learn.objective import Objective


@dataclass
class TrainingState:
    model: Tapped
    objective: Objective  # holds trainable adapters too (the hint regressor)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    order_rng: torch.Generator    # batch order: on the CPU, so the same on every device
    augment_rng: torch.Generator  # fresh augmentation (data.augment), on the device
    history: list[dict]           # per finished epoch: loss, accuracy, seconds
    device: torch.device

    @classmethod
    def start(cls, model: Tapped, objective: Objective, cfg: TrainConfig, seed: int,
              device: torch.device, steps_per_epoch: int) -> TrainingState:
        """Adam over the model and the objective's adapters; batch order from `seed`, fresh
        augmentation from `seed + 1`."""
        optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=cfg.lr)
        return cls(model, objective, optimizer, lr_schedule(optimizer, cfg, steps_per_epoch),
                   torch.Generator().manual_seed(seed),
                   torch.Generator(device).manual_seed(seed + 1), [], device)

    def snapshot(self) -> dict:
        """Everything a resumed run needs to continue bit-identically, as CPU tensors."""
        return {"model": self.model.state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "order_rng": self.order_rng.get_state(),
                "augment_rng": self.augment_rng.get_state(), "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state()} if self.device.type == "cuda"
                   else {}),
                "history": self.history,
                **({"scheduler": self.scheduler.state_dict()} if self.scheduler else {})}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the device
        self.order_rng.set_state(state["order_rng"])
        self.augment_rng.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]


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
