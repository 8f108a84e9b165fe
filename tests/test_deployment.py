"""Shipping the student, on the quick pipeline: `export` writes the chosen student's ONNX model,
which agrees with PyTorch on the test split; the report sets the runtimes side by side; MLflow
holds the ONNX model, linked to its training run and registered under the registry's rules;
`mlflow models serve` answers with the pipeline's predictions and turns bad input into a 4xx."""
import json
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml

from kdpipe.data.prepared import Prepared
from kdpipe.export import exporter
from kdpipe.measure.evaluate import top1
from tests.project import clean_env, clone, read_json, stop_server, wait_for_server
from tests.test_pipeline import mlflow_client
from tests.test_safety import closed_port

SERVE_SECONDS = 180  # start-up, imports and model load took ~35 s on the shared 2-core CPU


def split_images(repo, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The prepared test split as the models take it (normalised float32), and its labels."""
    params = yaml.safe_load((repo / "params.yaml").read_text())["data"]
    split = Prepared(repo / "data" / "prepared").splits["test"]
    return exporter.normalized(split.images[:n], params["mean"], params["std"]), split.labels[:n]


def pipeline_logits(repo, images: np.ndarray) -> np.ndarray:
    """What the pipeline's chosen student (its .pt, read with the project's code) outputs."""
    chosen = read_json(repo / "models" / "chosen.json")
    model = exporter.load_student({**chosen, "file": str(repo / chosen["file"])})
    return exporter.torch_logits(model, images)


def test_export_ships_the_student_chosen_on_validation(built):
    chosen = read_json(built / "models" / "chosen.json")
    method = chosen["method"]
    record = read_json(built / "metrics" / "seeds" / f"{method}-42.json")
    models = read_json(built / "metrics" / "models.json")
    assert chosen["chosen_by"] == "val_acc" and chosen["file"] == f"models/{method}-42.pt"
    assert chosen["record"]["mlflow_run_id"] == record["mlflow_run_id"]
    assert record["val_acc"] == max(models[m]["val_acc"] for m in ("student", "kd", "cosine",
                                                                    "hint"))
    images, labels = split_images(built)
    sess = exporter.session(built / "models" / "student.onnx", threads=1)
    parity = exporter.agreement(pipeline_logits(built, images), exporter.ort_logits(sess, images))
    assert parity["top1_agreement"] >= 99.9 and parity["max_abs_logit_diff"] < 1e-3
    results = read_json(built / "metrics" / "export.json")
    assert results["model"] == f"{method}-42" and results["test_images"] == len(labels) == 200
    assert results["top1_agreement"] >= 99.9 and results["opset"] == exporter.OPSET
    runtimes = results["runtimes"]
    assert sorted(runtimes) == ["onnxruntime", "onnxruntime_int8", "pytorch"]
    if record["precision"] == "fp32":  # the training stage measured the same model
        assert runtimes["pytorch"]["test_acc"] == record["test_acc"]
    assert runtimes["onnxruntime"]["test_acc"] == top1(
        exporter.ort_logits(sess, images), labels)
    int8 = runtimes["onnxruntime_int8"]
    assert int8["accuracy_loss"] == round(runtimes["pytorch"]["test_acc"] - int8["test_acc"], 3)
    assert int8["size_mb"] < runtimes["onnxruntime"]["size_mb"] / 2
    timed = ["pytorch", "onnxruntime"] + (["onnxruntime_int8"] if int8["usable"] else [])
    for name in timed:
        assert runtimes[name]["inference_ms_batch1"] > 0
        assert runtimes[name]["inference_images_per_second"] > 0
    report = (built / "reports" / "export.md").read_text()
    for row in ("| PyTorch (eager, fp32) |", "| onnxruntime fp32 |", "| onnxruntime int8"):
        assert row in report


def test_the_onnx_model_is_logged_with_its_lineage_and_registered(built, tmp_path):
    import mlflow
    from mlflow.exceptions import MlflowException

    built = clone(built, tmp_path / "repo")  # loading a registered model writes beside it
    client = mlflow_client(built)
    chosen = read_json(built / "models" / "chosen.json")
    version = client.get_model_version_by_alias("kd-student-onnx", "best")
    assert version.tags["format"] == "onnx" and version.tags["method"] == chosen["method"]
    assert version.tags["mlflow_run_id"] == chosen["record"]["mlflow_run_id"]  # its training
    assert version.tags["chosen_by"] == "val_acc"
    digest = chosen["record"]["data_sha256"]
    assert client.get_model_version_by_alias("kd-student-onnx",
                                             f"best-{digest[:12]}").version == version.version
    assert client.get_model_version_by_alias("kd-student", "best").run_id == \
        chosen["record"]["mlflow_run_id"]  # both registered forms are the same student
    run = client.get_run(version.run_id)
    assert run.info.run_name == "export" and run.info.status == "FINISHED"
    assert run.data.tags["student.run_id"] == chosen["record"]["mlflow_run_id"]
    assert [m.model_id for m in run.inputs.model_inputs] == [chosen["record"]["mlflow_model_id"]]
    assert run.data.metrics["top1_agreement"] >= 99.9
    model = mlflow.pyfunc.load_model("models:/kd-student-onnx@best")
    assert "onnx" in model.metadata.flavors
    [spec] = model.metadata.get_input_schema().inputs
    assert (spec.type, spec.shape) == (np.dtype("float32"), (-1, 3, 32, 32))
    assert model.input_example.shape == (2, 3, 32, 32)
    images, _ = split_images(built, 16)
    logits = model.predict(images)[exporter.OUTPUT]
    assert (logits.argmax(1) == pipeline_logits(built, images).argmax(1)).all()
    with pytest.raises(MlflowException, match="does not match expected shape"):
        model.predict(images[:, :, :16, :16])


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def test_the_served_student_predicts_as_the_pipeline_and_refuses_bad_input(built, tmp_path):
    """docs/deployment.md's command, on a free loopback port; the server is always stopped."""
    built = clone(built, tmp_path / "repo")  # loading a registered model writes beside it
    port, log = closed_port(), tmp_path / "serve.log"
    env = {**clean_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{built / 'mlflow.db'}"}
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", "models:/kd-student@best", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env,
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, server, SERVE_SECONDS, log)
        images, _ = split_images(built, 16)
        status, answer = post(url, {"inputs": images.tolist()})
        assert status == 200, answer
        served = np.array(answer["predictions"], dtype=np.float32)
        expected = pipeline_logits(built, images)
        assert (served.argmax(1) == expected.argmax(1)).all()
        np.testing.assert_allclose(served, expected, atol=1e-4)  # pt2 vs eager kernels
        wrong_shape = images[:, :, :16, :16].tolist()
        wrong_dtype = [[[["a pixel"] * 32] * 32] * 3] * 2
        for body, says in (({"inputs": wrong_shape}, "does not match expected shape"),
                           ({"inputs": wrong_dtype}, "could not convert string to float")):
            status, answer = post(url, body)
            assert 400 <= status < 500 and says in answer["message"], (status, answer)
        assert server.poll() is None  # still serving: nothing crashed it
    finally:
        stop_server(server)
