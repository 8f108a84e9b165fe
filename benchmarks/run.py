"""Benchmark: this pipeline vs the tutorial's own code, and each stage vs a bare loop.

    python benchmarks/run.py --source ../shared/data/cifar10-jpeg.tar.gz --train 10000 --epochs 2

1. (b) this pipeline: `dvc repro` in a fresh copy of the project on `--train` images, timed end
   to end (every fixed cost included); per stage, the metrics files give wall, train and
   eval seconds.
2. (a) the tutorial's code (benchmarks/tutorial.py) on the very same prepared images.
3. The bare limit: per training stage, a forward/backward/step loop over a preloaded tensor,
   same model and objective, no evaluation, compared with the stage's training throughput.
Run it on an otherwise idle machine; it prints a table and writes --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from tutorial import run_tutorial  # noqa: E402

from kdpipe.core.config import load_config  # noqa: E402
from kdpipe.core.files import read_json  # noqa: E402
from kdpipe.data.prepared import Prepared  # noqa: E402
from kdpipe.learn.methods import registry  # noqa: E402
from kdpipe.learn.objective import Objective  # noqa: E402
from kdpipe.learn.teacher_targets import CachedTargets  # noqa: E402
from kdpipe.learn.training import load_data, seeded_student  # noqa: E402

MODELS = ("teacher", "student", "kd", "cosine", "hint")
FULL_TRAIN, FULL_TEST, FULL_EPOCHS = 50_000, 10_000, 10


def copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "b"]):
        subprocess.run(cmd, cwd=dest, check=True)


def run_pipeline(repo: Path, args) -> float:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # The tutorial's setup: no validation split, so both train on the same images.
    params["data"].update(source=str(Path(args.source).resolve()), limit_train=args.train,
                          limit_test=args.test, val_fraction=0.0)
    for section in ("teacher", "student"):
        params[section]["epochs"] = args.epochs
    params["seeds"] = [params["seed"]]  # one seed per model, as the tutorial
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    # A variable of its own gives this run its own warm process (kdpipe.ops.launch keys them by
    # environment): the pipeline pays the warm-up as a new user would, never reusing one.
    env["KD_BENCHMARK_RUN"] = repo.name
    start = time.perf_counter()
    subprocess.run(["dvc", "repro", "-q"], cwd=repo, env=env, check=True)
    return time.perf_counter() - start


def bare_throughput(repo: Path, name: str) -> float:
    """Images/s of a bare training loop for model `name`: data preloaded, fixed batches in
    order, no evaluation, no logging. The same objective and cached targets as the stage."""
    os.chdir(repo)
    cfg = load_config(repo / "params.yaml")
    prepared = Prepared(repo / "data" / "prepared")
    data = load_data(prepared, cfg.data, torch.device("cpu"))
    model = seeded_student("DeepNN" if name == "teacher" else "LightNN", 0, 10)
    model = model.to(memory_format=torch.channels_last).train()
    objective = Objective() if name in ("teacher", "student") else registry.objective(cfg, name)
    folder = repo / "data" / "teacher_targets"
    meta = read_json(folder / "meta.json")
    targets = CachedTargets(folder, objective.needs, torch.device("cpu"), meta) \
        if objective.needs else None
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=1e-3)
    n = len(data.train_y)
    start = time.perf_counter()
    for begin in range(0, n, 128):
        idx = torch.arange(begin, min(begin + 128, n))
        x, y = data.normalize(data.train_x[idx]), data.train_y[idx]
        logits, features = model.forward_with_features(x)
        loss = objective(logits, features, y, targets(idx, x) if targets else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return n / (time.perf_counter() - start)


def estimate_full(per_epoch_train: float, per_epoch_eval: float, fixed: float, args) -> float:
    """Seconds for the full default run, scaled from the subset: training and evaluation time
    grow with the number of images, fixed costs do not."""
    return fixed + FULL_EPOCHS * (per_epoch_train * FULL_TRAIN / args.train
                                  + per_epoch_eval * FULL_TEST / args.test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(ROOT.parent / "shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="benchmark.json")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    repo = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    copy_project(repo)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
    print(f"(b) pipeline: dvc repro on {args.train} images, {args.epochs} epochs ...", flush=True)
    ours_total = run_pipeline(repo, args)
    seed = yaml.safe_load((repo / "params.yaml").read_text())["seed"]
    ours = {name: json.loads((repo / "metrics" / f"{name}.json").read_text())
            for name in ("prepare", "teacher_targets")}
    ours |= {name: json.loads((repo / "metrics" / "seeds" / f"{name}-{seed}.json").read_text())
             for name in MODELS}
    print("(a) tutorial code on the same images ...", flush=True)
    start = time.perf_counter()
    prepared = Prepared(repo / "data" / "prepared")
    splits = [(prepared.splits[s].images, prepared.splits[s].labels) for s in ("train", "test")]
    tutorial = run_tutorial(*splits, epochs=args.epochs)
    tutorial_total = time.perf_counter() - start
    print("bare loops ...", flush=True)
    bare = {name: bare_throughput(repo, name) for name in MODELS}
    report(args, ours, ours_total, tutorial, tutorial_total, bare, out)
    shutil.rmtree(repo, ignore_errors=True)


def breakdown(ours: dict, total: float) -> dict:
    """Each stage's own wall time; the rest is DVC (hashing, lock file, run-cache), the stages
    that record no wall time (check_params, compare) and the first stage's wait for the warm
    process."""
    stages = {name: round(m["wall_seconds"], 1) for name, m in ours.items()}
    return stages | {"dvc_check_params_compare_warmup": round(total - sum(stages.values()), 1)}


def report(args, ours, ours_total, tutorial, tutorial_total, bare, out: Path) -> None:
    rows, full_ours, full_tutorial = {}, 0.0, 0.0
    for name in MODELS:
        m = ours[name]
        epoch_ours = m["train_seconds"] / args.epochs
        epoch_tut = tutorial[name][0] / args.epochs
        fixed = m["wall_seconds"] - m["train_seconds"] - m["eval_seconds"]
        rows[name] = {
            "tutorial_epoch_s": round(epoch_tut, 2), "ours_epoch_s": round(epoch_ours, 2),
            "epoch_speedup": round(epoch_tut / epoch_ours, 2),
            "ours_stage_wall_s": m["wall_seconds"], "ours_fixed_s": round(fixed, 2),
            "ours_img_per_s": m["train_images_per_second"], "bare_img_per_s": round(bare[name], 1),
            "vs_bare": round(m["train_images_per_second"] / bare[name], 3),
            "tutorial_acc": tutorial[name][1], "ours_acc": m["test_acc"],
        }
        full_ours += estimate_full(epoch_ours, m["eval_seconds"] / args.epochs, fixed, args)
        # The tutorial evaluates once, at the end: its test time is inside its total.
        full_tutorial += FULL_EPOCHS * epoch_tut * FULL_TRAIN / args.train
    for name in ("prepare", "teacher_targets"):
        full_ours += ours[name]["wall_seconds"] * (FULL_TRAIN / args.train if name ==
                                                   "teacher_targets" else 1)
    student_wall = ours["student"]["wall_seconds"]
    summary = {
        "setup": vars(args), "threads": torch.get_num_threads(), "models": rows,
        "end_to_end": {"tutorial_s": round(tutorial_total, 1), "ours_s": round(ours_total, 1),
                       "speedup": round(tutorial_total / ours_total, 2)},
        "full_run_estimate": {"tutorial_s": round(full_tutorial), "ours_s": round(full_ours),
                              "speedup": round(full_tutorial / full_ours, 2)},
        "distill_stage_vs_student_stage": {
            k: round(ours[k]["wall_seconds"] / student_wall, 2) for k in ("kd", "cosine", "hint")},
        "peak_rss_mb": max(m["peak_rss_mb"] for m in ours.values()),
        "where_the_pipeline_time_goes_s": breakdown(ours, ours_total),
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    header = ("model", "tut s/ep", "ours s/ep", "speed-up", "stage s", "fixed s", "ours img/s",
              "bare img/s", "vs bare", "tut acc", "ours acc")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(str(v) for v in r.values()) + " |")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("models", "setup")},
                     indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
