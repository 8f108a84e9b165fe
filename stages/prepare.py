"""Stage `prepare`: read data.source once, write data/prepared (uint8 arrays + summary)."""
from kdpipe import tracking
from kdpipe.cli import run_stage
from kdpipe.config import flat, load_config, section
from kdpipe.data import prepare
from kdpipe.files import write_json
from kdpipe.paths import METRICS_DIR, PREPARED_DIR
from kdpipe.runtime import stage_cost

# What prepare reads (dvc.yaml declares exactly these): not data.augment, which applies per batch.
PREPARE_KEYS = ("data.source", "data.limit_train", "data.limit_test", "data.val_fraction",
                "data.image_size")


def main() -> None:
    cfg = load_config()
    summary = prepare(cfg.data, cfg.seed, tracking.repo_root(), PREPARED_DIR)
    params = flat(section(cfg, "seed", *PREPARE_KEYS))
    with tracking.stage_run(cfg.mlflow.experiment, "prepare", params):
        tracking.log_dataset(summary, PREPARED_DIR)
        tracking.log_summary(summary)
        metrics = stage_cost()
        tracking.log_final(metrics, {})
        write_json(METRICS_DIR / "prepare.json", metrics)
    for split, counts in summary["counts"].items():
        print(f"{split}: {sum(counts.values())} images, {len(counts)} classes")


if __name__ == "__main__":
    run_stage(main)
