"""Stage `teacher_targets`: one pass of the frozen teacher over the training split (over each of
its data.views views per image), cached for the distill stages: logits, and the feature map at
teacher.feature_layer where a listed method reads features (data/teacher_needs.json, from
check_params: adding a method that reads only logits leaves this stage alone). With data.augment the
distill stages run the teacher live on each augmented batch, so there is nothing to compute:
the stage then writes only the cache's meta.json, in about a second."""
import math
import time

from kdpipe.core.config import Config, section
from kdpipe.core.files import folder_mb, read_upstream
from kdpipe.core.machine import environment
from kdpipe.core.paths import (
    METRICS_DIR,
    MIXING,
    PREPARED_DIR,
    TARGETS_DIR,
    TEACHER_NEEDS,
    model_file,
)
from kdpipe.core.progress import clock, say
from kdpipe.core.runtime import setup
from kdpipe.data.mixing import describe
from kdpipe.data.prepared import Normalize, Prepared, to_device
from kdpipe.data.sources import dataset_uri
from kdpipe.data.views import Views
from kdpipe.learn.checkpoint import load_teacher, stage_key
from kdpipe.learn.models import feature_shape
from kdpipe.learn.teacher_targets import (
    check_cache_fits,
    compute_targets,
    remove_chunks,
    save_targets,
)
from kdpipe.ops.stage import run_stage
from kdpipe.tracking import store
from kdpipe.tracking.run_log import link_teacher, log_dataset
from kdpipe.tracking.stage_record import recorded_stage

METRICS_FILE = METRICS_DIR / "teacher_targets.json"


def main(cfg: Config) -> None:
    prepared = Prepared(PREPARED_DIR)
    mixing = read_upstream(MIXING, "check_params")
    params = {**section(cfg, "device", "precision", "threads", "teacher.feature_layer",
                        "data.augment", "data.views", "data.mean", "data.std"), **mixing}
    if cfg.data.augment:
        with recorded_stage(cfg.mlflow.experiment, "teacher_targets", params,
                            METRICS_FILE) as stage:
            save_targets(TARGETS_DIR, {"data_sha256": prepared.digest, "live_teacher": True})
            stage.finish({"cached_samples": 0})
        say("data.augment is on: the distill stages run the teacher live on each augmented "
            "batch; nothing to cache")
        return
    runtime = setup(cfg)
    teacher, saved = load_teacher(model_file("teacher", cfg.seed), runtime.device,
                                  cfg.teacher.feature_layer)
    # Feature maps are 97% of a cache: stored only when a listed method distils features.
    needs = read_upstream(TEACHER_NEEDS, "check_params")["needs"]
    features = teacher.layer is not None and "features" in needs
    with recorded_stage(cfg.mlflow.experiment, "teacher_targets", params, METRICS_FILE,
                        env=environment(runtime)) as stage:
        log_dataset(prepared.summary, dataset_uri(prepared.summary["source"],
                                                  store.repo_root(), PREPARED_DIR))
        link_teacher(saved)
        images = to_device(prepared.splits["train"].images, runtime.device)
        views = Views.from_params(cfg.seed, len(images), cfg.data.views, runtime.device, mixing,
                                  prepared.image_size)
        rows = len(images) * (views.count if views else 1)
        shape = feature_shape(teacher, prepared.image_size) if features else None
        check_cache_fits(rows, len(prepared.classes), shape)
        say(f"teacher pass over {rows:,} training "
            f"{f'views ({views.count} per image)' if views else 'images'} in {runtime.precision}")
        start = time.perf_counter()
        normalize = Normalize(cfg.data.mean, cfg.data.std, runtime.device)
        resume_key = stage_key(runtime, params, prepared.digest, saved["mlflow_run_id"],
                               features)
        done = compute_targets(teacher, images, normalize, runtime.autocast, views, features,
                               resume_key=resume_key)
        save_targets(TARGETS_DIR, {"data_sha256": prepared.digest,
                                   "teacher_run_id": saved["mlflow_run_id"],
                                   "teacher_layer": teacher.layer, "views": cfg.data.views,
                                   "mix": describe(mixing)},
                     done.logits, done.maps)
        remove_chunks(resume_key)
        seconds = time.perf_counter() - start
        speed = done.computed_rows / seconds  # rows/s of this run; resumed rows cost it nothing
        stage.finish({"cached_samples": rows, "resumed_samples": rows - done.computed_rows,
                      "feature_values": math.prod(shape) if shape else 0,
                      "images_per_second": round(speed, 1),
                      # the cost of long schedules' many (mixed) views, comparable across K
                      "seconds_per_million_views": round(1e6 / speed, 1) if speed else 0.0,
                      "size_mb": round(folder_mb(TARGETS_DIR), 1)})
    say(f"teacher targets: {rows:,} rows ({rows - done.computed_rows:,} resumed) in "
        f"{clock(time.perf_counter() - start)} -> {TARGETS_DIR}")


if __name__ == "__main__":
    run_stage(main)
