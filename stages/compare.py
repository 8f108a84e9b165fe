"""Stage `compare`: one table of every model -> reports/comparison.md and
metrics/comparison.json, both also logged to an MLflow run."""
from kdpipe import tracking
from kdpipe.checkpoint import safe_load
from kdpipe.cli import run_stage
from kdpipe.config import load_config
from kdpipe.files import write_json, write_text
from kdpipe.paths import METRICS_DIR, MODELS_DIR, REPORT
from kdpipe.report import MODELS, collect, markdown, summary_metrics


def main() -> None:
    cfg = load_config()
    comparison = collect(METRICS_DIR)
    sources = {name: safe_load(MODELS_DIR / f"{name}.pt") for name in MODELS}
    for name, saved in sources.items():
        comparison["models"][name]["mlflow_run_id"] = saved["mlflow_run_id"]
    write_text(REPORT, markdown(comparison))
    write_json(METRICS_DIR / "comparison.json", summary_metrics(comparison))
    with tracking.stage_run(cfg.mlflow.experiment, "compare", {"models": ",".join(MODELS)}):
        model_ids = [saved["mlflow_model_id"] for saved in sources.values()]
        tracking.log_comparison(comparison, REPORT, model_ids)
        best = comparison["best_student"]
        version, moved = tracking.register_best_student(
            best, sources[best], comparison["models"][best]["test_acc"])
    print(markdown(comparison))
    print(f"registered {best} as {tracking.REGISTERED_MODEL} version {version}; alias "
          f"'{tracking.BEST_ALIAS}' {'moved to it' if moved else 'kept on a better model'}")


if __name__ == "__main__":
    run_stage(main)
