"""Stage `teacher_targets`: one pass of the frozen teacher over the training split, cached
for the distill stages (logits and last feature map per sample). With data.augment the
distill stages run the teacher live on each augmented batch, so there is nothing to compute:
the stage then writes only the cache's meta.json, in about a second."""
import math
import time

from kdpipe import tracking
from kdpipe.checkpoint import load_teacher
from kdpipe.cli import run_stage
from kdpipe.config import load_config, section
from kdpipe.data import Normalize, Prepared, to_device
from kdpipe.files import folder_mb, write_json
from kdpipe.models import feature_shape
from kdpipe.paths import METRICS_DIR, PREPARED_DIR, TARGETS_DIR, model_file
from kdpipe.progress import clock, say
from kdpipe.runtime import environment, setup, stage_cost
from kdpipe.targets import check_cache_fits, compute_targets, save_targets


def main() -> None:
    cfg = load_config()
    prepared = Prepared(PREPARED_DIR)
    if cfg.data.augment:
        save_targets(TARGETS_DIR, {"data_sha256": prepared.digest, "live_teacher": True})
        write_json(METRICS_DIR / "teacher_targets.json", {"cached_samples": 0, **stage_cost()})
        print("data.augment is on: the distill stages run the teacher live on each augmented "
              "batch; nothing to cache")
        return
    runtime = setup(cfg)
    teacher, saved = load_teacher(model_file("teacher", cfg.seed), runtime.device,
                                  cfg.teacher.feature_layer)
    params = section(cfg, "device", "precision", "threads", "teacher.feature_layer",
                     "data.augment", "data.mean", "data.std")
    with tracking.stage_run(cfg.mlflow.experiment, "teacher_targets", params):
        tracking.log_dataset(prepared.summary, PREPARED_DIR)
        tracking.link_teacher(saved)
        images = to_device(prepared.splits["train"].images, runtime.device)
        shape = feature_shape(teacher, prepared.image_size) if teacher.layer else None
        check_cache_fits(len(images), len(prepared.classes), shape)
        say(f"teacher pass over {len(images):,} training images in {runtime.precision}")
        start = time.perf_counter()
        normalize = Normalize(cfg.data.mean, cfg.data.std, runtime.device)
        logits, features = compute_targets(teacher, images, normalize, runtime.autocast)
        save_targets(TARGETS_DIR, {"data_sha256": prepared.digest,
                                   "teacher_run_id": saved["mlflow_run_id"],
                                   "teacher_layer": teacher.layer}, logits, features)
        metrics = {"cached_samples": len(logits),
                   "feature_values": math.prod(shape) if shape else 0,
                   "images_per_second": round(len(logits) / (time.perf_counter() - start), 1),
                   "size_mb": round(folder_mb(TARGETS_DIR), 1), **stage_cost()}
        tracking.log_final(metrics, environment(runtime))
        write_json(METRICS_DIR / "teacher_targets.json", metrics)
    say(f"teacher targets: {len(logits):,} samples in {clock(time.perf_counter() - start)} "
        f"-> {TARGETS_DIR}")


if __name__ == "__main__":
    run_stage(main)
