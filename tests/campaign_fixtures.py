"""A real tiny campaign, run once per test session through the `hvadam tune` command line.

Several test modules use it; the first one to ask runs it (in a subprocess, so that
`HVADAM_COMPILE=0` keeps the optimizers eager whatever this process imported before) and later
ones find the finished database under the session's base temporary directory.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import subprocess_env, write_spec

CAMPAIGN = "real"
OPTIMIZERS = ("hvadam", "anon", "adam")
SEEDS = 3
TRIALS = 3
SPEC = {
    "name": CAMPAIGN,
    "workload": {"name": "valley2d", "options": {"steps": 40, "report_every": 10}},
    "optimizers": list(OPTIMIZERS),
    "budget": {"trials": TRIALS},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": SEEDS},
    "seed": 0,
    "device": "cpu",
    # a controlled sweep (studies/sweep.py), so that the report has every section
    "sweep": {"optimizer": "hvadam", "param": "adaptivity", "values": [0.5, 1.0], "seeds": 2},
}


def real_campaign_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.getbasetemp() / "real-campaign"
    url = f"sqlite:///{root / 'hvadam.db'}"
    done = root / "done"
    if done.exists():
        return url
    root.mkdir(exist_ok=True)
    spec = write_spec(root, SPEC)
    env = subprocess_env(HVADAM_COMPILE="0")
    proc = subprocess.run(
        [sys.executable, "-m", "studies.cli", "tune", str(spec), "--storage", url, "--quiet",
         "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done.touch()
    return url
