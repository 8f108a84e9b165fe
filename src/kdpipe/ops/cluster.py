"""Fan the pipeline's stages, or a sweep's experiments, out over a Slurm cluster.

    python -m kdpipe.ops.cluster submit [--partition gpu --gres gpu:1 ...] [--dry-run]
    python -m kdpipe.ops.cluster sweep -S 'distill.kd.temperature=1,2,4' [...] [--dry-run]

No scheduler of its own: Slurm runs the jobs, DVC's remote and run-cache carry the results.
`submit` turns the DAG that dvc.yaml defines for the committed params into one job per stage,
each with `--dependency=afterok` on the jobs of the stages it depends on and
`--kill-on-invalid-dep=yes` (a failed job cancels its dependants). Each job works in a clone
of its own at the submitted commit (never a shared workspace: DVC locks the repository), runs
`dvc repro --pull <stage>` (its upstream stages restore from the remote's run-cache) and pushes
its outputs and run-cache. Its training checkpoints live outside the clone, under
`<workdir>/checkpoints/<commit>/<job>`, so a job that timed out or was pre-empted or cancelled
resumes after its last finished epoch when submitted again; they go when the job succeeds.
Afterwards, on the head machine, `dvc repro --pull` restores everything from the remote's
run-cache and reruns only what failed; resubmitting reruns only what did not finish.
`sweep` submits one job per point of the -S values, expanded as `dvc exp run --queue -S` does
(Hydra's override grammar): `dvc exp run --pull -S ...`, then `dvc exp push` to the git
remote; `dvc exp pull <git remote>` brings them back.
Before submitting, the repository is checked for what every job would otherwise lack.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

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


def sbatch_value(option: str, value: str) -> str:
    """`value` for an `#SBATCH` line: sbatch reads one option per line, so a newline would end
    it and turn the rest into a directive or a command of its own."""
    if "\n" in value or "\r" in value:
        sys.exit(f"error: --{option} {value!r}: an sbatch option value must be a single line")
    return value


def script(name: str, commands: list[str], args, after: list[str]) -> str:
    """An sbatch script: its own clone at the commit, then `commands`, then clean up. The
    checkpoints folder, outside the clone, outlives a killed job and goes once it succeeds."""
    options = {"job-name": name, "output": shlex.quote(f"{args.logs}/%x-%j.out")}
    options |= {opt.replace("_", "-"): getattr(args, opt)
                for opt in SLURM_OPTIONS if getattr(args, opt)}
    if after:
        options |= {"dependency": f"afterok:{':'.join(after)}", "kill-on-invalid-dep": "yes"}
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{opt}={sbatch_value(opt, value)}" for opt, value in options.items()]
    workdir = Path(args.workdir)
    lines += ["set -euo pipefail",
              # Plain processes: a warm one (kdpipe.ops.launch) would outlive the job.
              "export KDPIPE_WARM=0",
              "export KDPIPE_CHECKPOINT_DIR="
              + shlex.quote(str(workdir / "checkpoints" / args.commit / name)),
              f"mkdir -p {shlex.quote(str(workdir))}",
              f"work=$(mktemp -d {shlex.quote(str(workdir / name))}.XXXXXX)",
              'trap \'rm -rf "$work"\' EXIT',
              f"git clone -q {shlex.quote(args.git_url)} \"$work/repo\"",
              'cd "$work/repo"', f"git checkout -q {shlex.quote(args.commit)}", *commands,
              'rm -rf "$KDPIPE_CHECKPOINT_DIR"']
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
    """-S 'a=1,2' -S 'b=[x,y]' -> [['a=1', 'b=[x,y]'], ['a=2', 'b=[x,y]']]: the points
    `dvc exp run --queue -S` queues, expanded by DVC's own code with Hydra's override grammar
    (lists, quoted strings, range(), `file.yaml:` prefixes)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import OverrideParseException

    try:
        sweeps = get_hydra_sweeps(to_path_overrides(sets))
    except (OverrideParseException, InvalidArgumentError) as err:
        sys.exit(f"error: -S {' -S '.join(sets)}: {str(err).splitlines()[0]}")
    default = ParamsDependency.DEFAULT_PARAMS_FILE
    return [[o if path == default else f"{path}:{o}" for path, overrides in sweep.items()
             for o in overrides] for sweep in sweeps]


def experiment_name(combo: list[str]) -> str:
    """A readable name for a sweep point, unique by a hash of all its overrides (the readable
    part alone is cut short and its characters sanitised, so two points could share it)."""
    digest = hashlib.sha256("\n".join(sorted(combo)).encode()).hexdigest()[:10]
    return f"{job_name('exp-' + '-'.join(combo))[:60]}-{digest}"


def submit_sweep(args) -> dict[str, str]:
    jobs: dict[str, str] = {}
    for combo in combinations(args.set):
        name = experiment_name(combo)
        sets = " ".join(f"-S {shlex.quote(c)}" for c in combo)
        commands = [f"dvc exp run --pull -n {name} {sets}",
                    "dvc push --run-cache", f"dvc exp push {shlex.quote(args.git_url)} {name}"]
        submit(script(name, commands, args, []), args.dry_run, jobs, name)
    return jobs


def check_repo(repo: Path, git_url: str) -> str:
    """The commit jobs will clone, once everything they need is there: MLflow records somewhere
    that outlives a job's temporary clone, the working tree is clean and the commit is on a
    branch or tag at `git_url` (jobs see only what they clone), the files params name are
    committed, and a default DVC remote holds the outputs dvc.lock names (jobs share results
    through it)."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        sys.exit("error: MLFLOW_TRACKING_URI is not set; each job runs in a temporary clone, "
                 "so point it at the team's tracking server (or a sqlite file on a shared "
                 "filesystem)")
    if sh(["git", "status", "--porcelain", "--untracked-files=no"], repo):
        sys.exit("error: the working tree has uncommitted changes; jobs clone the last commit, "
                 "so commit (params.yaml, dvc.yaml, code) first")
    commit = sh(["git", "rev-parse", "HEAD"], repo)
    check_pushed(repo, git_url, commit)
    check_named_files(repo)
    default = subprocess.run(["dvc", "remote", "default"], cwd=repo, capture_output=True,
                             text=True)
    if default.returncode != 0 or not default.stdout.strip():
        sys.exit("error: no default DVC remote; jobs share outputs through it: "
                 "`dvc remote add -d storage <url>`")
    check_remote_has_outputs(repo)
    return commit


def check_pushed(repo: Path, git_url: str, commit: str) -> None:
    """Jobs `git clone` `git_url`, which brings its branches and tags: the commit must be one
    of them or an ancestor of one."""
    tips = [line.split()[0]
            for line in sh(["git", "ls-remote", "--heads", "--tags", git_url], repo).splitlines()]
    if not any(subprocess.run(["git", "merge-base", "--is-ancestor", commit, tip], cwd=repo,
                              capture_output=True).returncode == 0 for tip in tips):
        sys.exit(f"error: commit {commit[:10]} is on no branch or tag of {git_url}, which the "
                 "jobs clone; push it there (or pass --git-url)")


def check_named_files(repo: Path) -> None:
    """The files params name (a builder's code, a pretrained teacher) must be in the commit."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    named = {f"{role}.code": params.get(role, {}).get("code") for role in ("teacher", "student")}
    named["teacher.pretrained"] = params.get("teacher", {}).get("pretrained")
    tracked = set(sh(["git", "ls-files"], repo).splitlines())
    for key, path in named.items():
        if path and not committed(path, tracked):
            sys.exit(f"error: {key}={path!r} is not committed (neither in git nor by a .dvc "
                     "file); jobs clone the commit, so add and commit it")


def committed(path: str, tracked: set[str]) -> bool:
    """In git, or in DVC through a .dvc file (git-tracked) of its own or of a folder above it."""
    folders = [str(folder) for folder in Path(path).parents if str(folder) != "."]
    return path in tracked or any(f"{p}.dvc" in tracked for p in [path, *folders])


def check_remote_has_outputs(repo: Path) -> None:
    """Every output dvc.lock names must be in the default remote: a job that cannot pull one
    reruns its stage (the teacher, say) instead."""
    done = subprocess.run(["dvc", "status", "--cloud", "--json"], cwd=repo, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"error: `dvc status --cloud` failed: {done.stderr.strip()[-400:]}")
    missing = sorted(path for path, state in json.loads(done.stdout or "{}").items()
                     if state in ("new", "missing"))
    if missing:
        sys.exit(f"error: the DVC remote lacks {len(missing)} output(s) of dvc.lock "
                 f"({', '.join(missing[:3])}...); jobs would recompute them: `dvc push`")


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
    args.commit = check_repo(args.repo, args.git_url)
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
