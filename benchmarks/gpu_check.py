"""The GPU check: the full default pipeline on CUDA, in one command, on a machine that has one
NVIDIA GPU and PyTorch but no network, no DVC and no MLflow.

    python3 benchmarks/gpu_check.py --kit .whl --archive .data/cifar10-jpeg.tar.gz --out gpu.json

1. Installs DVC and MLflow from a kit of wheels built beforehand on a machine with internet
   (`bash benchmarks/gpu_kit.sh .whl`), into a folder of its own (nothing else is touched).
2. Copies the project into a fresh git repo, sets `data.source` to the archive and
   `device: cuda`, leaves every other param at its default (`--set key=value` changes more,
   e.g. `--set device=cpu --set data.limit_train=2000` for a dry run on a CPU), and runs
   `dvc repro` (all stages, 5 seeds), timing each stage as DVC starts it.
3. Writes one JSON file: per stage the wall time (DVC's included) and, for training stages,
   train/eval seconds, images/s and accuracies; the comparison; the environment (GPU, driver,
   CUDA, PyTorch, DVC, MLflow, Python).
Only the standard library is imported here, so it runs before the kit is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(tempfile.gettempdir()) / "kdpipe-kit"
SKIP = {".git", ".venv", ".whl", ".data", "data", "models", "metrics", "plots", "reports",
        "mlflow.db", "mlartifacts", ".checkpoints", ".dvc/cache", ".dvc/tmp"}


def install_kit(kit: Path) -> dict:
    """The environment to run DVC and the stages with: the kit's packages first. A folder with
    no wheels installs nothing (DVC and MLflow are already there)."""
    env = dict(os.environ)
    if not list(kit.glob("*.whl")):
        return env
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(SITE),
                    *map(str, sorted(kit.glob("*.whl")))], check=True)
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), env.get("PYTHONPATH", "")]).rstrip(":")
    env["PATH"] = f"{SITE / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def copy_project(dest: Path, changes: list[str], env: dict) -> None:
    """The project's files in a new git repo at `dest`, with `changes` (dotted key=YAML value)
    applied to its params.yaml."""
    import yaml  # PyYAML: on the GPU machine's image

    def ignore(folder, names):
        rel = Path(folder).relative_to(ROOT)
        return [n for n in names if n in SKIP or str(rel / n) in SKIP or n == "__pycache__"]

    shutil.copytree(ROOT, dest, ignore=ignore)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for change in changes:
        key, value = change.split("=", 1)
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(value)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=gpu", "-c", "user.email=gpu@check", "commit", "-qm",
                 "gpu check"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True)


def run_pipeline(repo: Path, env: dict, log: Path) -> tuple[list[dict], float, int]:
    """`dvc repro`, streamed to `log`; each stage's wall time from DVC starting it to DVC
    starting the next (or finishing)."""
    stages, start = [], time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            out.write(line)
            out.flush()
            now = time.monotonic() - start
            if match := re.match(r"Running stage '([^']+)'", line):
                if stages:
                    stages[-1]["wall_seconds"] = round(now - stages[-1]["started_at"], 2)
                stages.append({"stage": match.group(1), "started_at": round(now, 2)})
        code = proc.wait()
    total = time.monotonic() - start
    if stages:
        stages[-1]["wall_seconds"] = round(total - stages[-1]["started_at"], 2)
    return stages, round(total, 1), code


def stage_metrics(repo: Path, stage: str) -> dict:
    """The stage's own metrics file: costs and accuracies."""
    seeds = repo / "metrics" / "seeds"
    kind, _, item = stage.partition("@")
    path = {"prepare": repo / "metrics" / "prepare.json",
            "teacher_targets": repo / "metrics" / "teacher_targets.json",
            "train_teacher": next(seeds.glob("teacher-*.json"), None),
            "train_student": seeds / f"student-{item}.json",
            "distill": seeds / f"{item}.json"}.get(kind)
    if path is None or not path.exists():
        return {}
    keep = ("wall_seconds", "train_seconds", "eval_seconds", "train_images_per_second",
            "test_acc", "val_acc", "images_per_second", "peak_rss_mb")
    return {f"stage_{k}" if k == "wall_seconds" else k: v
            for k, v in json.loads(path.read_text()).items() if k in keep}


def environment(env: dict) -> dict:
    probe = ("import json, torch; c = torch.cuda; print(json.dumps({'torch': torch.__version__,"
             " 'cuda': torch.version.cuda, 'gpu': c.get_device_name(0), 'capability':"
             " '.'.join(map(str, c.get_device_capability(0))), 'gpus': c.device_count()}))")
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count()}
    for key, cmd in (("gpu_env", [sys.executable, "-c", probe]),
                     ("driver", ["nvidia-smi", "--query-gpu=driver_version,memory.total",
                                 "--format=csv,noheader"]),
                     ("dvc", ["dvc", "--version"]),
                     ("mlflow", [sys.executable, "-c",
                                 "import mlflow; print(mlflow.__version__)"])):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        except OSError as err:  # no nvidia-smi, say
            info[key] = str(err)
            continue
        text = done.stdout.strip() or done.stderr.strip()[-300:]
        info[key] = json.loads(text) if key == "gpu_env" and done.returncode == 0 else text
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kit", type=Path, default=ROOT / ".whl")
    parser.add_argument("--archive", type=Path, default=ROOT / ".data/cifar10-jpeg.tar.gz")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another param change, e.g. data.limit_train=2000 (for a dry run)")
    args = parser.parse_args()
    env = install_kit(args.kit)
    repo = Path(tempfile.mkdtemp(prefix="kd-gpu-")) / "project"
    copy_project(repo, [f"data.source={args.archive.resolve()}", "device=cuda", *args.set], env)
    stages, total, code = run_pipeline(repo, env, args.out.with_suffix(".log"))
    for stage in stages:
        stage |= stage_metrics(repo, stage["stage"])
    comparison = repo / "metrics" / "comparison.json"
    result = {"dvc_repro_exit_code": code, "total_seconds": total, "stages": stages,
              "comparison": json.loads(comparison.read_text()) if comparison.exists() else None,
              "environment": environment(env)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=2))
    sys.exit(code)


if __name__ == "__main__":
    main()
