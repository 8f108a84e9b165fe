"""Stage `prepare`: read data.source once, write data/prepared (uint8 arrays + summary)."""
from kdpipe.core.config import Config, section
from kdpipe.core.paths import METRICS_DIR, PREPARED_DIR
from kdpipe.data.prepared import prepare
from kdpipe.data.sources import dataset_uri
from kdpipe.ops.stage import run_stage
from kdpipe.tracking import store
from kdpipe.tracking.run_log import log_dataset, log_summary
from kdpipe.tracking.stage_record import recorded_stage

# What prepare reads (dvc.yaml declares exactly these): not data.augment, which applies per batch.
PREPARE_KEYS = ("data.source", "data.limit_train", "data.limit_test", "data.val_fraction",
                "data.image_size")


def main(cfg: Config) -> None:
    summary = prepare(cfg.data, cfg.seed, store.repo_root(), PREPARED_DIR)
    with recorded_stage(cfg.mlflow.experiment, "prepare", section(cfg, "seed", *PREPARE_KEYS),
                        METRICS_DIR / "prepare.json") as stage:
        log_dataset(summary, dataset_uri(cfg.data.source, store.repo_root(), PREPARED_DIR))
        log_summary(summary)
        stage.finish({})
    for split, counts in summary["counts"].items():
        print(f"{split}: {sum(counts.values())} images, {len(counts)} classes")


if __name__ == "__main__":
    run_stage(main)
