"""Stage `prepare`: read data.source once, write data/prepared (uint8 arrays + summary)."""
from kdpipe.core.config import flat, load_config, section
from kdpipe.core.files import write_json
from kdpipe.core.machine import stage_cost
from kdpipe.core.paths import METRICS_DIR, PREPARED_DIR
from kdpipe.data.prepared import prepare
from kdpipe.data.sources import dataset_uri
from kdpipe.ops.stage import run_stage
from kdpipe.tracking import store
from kdpipe.tracking.run_log import log_dataset, log_final, log_summary

# What prepare reads (dvc.yaml declares exactly these): not data.augment, which applies per batch.
PREPARE_KEYS = ("data.source", "data.limit_train", "data.limit_test", "data.val_fraction",
                "data.image_size")


def main() -> None:
    cfg = load_config()
    summary = prepare(cfg.data, cfg.seed, store.repo_root(), PREPARED_DIR)
    params = flat(section(cfg, "seed", *PREPARE_KEYS))
    with store.stage_run(cfg.mlflow.experiment, "prepare", params):
        log_dataset(summary, dataset_uri(cfg.data.source, store.repo_root(), PREPARED_DIR))
        log_summary(summary)
        metrics = stage_cost()
        log_final(metrics, {})
        write_json(METRICS_DIR / "prepare.json", metrics)
    for split, counts in summary["counts"].items():
        print(f"{split}: {sum(counts.values())} images, {len(counts)} classes")


if __name__ == "__main__":
    run_stage(main)
