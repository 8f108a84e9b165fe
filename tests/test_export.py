"""The ONNX export on its own (no DVC): a LightNN exported once per module with the dynamo
exporter computes what PyTorch computes at any batch size; a failed check names its numbers;
int8 quantization runs; a model file from another run is refused; the export params are
validated."""
import numpy as np
import pytest
import torch

from kdpipe.core.errors import ConfigError, DataError
from kdpipe.export import exporter
from kdpipe.learn.models import LightNN
from kdpipe.measure.evaluate import top1
from tests.conftest import random_images
from tests.test_config import load_with, set_key

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = LightNN().eval()
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    exporter.to_onnx(model, path, 32)
    return model, path


def test_the_onnx_model_matches_pytorch_at_any_batch_size(exported):
    import onnx

    model, path = exported
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [exporter.OPSET]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free dim
    sess = exporter.session(path, threads=1)
    images = exporter.normalized(random_images(300), MEAN, STD)
    for n in (1, 7, 300):
        parity = exporter.agreement(exporter.torch_logits(model, images[:n]),
                                    exporter.ort_logits(sess, images[:n]))
        assert parity["top1_agreement"] == 100.0 and parity["max_abs_logit_diff"] < 1e-4, n


def test_a_failed_parity_check_names_its_numbers():
    reference = np.eye(10, dtype=np.float32)[np.arange(1000) % 10]
    candidate = reference.copy()
    candidate[0] = np.roll(candidate[0], 1)  # one image of 1000 changes class: 99.9% agree
    exporter.check_parity(exporter.agreement(reference, candidate), 1000)
    candidate[1] = np.roll(candidate[1], 1)
    with pytest.raises(exporter.ParityError, match=r"on 99.8% of the 1000 test images \(at least "
                                          r"99.9% required\); max abs logit difference 1"):
        exporter.check_parity(exporter.agreement(reference, candidate), 1000)


def test_int8_quantization_gives_a_smaller_model_that_follows_fp32(exported, tmp_path):
    model, path = exported
    calibration = exporter.normalized(random_images(200, seed=1), MEAN, STD)
    out = tmp_path / "int8.onnx"
    exporter.quantize_int8(path, out, calibration)
    assert out.stat().st_size < path.stat().st_size / 2  # int8 weights: a quarter, plus scales
    images = exporter.normalized(random_images(100, seed=2), MEAN, STD)
    logits = exporter.ort_logits(exporter.session(out, threads=1), images)
    assert logits.shape == (100, 10) and np.isfinite(logits).all()
    # The int8 model computes what the fp32 one does, to int8's precision (measured on this
    # untrained LightNN: logit correlation 0.99, 88% of top-1 picks kept); a quantization
    # with wrong scales or a broken calibration falls far below both.
    reference = exporter.torch_logits(model, images)
    assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.95
    assert top1(logits, reference.argmax(1)) >= 75


def test_a_model_file_from_another_run_is_refused(tmp_path):
    path = tmp_path / "kd-42.pt"
    torch.save({"arch": "LightNN", "classes": list("abcdefghij"), "image_size": 32,
                "state_dict": LightNN().state_dict(), "mlflow_run_id": "old"}, path)
    chosen = {"file": str(path), "record": {"mlflow_run_id": "new"}}
    with pytest.raises(DataError, match="trained by run old, but compare chose the model of "
                                        "run new"):
        exporter.load_student(chosen)
    chosen["record"]["mlflow_run_id"] = "old"
    assert exporter.load_student(chosen)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("key, value, message", [
    ("export.int9", True, "export.int9: unknown key (did you mean 'int8'?)"),
    ("export.calibration_images", 0, "export.calibration_images=0: expected an integer >= 1"),
    ("export.int8_max_loss", -1, "export.int8_max_loss=-1: expected a number >= 0"),
])
def test_export_params_are_validated(tmp_path, key, value, message):
    with pytest.raises(ConfigError) as err:
        load_with(tmp_path, set_key(key, value))
    assert message in str(err.value)
