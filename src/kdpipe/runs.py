"""What a training stage does, start to finish: the same for teacher, baseline student and the
distilled students. Stages call `train_model` with the model's name and its objective."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import torch

from kdpipe import tracking
from kdpipe.checkpoint import Checkpoint, run_key
from kdpipe.config import Config, TrainConfig, flat
from kdpipe.data import Prepared, to_device
from kdpipe.files import write_json, write_text, write_with
from kdpipe.inference import inference_cost
from kdpipe.losses import Objective
from kdpipe.models import ConvNet, build_model, count_params
from kdpipe.paths import METRICS_DIR, MODELS_DIR, PLOTS_DIR, PREPARED_DIR
from kdpipe.runtime import Runtime, environment, stage_cost
from kdpipe.train import TeacherSource, TrainData, fit


@dataclass
class ModelSpec:
    name: str              # teacher | student | kd | cosine | hint
    arch: str              # DeepNN | LightNN
    train: TrainConfig     # epochs, lr, batch size
    params: dict           # the params sections this stage reads, logged and saved as config


def load_data(prepared: Prepared, device: torch.device) -> TrainData:
    train, test = prepared.splits["train"], prepared.splits["test"]
    return TrainData(to_device(train.images, device), torch.from_numpy(train.labels).to(device),
                     to_device(test.images, device), torch.from_numpy(test.labels).to(device))


def seeded_student(arch: str, seed: int, num_classes: int) -> ConvNet:
    """Same seed -> same initial weights, whichever method trains the model."""
    torch.manual_seed(seed)
    return build_model(arch, num_classes)


def train_model(spec: ModelSpec, cfg: Config, runtime: Runtime, objective: Objective,
                prepared: Prepared, teacher: TeacherSource | None = None,
                teacher_saved: dict | None = None) -> dict:
    """Train one model and write models/<name>.pt, metrics/<name>.json, plots/<name>.csv.
    `teacher` supplies teacher outputs per batch; `teacher_saved` is the teacher's saved
    checkpoint, recorded as this model's lineage."""
    data = load_data(prepared, runtime.device)
    model = seeded_student(spec.arch, cfg.seed, len(prepared.classes))
    model = model.to(runtime.device, memory_format=torch.channels_last)
    objective = objective.to(runtime.device)
    inputs = {f"teacher_{k}": teacher_saved[f"mlflow_{k}"] for k in ("run_id", "model_id")} \
        if teacher_saved else {}
    key = run_key(spec.name, spec.params, prepared.digest, inputs, cfg.device, cfg.threads)
    checkpoint = Checkpoint(spec.name, key)
    resumed = checkpoint.load()
    run_id = resumed["mlflow_run_id"] if resumed else None
    with tracking.stage_run(cfg.mlflow.experiment, spec.name, flat(spec.params), run_id) as run:
        checkpoint.extra = {"mlflow_run_id": run.info.run_id}
        if run_id is None:
            tracking.log_dataset(prepared.summary, PREPARED_DIR)
            if teacher_saved:
                tracking.link_teacher(teacher_saved)
        result = fit(model, objective, data, spec.train, runtime, cfg.seed, teacher=teacher,
                     augment_batches=cfg.data.augment, checkpoint=checkpoint,
                     on_epoch=tracking.log_epoch)
        model_id = tracking.log_model(model)
        saved = {"arch": spec.arch, "state_dict": model.state_dict(), "classes": prepared.classes,
                 "config": spec.params, "data_sha256": prepared.digest, "inputs": inputs,
                 "mlflow_run_id": run.info.run_id, "mlflow_model_id": model_id}
        model_file = MODELS_DIR / f"{spec.name}.pt"
        write_with(model_file, lambda tmp: torch.save(saved, tmp))
        metrics = {
            "test_acc": result.history[-1]["test_acc"],
            "num_params": count_params(model),
            "epochs": len(result.history),
            "train_seconds": round(result.train_seconds, 2),
            "eval_seconds": round(result.eval_seconds, 2),
            "train_images_per_second": round(result.images_seen / result.train_seconds, 1),
            **inference_cost(model, model_file, runtime.device, runtime.autocast),
            **stage_cost(),
        }
        tracking.log_final(metrics, environment(runtime))
        write_json(METRICS_DIR / f"{spec.name}.json", metrics)
        write_text(PLOTS_DIR / f"{spec.name}.csv", history_csv(result.history))
    checkpoint.remove()
    return metrics


def history_csv(history: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["epoch", "train_loss", "test_acc"],
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()
