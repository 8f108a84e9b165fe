"""Stage `export`: the student `compare` chose (models/chosen.json) -> models/student.onnx,
checked against PyTorch on the whole test split (below 99.9% top-1 agreement the stage fails and
ships nothing); an int8 copy measured beside it (export.int8); metrics/export.json,
reports/export.md; an MLflow run with the ONNX model, registered as `kd-student-onnx`."""
import sys
import tempfile
from pathlib import Path

import torch

from kdpipe import export
from kdpipe.chosen import CHOSEN_FILE
from kdpipe.cli import run_stage
from kdpipe.config import Config, flat, load_config, section
from kdpipe.data import Prepared
from kdpipe.export_report import log_export, markdown
from kdpipe.files import atomic_path, read_json, write_json, write_text
from kdpipe.inference import inference_cost
from kdpipe.paths import METRICS_DIR, PREPARED_DIR
from kdpipe.sources import balanced_subset

ONNX_FILE = Path("models/student.onnx")
EXPORT_REPORT = Path("reports/export.md")
EXPORT_METRICS = METRICS_DIR / "export.json"
# What export reads (dvc.yaml declares exactly these).
EXPORT_KEYS = ("seed", "threads", "data.mean", "data.std", "export")


def size_mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 3)


def int8_row(cfg: Config, fp32: Path, prepared: Prepared, test: tuple, threads: int,
             reference_acc: float) -> dict:
    """The int8 copy's accuracy and agreement with PyTorch; timed only if it is usable."""
    images, labels, reference = test
    train = prepared.splits["train"]
    chosen = balanced_subset(train.labels, cfg.export.calibration_images, cfg.seed)
    calibration = export.normalized(train.images[chosen], cfg.data.mean, cfg.data.std)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "student-int8.onnx"
        export.quantize_int8(fp32, out, calibration)
        sess = export.session(out, threads)
        logits = export.ort_logits(sess, images)
        row = {"test_acc": export.accuracy(logits, labels),
               **export.agreement(reference, logits), "size_mb": size_mb(out),
               "calibration_images": len(chosen)}
        row["accuracy_loss"] = round(reference_acc - row["test_acc"], 3)
        row["usable"] = row["accuracy_loss"] <= cfg.export.int8_max_loss
        if row["usable"]:
            row |= export.ort_cost(sess, prepared.image_size)
    return row


def main() -> None:
    cfg = load_config()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    choice = read_json(CHOSEN_FILE)
    model = export.load_student(choice)
    prepared = Prepared(PREPARED_DIR)
    split = prepared.splits["test"]
    images = export.normalized(split.images, cfg.data.mean, cfg.data.std)
    reference = export.torch_logits(model, images)
    # The model as a deployment loads it (NCHW weights): converted to channels_last, LightNN
    # took ~80 ms instead of ~0.4 ms at batch 1 on the 2-core CPU.
    pytorch = {"test_acc": export.accuracy(reference, split.labels),
               **inference_cost(model, Path(choice["file"]), torch.device("cpu"),
                                prepared.image_size)}
    with atomic_path(ONNX_FILE) as tmp:  # a failed check leaves no ONNX file
        export.to_onnx(model, tmp, prepared.image_size)
        fp32 = export.session(tmp, threads)
        logits = export.ort_logits(fp32, images)
        parity = export.agreement(reference, logits)
        export.check_parity(parity, len(images))
        runtimes = {"pytorch": pytorch,
                    "onnxruntime": {"test_acc": export.accuracy(logits, split.labels),
                                    **parity, "size_mb": size_mb(tmp),
                                    **export.ort_cost(fp32, prepared.image_size)}}
        if cfg.export.int8:
            runtimes["onnxruntime_int8"] = int8_row(
                cfg, tmp, prepared, (images, split.labels, reference), threads,
                pytorch["test_acc"])
    record = choice["record"]
    results = {"model": f"{choice['method']}-{record['seed']}", "chosen_by": choice["chosen_by"],
               "file": ONNX_FILE.as_posix(), "opset": export.OPSET, "test_images": len(images),
               "threads": threads, **parity, "runtimes": runtimes}
    write_json(EXPORT_METRICS, results)
    write_text(EXPORT_REPORT, markdown(results, cfg.export.int8_max_loss))
    numbers = {f"{runtime}.{key}": float(value) for runtime, row in runtimes.items()
               for key, value in row.items() if isinstance(value, (int, float))}
    version, moved = log_export(cfg.mlflow.experiment, flat(section(cfg, *EXPORT_KEYS)), choice,
                                ONNX_FILE, images[:2], [EXPORT_REPORT, EXPORT_METRICS],
                                numbers | parity)
    print(markdown(results, cfg.export.int8_max_loss))
    print(f"registered {ONNX_FILE} as kd-student-onnx version {version}; aliases moved to it: "
          f"{', '.join(moved) or 'none'}")


def checked() -> None:
    """`main`, with a failed parity check as one line, as the expected failures are."""
    try:
        main()
    except export.ParityError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_stage(checked)
