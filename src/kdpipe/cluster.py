"""Fan the pipeline's stages, or a sweep's experiments, out over a Slurm cluster.

    python -m kdpipe.cluster submit [--partition gpu --gres gpu:1 ...] [--dry-run]
    python -m kdpipe.cluster sweep -S 'distill.kd.temperature=1,2,4' [...] [--dry-run]

No scheduler of its own: Slurm runs the jobs, DVC's remote and run-cache carry the results.
`submit` turns the DAG that dvc.yaml defines for the committed params into one job per stage,
each with `--dependency=afterok` on the jobs of the stages it depends on and
`--kill-on-invalid-dep=yes` (a failed job cancels its dependants). Each job works in a clone
of its own at the submitted commit (never a shared workspace: DVC locks the repository), runs
`dvc repro --pull <stage>` (its upstream stages restore from the remote's run-cache) and pushes
its outputs and run-cache. Afterwards, on the head machine, `dvc repro --pull` restores
everything from the remote's run-cache and reruns only what failed; resubmitting reruns only
what did not finish.
`sweep` submits one job per combination of the -S values: `dvc exp run --pull -S ...`, then
`dvc exp push` to the git remote; `dvc exp pull <git remote>` brings them back.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

SLURM_OPTIONS = ("partition", "gres", "time", "cpus_per_task", "mem", "account", "qos")


def sh(cmd: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: `{' '.join(cmd)}` failed: {done.stderr.strip()[-400:]}")
    return done.stdout.strip()


def pipeline_stages(repo: Path) -> list[tuple[str, list[str]]]:
    """(stage, the stages it depends on) for every stage of dvc.yaml, upstream first."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        graph = dvc.index.graph  # edges point from a stage to the stages it depends on
        order = list(reversed(list(nx.topological_sort(graph))))
        return [(stage.addressing, sorted(s.addressing for s in graph.successors(stage)))
                for stage in order]


def job_name(text: str) -> str:
    return "kd-" + re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def script(name: str, commands: list[str], args, after: list[str]) -> str:
    """An sbatch script: its own clone at the commit, then `commands`, then clean up."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}",
             f"#SBATCH --output={args.logs}/%x-%j.out"]
    lines += [f"#SBATCH --{opt.replace('_', '-')}={getattr(args, opt)}"
              for opt in SLURM_OPTIONS if getattr(args, opt)]
    if after:
        lines += [f"#SBATCH --dependency=afterok:{':'.join(after)}",
                  "#SBATCH --kill-on-invalid-dep=yes"]
    lines += ["set -euo pipefail", f'mkdir -p "{args.workdir}"',
              f'work=$(mktemp -d "{args.workdir}/{name}.XXXXXX")',
              'trap \'rm -rf "$work"\' EXIT',
              f"git clone -q {shlex.quote(args.git_url)} \"$work/repo\"",
              'cd "$work/repo"', f"git checkout -q {args.commit}", *commands]
    return "\n".join(lines) + "\n"


def submit(text: str, dry_run: bool, jobs: dict[str, str], name: str) -> str:
    if dry_run:
        print(f"# --- {name}\n{text}")
        jobs[name] = f"<{name}>"
        return jobs[name]
    done = subprocess.run(["sbatch", "--parsable"], input=text, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: sbatch refused {name}: {done.stderr.strip()}")
    jobs[name] = done.stdout.strip().split(";")[0]
    print(f"{jobs[name]}  {name}", flush=True)
    return jobs[name]


def submit_pipeline(args) -> dict[str, str]:
    jobs: dict[str, str] = {}
    for stage, upstream in pipeline_stages(args.repo):
        commands = [f"dvc repro --pull {shlex.quote(stage)}", "dvc push --run-cache"]
        after = [jobs[s] for s in upstream]
        submit(script(job_name(stage), commands, args, after), args.dry_run, jobs, stage)
    return jobs


def combinations(sets: list[str]) -> list[list[str]]:
    """-S 'a=1,2' -S 'b=x' -> [['a=1', 'b=x'], ['a=2', 'b=x']], as `dvc exp run --queue`."""
    choices = []
    for item in sets:
        key, _, values = item.partition("=")
        choices.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*choices)]


def submit_sweep(args) -> dict[str, str]:
    jobs: dict[str, str] = {}
    for combo in combinations(args.set):
        name = job_name("exp-" + "-".join(c.replace("=", "") for c in combo))[:100]
        sets = " ".join(f"-S {shlex.quote(c)}" for c in combo)
        commands = [f"dvc exp run --pull -n {name} {sets}",
                    "dvc push --run-cache", f"dvc exp push {shlex.quote(args.git_url)} {name}"]
        submit(script(name, commands, args, []), args.dry_run, jobs, name)
    return jobs


def check_repo(repo: Path) -> str:
    """The commit jobs will clone: the working tree must be clean (jobs see only commits), a
    default DVC remote must be set (jobs share results through it), and MLflow must record
    somewhere that outlives a job's temporary clone."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        sys.exit("error: MLFLOW_TRACKING_URI is not set; each job runs in a temporary clone, "
                 "so point it at the team's tracking server (or a sqlite file on a shared "
                 "filesystem)")
    if sh(["git", "status", "--porcelain", "--untracked-files=no"], repo):
        sys.exit("error: the working tree has uncommitted changes; jobs clone the last commit, "
                 "so commit (params.yaml, dvc.yaml, code) first")
    default = subprocess.run(["dvc", "remote", "default"], cwd=repo, capture_output=True,
                             text=True)
    if default.returncode != 0 or not default.stdout.strip():
        sys.exit("error: no default DVC remote; jobs share outputs through it: "
                 "`dvc remote add -d storage <url>`")
    return sh(["git", "rev-parse", "HEAD"], repo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["submit", "sweep"])
    parser.add_argument("-S", "--set", action="append", default=[],
                        help="sweep: a param and its values, as `dvc exp run -S`")
    parser.add_argument("--git-url", help="where jobs clone from (default: this repository)")
    parser.add_argument("--workdir", default="/tmp", help="where each job makes its clone")
    parser.add_argument("--logs", default="slurm-logs", help="folder for the jobs' output")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch scripts")
    for option in SLURM_OPTIONS:
        parser.add_argument(f"--{option.replace('_', '-')}", help=f"sbatch --{option}")
    args = parser.parse_args(argv)
    args.repo = Path(sh(["git", "rev-parse", "--show-toplevel"]))
    args.git_url = args.git_url or str(args.repo)
    args.commit = check_repo(args.repo)
    args.logs = str(Path(args.logs).resolve())
    if args.command == "sweep" and not args.set:
        sys.exit("error: sweep needs at least one -S key=v1,v2")
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    jobs = submit_pipeline(args) if args.command == "submit" else submit_sweep(args)
    after = "dvc repro --pull" if args.command == "submit" else \
        f"dvc exp pull {args.git_url} <name>, then dvc exp show"
    print(f"{len(jobs)} job(s) for commit {args.commit[:10]}; follow with `squeue`, logs in "
          f"{args.logs}; when they are done: {after}")


if __name__ == "__main__":
    main()
