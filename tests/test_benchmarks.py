"""The mixing-cost benchmark runs end to end at a tiny size, so a change to the APIs it calls
(views, mixing, the loop, the teacher pass) fails here rather than when someone measures."""
import re
import subprocess
import sys

from tests.conftest import ROOT


def test_mixing_cost_times_every_mode():
    run = subprocess.run([sys.executable, "benchmarks/mixing_cost.py", "--images", "256",
                          "--views", "2", "--teacher-images", "16", "--rounds", "1"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    for mode in ("none", "mixup", "cutmix"):
        assert re.search(rf"^{mode} +student epoch +[\d.]+ s \([\d.]+x plain\) +teacher pass "
                         r"+[\d,]+ s per million views", run.stdout, re.M), run.stdout
