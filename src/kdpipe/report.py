"""The comparison of every trained model: a markdown table and a JSON metrics file."""
from __future__ import annotations

from pathlib import Path

from kdpipe.files import read_json

MODELS = {  # name -> what it is
    "teacher": "teacher (DeepNN, cross-entropy)",
    "student": "baseline student (LightNN, cross-entropy)",
    "kd": "soft-target KD",
    "cosine": "cosine loss on hidden representation",
    "hint": "FitNets hint (regressor + MSE)",
}
STUDENTS = ("student", "kd", "cosine", "hint")
COLUMNS = [  # (metrics key, header, format)
    ("num_params", "params", "{:,}"),
    ("test_acc", "test acc %", "{:.2f}"),
    ("delta_vs_student", "Δ vs student (pp)", "{:+.2f}"),
    ("size_mb", "size MB", "{:.2f}"),
    ("inference_ms_batch1", "latency ms (batch 1)", "{:.2f}"),
    ("inference_images_per_second", "inference img/s (batch 256)", "{:,.0f}"),
    ("speedup_vs_teacher", "inference speed-up vs teacher", "{:.1f}×"),
    ("train_seconds", "train s", "{:.1f}"),
    ("train_images_per_second", "train img/s", "{:,.0f}"),
    ("wall_seconds", "stage wall s", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:,.0f}"),
]


def collect(metrics_dir: Path) -> dict:
    """{model: metrics + delta_vs_student} for every model, plus the best student."""
    rows = {name: read_json(metrics_dir / f"{name}.json") for name in MODELS}
    baseline = rows["student"]["test_acc"]
    teacher_speed = rows["teacher"]["inference_images_per_second"]
    for row in rows.values():
        row["delta_vs_student"] = round(row["test_acc"] - baseline, 2)
        row["speedup_vs_teacher"] = round(row["inference_images_per_second"] / teacher_speed, 2)
    best = max(STUDENTS, key=lambda name: rows[name]["test_acc"])
    return {"models": rows, "best_student": best}


def markdown(comparison: dict) -> str:
    rows = comparison["models"]
    lines = ["# Knowledge distillation: comparison", "",
             "| model | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, label in MODELS.items():
        cells = [fmt.format(rows[name][key]) for key, _, fmt in COLUMNS]
        lines.append(f"| **{name}**: {label} | " + " | ".join(cells) + " |")
    best = comparison["best_student"]
    lines += ["", f"Most accurate student: **{best}** "
              f"({rows[best]['test_acc']:.2f}%, {rows[best]['delta_vs_student']:+.2f} pp vs the "
              "baseline student; one seed, so gaps under ~1 pp are within noise).",
              "", "Δ = difference in test accuracy from the baseline student, in percentage "
              "points. Inference: medians of timed forward passes after warm-up, on the device "
              "each stage ran on; speed-up = throughput at batch 256 over the teacher's. "
              "Train s excludes evaluation; stage wall s includes process start, imports, "
              "evaluation and MLflow logging."]
    return "\n".join(lines) + "\n"


def summary_metrics(comparison: dict) -> dict:
    """The few numbers worth a column in `dvc exp show`: accuracy and gain of every model,
    and the best student's accuracy (each model's own file has the rest)."""
    rows = comparison["models"]
    out = {name: {"test_acc": row["test_acc"], "delta_vs_student": row["delta_vs_student"],
                  "speedup_vs_teacher": row["speedup_vs_teacher"]}
           for name, row in rows.items()}
    out["best_student_test_acc"] = rows[comparison["best_student"]]["test_acc"]
    return out
