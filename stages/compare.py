"""Stage `compare`: every model over its seeds -> metrics/models.json (per model: mean, std,
CI, per-seed values, costs), metrics/comparison.json, reports/comparison.md and its figures,
all also logged to an MLflow run; registers the chosen student and names it in
models/chosen.json (what stage `export` ships). Reads only the per-seed records of the current
seeds and methods (metrics/seeds/<model>-<seed>.json): they hold the curves and MLflow ids
too."""
from kdpipe.analysis.chosen import CHOSEN_FILE, chosen
from kdpipe.analysis.figures import draw_all
from kdpipe.analysis.report import collect, markdown, read_runs, summary_metrics
from kdpipe.core.config import Config
from kdpipe.core.files import write_json, write_text
from kdpipe.core.paths import FIGURES, METRICS_DIR, REPORT
from kdpipe.ops.stage import run_stage
from kdpipe.tracking import registry, store
from kdpipe.tracking.run_log import log_comparison
from kdpipe.tracking.stage_record import recorded_stage


def main(cfg: Config) -> None:
    runs = read_runs(cfg.seed, cfg.seeds, cfg.distill.methods)
    comparison = collect(runs)
    write_json(METRICS_DIR / "models.json", comparison["models"])
    write_json(METRICS_DIR / "comparison.json", summary_metrics(comparison),
               sort_keys=False)  # the columns of `dvc exp show`, in this order
    write_text(REPORT, markdown(comparison))
    write_json(CHOSEN_FILE, chosen(comparison))
    draw_all(comparison, runs)
    best, chosen_by = comparison["best_student"], comparison["choose_by"]
    with recorded_stage(cfg.mlflow.experiment, "compare",
                        {"seeds": ",".join(map(str, cfg.seeds))}) as stage:
        log_comparison(comparison, [REPORT, *FIGURES.values()],
                       [r["mlflow_model_id"] for rs in runs.values() for r in rs])
        version, moved = registry.register_best_student(best, comparison["best_run"], chosen_by)
        stage.finish({})  # its cost, in MLflow only: metrics/comparison.json is the results
    print(markdown(comparison))
    aliases = ", ".join(f"'{a}'" for a in moved) or "none (the current holders score higher " \
        "or were trained on other data)"
    print(f"registered {best} (seed {comparison['best_seed']}, chosen by {chosen_by}) as "
          f"{registry.REGISTERED_MODEL} version {version}; aliases moved to it: {aliases}")
    print(f"MLflow runs: {store.runs_page(stage.run.info.experiment_id)}")
    if not store.tracking_uri().startswith(("http://", "https://")):
        print(f"  (start the UI first: mlflow ui --backend-store-uri "
              f"sqlite:///{store.repo_root() / 'mlflow.db'})")


if __name__ == "__main__":
    run_stage(main)
