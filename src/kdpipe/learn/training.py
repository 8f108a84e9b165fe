"""What a training stage does, start to finish: the same for teacher, baseline student and the
distilled students. Stages call `train_model` with the model's name and its objective."""
from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdpipe.core.config import Config, DataConfig, TrainConfig
from kdpipe.core.files import write_text, write_with
from kdpipe.core.machine import environment
from kdpipe.core.paths import (
    PREPARED_DIR,
    model_file,
    plot_files,
    prediction_file,
    seed_metrics_file,
)
from kdpipe.core.runtime import Runtime
from kdpipe.data.prepared import Normalize, Prepared, to_device
from kdpipe.data.sources import dataset_uri
from kdpipe.data.views import Views
from kdpipe.learn.checkpoint import Checkpoint, save_tensors, stage_key
from kdpipe.learn.loop import TeacherSource, TrainData, Trained, fit
from kdpipe.learn.models import Tapped, build_model, count_params, default_feature_layer
from kdpipe.learn.objective import Objective
from kdpipe.measure.fidelity import expected_calibration_error
from kdpipe.measure.inference import inference_cost
from kdpipe.tracking import store
from kdpipe.tracking.run_log import link_teacher, log_dataset, log_epoch, log_model
from kdpipe.tracking.stage_record import recorded_stage


@dataclass
class ModelSpec:
    name: str              # teacher | student | a method (kd, cosine, ...)
    seed: int              # initial weights, batch order, dropout
    role: str              # teacher | student: the params section of its architecture
    train: TrainConfig     # architecture, epochs, lr, batch size, schedule
    params: dict           # the params sections this stage reads, logged and saved as config
    init: dict | None = None  # weights to start from (a pretrained teacher), else random
    tags: dict = field(default_factory=dict)  # more MLflow tags (lineage)
    description: str = ""  # what the report calls it, e.g. "soft-target KD"
    control: bool = False  # a baseline recipe that is not plain training (the sweep's baselines)
    mixing: dict | None = None  # students: how their views are mixed (data/mixing.json)

    @property
    def run_name(self) -> str:  # what the MLflow runs list shows, e.g. kd-43
        return f"{self.name}-{self.seed}"


def load_data(prepared: Prepared, data_cfg: DataConfig, device: torch.device) -> TrainData:
    tensors = []
    for split in ("train", "val", "test"):
        images, labels = prepared.splits[split].images, prepared.splits[split].labels
        tensors += [to_device(images, device), torch.from_numpy(labels).to(device)]
    return TrainData(*tensors, Normalize(data_cfg.mean, data_cfg.std, device),
                     len(prepared.classes))


def view_count(role: str, cfg: Config) -> int:
    """How many views per image a model trains on: the teacher its own teacher.views, students
    data.views (all the teacher's outputs were cached on). So more views for students retrain
    no teacher."""
    return cfg.teacher.views if role == "teacher" else cfg.data.views


def model_views(spec: ModelSpec, cfg: Config, images: int, device: torch.device,
                size: int) -> Views | None:
    """The views a model trains on (view_count), mixed as its spec says (students only)."""
    return Views.from_params(cfg.seed, images, view_count(spec.role, cfg), device, spec.mixing,
                             size)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators, from one seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seeded_model(train: TrainConfig, role: str, seed: int, num_classes: int,
                 image_size: int = 32) -> Tapped:
    """Same seed -> same initial weights (and dropout masks after), whichever method trains;
    tapped at its feature layer (params `<role>.feature_layer`, else the architecture's)."""
    seed_everything(seed)
    model = build_model(train.arch, num_classes, image_size, key=f"{role}.arch")
    layer = train.feature_layer or default_feature_layer(model)
    return Tapped(model, layer, key=f"{role}.feature_layer")


def seeded_student(arch: str, seed: int, num_classes: int) -> Tapped:
    """The tutorial-style call: an architecture by name, its default feature layer."""
    return seeded_model(TrainConfig(1, 1e-3, 1, arch=arch), "student", seed, num_classes)


def train_model(spec: ModelSpec, cfg: Config, runtime: Runtime, objective: Objective,
                prepared: Prepared, teacher: TeacherSource | None = None,
                teacher_saved: dict | None = None) -> dict:
    """Train one model and write models/<name>-<seed>.pt, its record
    metrics/seeds/<name>-<seed>.json (metrics, curve, MLflow ids: all `compare` reads) and
    plots/{loss,accuracy}/<name>-<seed>.csv. `teacher` supplies teacher outputs per batch;
    `teacher_saved` is the teacher's saved checkpoint, recorded as this model's lineage."""
    data = load_data(prepared, cfg.data, runtime.device)
    model = seeded_model(spec.train, spec.role, spec.seed, len(prepared.classes),
                         prepared.image_size)
    if spec.init is not None:
        model.model.load_state_dict(spec.init)
    model = model.to(runtime.device, memory_format=torch.channels_last)
    objective = objective.to(runtime.device)
    objective.label_smoothing = spec.train.label_smoothing
    inputs = {f"teacher_{k}": teacher_saved[f"mlflow_{k}"] for k in ("run_id", "model_id")} \
        if teacher_saved else {}
    key = stage_key(runtime, spec.name, spec.seed, spec.params, prepared.digest, inputs)
    checkpoint = Checkpoint(spec.run_name, key)
    resumed = checkpoint.load()
    run_id = resumed["mlflow_run_id"] if resumed else None
    # Tag `model` (teacher, student, kd, ...): "Group by" it in the UI to see each model's
    # curves over its seeds as one line with a band.
    with recorded_stage(cfg.mlflow.experiment, spec.run_name, spec.params,
                        seed_metrics_file(spec.name, spec.seed), env=environment(runtime),
                        run_id=run_id, tags={"model": spec.name, **spec.tags}) as stage:
        run = stage.run
        checkpoint.extra = {"mlflow_run_id": run.info.run_id}
        if run_id is None:
            log_dataset(prepared.summary, dataset_uri(prepared.summary["source"],
                                                      store.repo_root(), PREPARED_DIR))
            if teacher_saved:
                link_teacher(teacher_saved)
        views = model_views(spec, cfg, len(data.train_y), runtime.device, prepared.image_size)
        result = fit(model, objective, data, spec.train, runtime, spec.seed, teacher=teacher,
                     augment_batches=cfg.data.augment, views=views, checkpoint=checkpoint,
                     on_epoch=log_epoch, label=spec.run_name)
        ids = {"mlflow_run_id": run.info.run_id,
               "mlflow_model_id": log_model(model.model, prepared.image_size)}
        saved_file = model_file(spec.name, spec.seed)
        save_tensors(saved_file, {"arch": spec.train.arch, "image_size": prepared.image_size,
                                  "state_dict": model.model.state_dict(),
                                  "classes": prepared.classes, "config": spec.params,
                                  "data_sha256": prepared.digest, "inputs": inputs, **ids})
        curve = data.curve()[0]
        write_with(prediction_file(spec.name, spec.seed),
                   lambda tmp: np.save(tmp, result.test_logits.numpy()))
        metrics = stage.finish(
            final_metrics(spec, model, result, curve, saved_file, runtime,
                          prepared.image_size, data.test_y.cpu()),
            extra={**ids, "description": spec.description, "control": spec.control,
                   "data_sha256": prepared.digest,
                   "curve": curve, "history": [{k: r[k] for k in ("epoch", "train_loss", curve)}
                                               for r in result.history]})
        write_curves(plot_files(spec.name, spec.seed), result.history, curve)
    checkpoint.remove()
    return metrics


def final_metrics(spec: ModelSpec, model: Tapped, result: Trained, curve: str,
                  saved_file: Path, runtime: Runtime, image_size: int,
                  test_labels: torch.Tensor) -> dict:
    speed = result.images_seen / result.train_seconds if result.train_seconds else 0.0
    return {
        "seed": spec.seed,
        "precision": runtime.precision,  # what it trained and was evaluated in
        "test_acc": result.test_acc,
        **({curve: result.curve_acc} if curve != "test_acc" else {}),
        "test_ece": expected_calibration_error(result.test_logits, test_labels),
        "num_params": count_params(model),
        "epochs": len(result.history),
        "train_seconds": round(result.train_seconds, 2),
        "eval_seconds": round(result.eval_seconds, 2),
        "train_images_per_second": round(speed, 1),
        **inference_cost(model.model, saved_file, runtime.device, image_size,
                         bf16=runtime.precision == "bf16"),
    }


def write_curves(files: dict[str, Path], history: list[dict], curve: str) -> None:
    """plots/loss/*.csv (epoch, train_loss) and plots/accuracy/*.csv (epoch, accuracy: on the
    validation split, or on test without one, as `curve` says)."""
    columns = {"loss": ("train_loss", "train_loss"), "accuracy": (curve, "accuracy")}
    for kind, path in files.items():
        key, header = columns[kind]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["epoch", header])
        writer.writerows([r["epoch"], r[key]] for r in history)
        write_text(path, out.getvalue())
