"""What stage `export` records: reports/export.md, and an MLflow run holding the ONNX model
(onnx flavor, with signature and input example), linked to the run that trained the student and
registered as `kd-student-onnx` under the registry's rules."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kdpipe.core.markdown import table
from kdpipe.export.exporter import MIN_AGREEMENT, OPSET, OUTPUT
from kdpipe.tracking import registry
from kdpipe.tracking.run_log import in_store

LABELS = {"pytorch": "PyTorch (eager, fp32)", "onnxruntime": "onnxruntime fp32",
          "onnxruntime_int8": "onnxruntime int8 (static quantization)"}


def _cell(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "–"


def markdown(results: dict, max_loss: float) -> str:
    runtimes = results["runtimes"]
    lines = ["# The chosen student, shipped: ONNX", "",
             f"Model: **{results['model']}** (chosen on `{results['chosen_by']}`), exported to "
             f"`{results['file']}` (opset {results['opset']}, dynamic batch size). On the "
             f"{results['test_images']} test images it picks PyTorch's top-1 class on "
             f"**{results['top1_agreement']:.2f}%** (at least {MIN_AGREEMENT}% required); max "
             f"abs logit difference **{results['max_abs_logit_diff']:.3g}**.", ""]
    rows = [[LABELS[name], f"{row['test_acc']:.2f}", _cell(row, "top1_agreement", ".2f"),
             _cell(row, "max_abs_logit_diff", ".3g"), f"{row['size_mb']:.3f}",
             _cell(row, "inference_ms_batch1", ".3f"),
             _cell(row, "inference_images_per_second", ",.0f")] for name, row in runtimes.items()]
    lines += table(["runtime", "test acc %", "agrees with PyTorch %", "max abs logit diff",
                    "size MB", "latency ms (batch 1)", "img/s (batch 256)"], rows, "lrrrrrr")
    pytorch = runtimes["pytorch"]
    if "inference_ms_batch1_bf16" in pytorch:  # params precision resolved to bf16 here
        lines += ["", f"PyTorch in bf16: {pytorch['inference_ms_batch1_bf16']:.3f} ms at batch 1, "
                  f"{pytorch['inference_images_per_second_bf16']:,.0f} img/s at batch 256."]
    int8 = runtimes.get("onnxruntime_int8")
    if int8 is not None:
        verdict = ("usable" if int8["usable"] else "**not usable**, so not timed")
        lines += ["", f"int8 loses {int8['accuracy_loss']:.2f} pp of test accuracy against "
                  f"PyTorch: {verdict} (`export.int8_max_loss`: {max_loss} pp). Calibrated on "
                  f"{int8['calibration_images']} train images (seeded, class-balanced)."]
    lines += ["", f"All on this machine's CPU, {results['threads']} thread(s) each; medians of "
              "timed runs after warm-up, as the training stages time PyTorch. Serve it: "
              "docs/deployment.md."]
    return "\n".join(lines) + "\n"


def lineage(choice: dict) -> dict:
    """Tags naming the run and model the exported student came from."""
    record = choice["record"]
    return {"student.run_id": record["mlflow_run_id"],
            "student.model_id": record["mlflow_model_id"]}


def log_export(run, choice: dict, onnx_file: Path, example: np.ndarray, files: list[Path],
               numbers: dict) -> tuple[str, list[str]]:
    """Into stage export's open MLflow `run`: the ONNX model, its numbers and report, the
    PyTorch model it came from as an input; then the registered version. Returns (version,
    aliases moved to it)."""
    import mlflow
    import onnx
    import onnxruntime
    from mlflow.entities import LoggedModelInput

    record = choice["record"]
    linked = in_store([record["mlflow_model_id"]])
    mlflow.MlflowClient().log_inputs(run.info.run_id,
                                     models=[LoggedModelInput(m) for m in linked])
    session = onnxruntime.InferenceSession(str(onnx_file),
                                           providers=["CPUExecutionProvider"])
    signature = mlflow.models.infer_signature(
        example, session.run([OUTPUT], {session.get_inputs()[0].name: example})[0])
    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_file)), name="model", signature=signature,
        input_example=example, tags=lineage(choice), save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
        # Explicit requirements: inferring them costs a subprocess (up to minutes).
        pip_requirements=[f"onnx=={onnx.__version__}",
                          f"onnxruntime=={onnxruntime.__version__}"])
    mlflow.log_metrics(numbers)
    for path in files:
        mlflow.log_artifact(str(path))
    tags = registry.version_tags(choice["method"], record, choice["chosen_by"])
    tags |= {"format": "onnx", "opset": str(OPSET),
             "source_model_id": record["mlflow_model_id"]}
    return registry.register_best(registry.ONNX_REGISTERED_MODEL, info.model_id,
                                  run.info.run_id, tags)
