"""The chosen student in ONNX: exported through PyTorch's recommended exporter
(`torch.onnx.export(..., dynamo=True)`, via torch.export), checked against the PyTorch model on
the whole test split, optionally quantized to int8 (onnxruntime's static quantization,
calibrated on train images), and timed with onnxruntime on the CPU the way the training stages
time PyTorch (kdpipe.measure.inference).

The ONNX model takes what the PyTorch model takes: float32 images (N, 3, H, W), normalised with
the params' data.mean and data.std; it returns the logits (N, classes). N is dynamic.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdpipe.core.errors import DataError
from kdpipe.data.prepared import Normalize
from kdpipe.learn.checkpoint import safe_load
from kdpipe.learn.models import build_model
from kdpipe.measure.evaluate import EVAL_BATCH
from kdpipe.measure.inference import LATENCY_RUNS, THROUGHPUT_BATCH, THROUGHPUT_RUNS, median_seconds

# The highest opset torch's exporter writes (torch.onnx._constants.ONNX_MAX_OPSET in 2.9+);
# onnxruntime >= 1.22 runs it.
OPSET = 23
INPUT, OUTPUT = "images", "logits"
MIN_AGREEMENT = 99.9  # % of test images on which ONNX must pick PyTorch's top-1 class
CALIBRATION_BATCH = 100  # images per calibration batch (memory only: ranges are over all)


class ParityError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes."""


def load_student(chosen: dict) -> nn.Module:
    """The chosen student (models/chosen.json's entry) from its .pt, in eval mode on the CPU,
    after checking that the file is the one `compare` chose (same training run)."""
    saved = safe_load(chosen["file"])
    expected = chosen["record"]["mlflow_run_id"]
    if saved.get("mlflow_run_id") != expected:
        raise DataError(f"{chosen['file']}: trained by run {saved.get('mlflow_run_id')}, but "
                        f"compare chose the model of run {expected}; run `dvc repro`")
    model = build_model(saved["arch"], len(saved["classes"]), saved.get("image_size", 32))
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def to_onnx(model: nn.Module, path: Path, image_size: int) -> None:
    """Export `model` to `path` (weights inside the file) with a dynamic batch dimension."""
    # Batch 2: torch.export specialises a dimension of size 1 to a constant.
    example = torch.zeros(2, 3, image_size, image_size)
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                input_names=[INPUT], output_names=[OUTPUT],
                                dynamic_shapes=({0: torch.export.Dim("batch")},),
                                verbose=False)
    program.save(str(path), external_data=False)


def session(path: Path, threads: int):
    """An onnxruntime CPU session using `threads` threads for each operator (as many as torch,
    so the timings compare the runtimes, not the thread counts)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one operator at a time: the graph is a chain
    options.log_severity_level = 3  # errors only: not the optimiser's per-node notes
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def normalized(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, 3, H, W) -> float32 model input, exactly as training normalised it."""
    normalize = Normalize(tuple(mean), tuple(std), torch.device("cpu"))
    return np.ascontiguousarray(normalize(torch.from_numpy(images)).numpy())


def torch_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(images[i:i + EVAL_BATCH])).numpy()
                               for i in range(0, len(images), EVAL_BATCH)])


def ort_logits(sess, images: np.ndarray) -> np.ndarray:
    return np.concatenate([sess.run([OUTPUT], {INPUT: images[i:i + EVAL_BATCH]})[0]
                           for i in range(0, len(images), EVAL_BATCH)])


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How closely `candidate` logits follow `reference`: top-1 agreement (%) and the largest
    absolute logit difference."""
    same = reference.argmax(1) == candidate.argmax(1)
    return {"top1_agreement": round(100.0 * float(same.mean()), 3),
            "max_abs_logit_diff": float(np.abs(reference - candidate).max())}


def check_parity(parity: dict, images: int) -> None:
    if parity["top1_agreement"] < MIN_AGREEMENT:
        raise ParityError(
            f"the ONNX model agrees with PyTorch on {parity['top1_agreement']}% of the "
            f"{images} test images (at least {MIN_AGREEMENT}% required); max abs logit "
            f"difference {parity['max_abs_logit_diff']:.3g}")


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Static int8 quantization (onnxruntime's QDQ format, its defaults otherwise): activation
    ranges from `calibration` (normalised images), after onnxruntime's recommended
    pre-processing (shape inference, graph optimisation)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT: calibration[i:i + CALIBRATION_BATCH]}
                                 for i in range(0, len(calibration), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self.batches, None)

    prepared = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(out), Batches())


def ort_cost(sess, image_size: int) -> dict:
    """Batch-1 latency (ms) and batch-256 throughput (images/s) of an onnxruntime session,
    measured as kdpipe.measure.inference measures PyTorch: medians of timed runs after warm-up."""
    image = torch.randn(1, 3, image_size, image_size)
    batch = image.expand(THROUGHPUT_BATCH, -1, -1, -1).contiguous()

    def run(x: torch.Tensor):
        return sess.run([OUTPUT], {INPUT: x.numpy()})

    latency = median_seconds(run, image, LATENCY_RUNS, contextlib.nullcontext)
    throughput = THROUGHPUT_BATCH / median_seconds(run, batch, THROUGHPUT_RUNS,
                                                   contextlib.nullcontext)
    return {"inference_ms_batch1": round(latency * 1000, 3),
            "inference_images_per_second": round(throughput, 1)}
