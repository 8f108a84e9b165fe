"""Stage `export`: the student `compare` chose (models/chosen.json) -> models/student.onnx,
checked against PyTorch on the whole test split (below 99.9% top-1 agreement the stage fails and
ships nothing); an int8 copy measured beside it (export.int8); metrics/export.json,
reports/export.md; an MLflow run with the ONNX model, registered as `kd-student-onnx`."""
import sys
import tempfile
from pathlib import Path

import torch

from kdpipe.analysis.chosen import CHOSEN_FILE
from kdpipe.core.config import Config, section
from kdpipe.core.files import atomic_path, read_json, write_text
from kdpipe.core.paths import METRICS_DIR, PREPARED_DIR
from kdpipe.core.runtime import resolve_precision
from kdpipe.data.prepared import Prepared
from kdpipe.data.sources import balanced_subset
from kdpipe.export import exporter
from kdpipe.export.report import lineage, log_export, markdown
from kdpipe.measure.evaluate import top1
from kdpipe.measure.inference import inference_cost
from kdpipe.ops.stage import run_stage
from kdpipe.tracking.stage_record import recorded_stage

CPU = torch.device("cpu")  # where a deployment runs the student, and what it is timed on

ONNX_FILE = Path("models/student.onnx")
EXPORT_REPORT = Path("reports/export.md")
EXPORT_METRICS = METRICS_DIR / "export.json"
# What export reads (dvc.yaml declares exactly these).
EXPORT_KEYS = ("seed", "threads", "precision", "data.mean", "data.std", "export")


def size_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 3)


def int8_row(cfg: Config, fp32: Path, prepared: Prepared, test: tuple, threads: int,
             reference_acc: float) -> dict:
    """The int8 copy's accuracy and agreement with PyTorch; timed only if it is usable."""
    images, labels, reference = test
    train = prepared.splits["train"]
    chosen = balanced_subset(train.labels, cfg.export.calibration_images, cfg.seed)
    calibration = exporter.normalized(train.images[chosen], cfg.data.mean, cfg.data.std)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "student-int8.onnx"
        exporter.quantize_int8(fp32, out, calibration)
        sess = exporter.session(out, threads)
        logits = exporter.ort_logits(sess, images)
        row = {"test_acc": top1(logits, labels),
               **exporter.agreement(reference, logits), "size_mb": size_mb(out),
               "calibration_images": len(chosen)}
        row["accuracy_loss"] = round(reference_acc - row["test_acc"], 3)
        row["usable"] = row["accuracy_loss"] <= cfg.export.int8_max_loss
        if row["usable"]:
            row |= exporter.ort_cost(sess, prepared.image_size)
    return row


def main(cfg: Config) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    choice = read_json(CHOSEN_FILE)
    model = exporter.load_student(choice)
    prepared = Prepared(PREPARED_DIR)
    split = prepared.splits["test"]
    images = exporter.normalized(split.images, cfg.data.mean, cfg.data.std)
    reference = exporter.torch_logits(model, images)
    # The model as a deployment loads it (NCHW weights): converted to channels_last, LightNN
    # took ~80 ms instead of ~0.4 ms at batch 1 on the 2-core CPU.
    pytorch = {"test_acc": top1(reference, split.labels),
               **inference_cost(model, Path(choice["file"]), CPU, prepared.image_size,
                                bf16=resolve_precision(cfg.precision, CPU) is torch.bfloat16)}
    with atomic_path(ONNX_FILE) as tmp:  # a failed check leaves no ONNX file
        exporter.to_onnx(model, tmp, prepared.image_size)
        fp32 = exporter.session(tmp, threads)
        logits = exporter.ort_logits(fp32, images)
        parity = exporter.agreement(reference, logits)
        exporter.check_parity(parity, len(images))
        runtimes = {"pytorch": pytorch,
                    "onnxruntime": {"test_acc": top1(logits, split.labels),
                                    **parity, "size_mb": size_mb(tmp),
                                    **exporter.ort_cost(fp32, prepared.image_size)}}
        if cfg.export.int8:
            runtimes["onnxruntime_int8"] = int8_row(
                cfg, tmp, prepared, (images, split.labels, reference), threads,
                pytorch["test_acc"])
    record = choice["record"]
    results = {"model": f"{choice['method']}-{record['seed']}", "chosen_by": choice["chosen_by"],
               "file": ONNX_FILE.as_posix(), "opset": exporter.OPSET, "test_images": len(images),
               "threads": threads, **parity, "runtimes": runtimes}
    write_text(EXPORT_REPORT, markdown(results, cfg.export.int8_max_loss))
    numbers = {f"{runtime}.{key}": float(value) for runtime, row in runtimes.items()
               for key, value in row.items() if isinstance(value, (int, float))}
    with recorded_stage(cfg.mlflow.experiment, "export", section(cfg, *EXPORT_KEYS),
                        EXPORT_METRICS, tags=lineage(choice)) as stage:
        stage.finish({}, extra=results)
        version, moved = log_export(stage.run, choice, ONNX_FILE, images[:2],
                                    [EXPORT_REPORT, EXPORT_METRICS], numbers | parity)
    print(markdown(results, cfg.export.int8_max_loss))
    print(f"registered {ONNX_FILE} as kd-student-onnx version {version}; aliases moved to it: "
          f"{', '.join(moved) or 'none'}")


def checked(cfg: Config) -> None:
    """`main`, with a failed parity check as one line, as the expected failures are."""
    try:
        main(cfg)
    except exporter.ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_stage(checked)
