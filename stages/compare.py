"""Stage `compare`: every model over its seeds -> metrics/<model>.json (mean, std, CI, per-seed
values, costs), metrics/comparison.json, reports/comparison.md and its figures, all also
logged to an MLflow run; registers the chosen student."""
from kdpipe import tracking
from kdpipe.checkpoint import safe_load
from kdpipe.cli import run_stage
from kdpipe.config import load_config
from kdpipe.figures import draw_all
from kdpipe.files import write_json, write_text
from kdpipe.paths import FIGURES, METRICS_DIR, REPORT, model_file
from kdpipe.report import MODELS, collect, markdown, summary_metrics


def main() -> None:
    cfg = load_config()
    comparison = collect(cfg.seed, cfg.seeds)
    for name, row in comparison["models"].items():
        write_json(METRICS_DIR / f"{name}.json", row)
    write_json(METRICS_DIR / "comparison.json", summary_metrics(comparison))
    write_text(REPORT, markdown(comparison))
    draw_all(comparison)
    saved = {(name, seed): safe_load(model_file(name, seed))
             for name in MODELS for seed in comparison["models"][name]["seeds"]}
    best = comparison["best_student"]
    best_saved = saved[best, comparison["best_seed"]]
    with tracking.stage_run(cfg.mlflow.experiment, "compare",
                            {"seeds": ",".join(map(str, cfg.seeds))}):
        tracking.log_comparison(comparison, [REPORT, *FIGURES.values()],
                                [s["mlflow_model_id"] for s in saved.values()])
        version, moved = tracking.register_best_student(
            best, best_saved, comparison["models"][best]["test_acc"])
    print(markdown(comparison))
    print(f"registered {best} (seed {comparison['best_seed']}) as {tracking.REGISTERED_MODEL} "
          f"version {version}; alias '{tracking.BEST_ALIAS}' "
          f"{'moved to it' if moved else 'kept on a better model'}")


if __name__ == "__main__":
    run_stage(main)
