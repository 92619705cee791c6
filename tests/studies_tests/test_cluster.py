"""Cluster job scripts: the rendered SLURM array job and Ray cluster job, parsed and syntax-checked.

SLURM itself is not here; the scripts are checked as text (their #SBATCH lines, array size and
commands) and with `bash -n`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from studies.cli import main
from studies.cluster import (
    ClusterError,
    available_templates,
    render_ray_cluster,
    render_slurm_workers,
    template_text,
)
from studies.spec import load_spec

PASSWORD = "pg-secret-Xy7"
URL = f"postgresql+psycopg://hv:{PASSWORD}@db.example.org:5432/campaigns"

SPEC = {
    "name": "cl",
    "workload": {"name": "valley2d", "options": {"steps": 20, "report_every": 5}},
    "optimizers": ["hvadam", "adam"],
    "budget": {"trials": 4},
    "confirm": {"seeds": 2},
}


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "cl.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def sbatch_options(text: str) -> dict[str, str]:
    options = {}
    for line in text.splitlines():
        m = re.match(r"^#SBATCH\s+--([a-z-]+)(?:=(.*))?$", line)
        if m:
            options[m.group(1)] = m.group(2) or ""
    return options


def bash_syntax_ok(text: str, tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the scripts"
    path = tmp_path / "job.sh"
    path.write_text(text)
    proc = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_slurm_array_job_runs_one_worker_per_task_with_one_gpu(spec_file, tmp_path):
    spec = load_spec(spec_file, check=False)
    text = render_slurm_workers(
        spec=spec, storage=URL, workers=4, partition="gpu", time="02:00:00", cpus=6
    )
    opts = sbatch_options(text)
    assert opts["array"] == "0-3"  # four tasks
    assert opts["gres"] == "gpu:1"
    assert opts["partition"] == "gpu"
    assert opts["time"] == "02:00:00"
    assert opts["cpus-per-task"] == "6"
    assert opts["job-name"] == "hvadam-cl"
    # every #SBATCH line comes before the first command (sbatch stops reading at it)
    lines = text.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.startswith("set -euo"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    command = " ".join(
        line.rstrip("\\").strip() for line in text.split("srun --ntasks=1 ", 1)[1].splitlines()
    )
    argv = shlex.split(command)
    assert argv[:3] == ["hvadam", "worker", str(spec_file)]
    assert argv[argv.index("--device") + 1] == "cuda"
    assert argv[argv.index("--threads") + 1] == "6"
    assert argv[argv.index("--worker-index") + 1] == "${SLURM_ARRAY_TASK_ID}"
    bash_syntax_ok(text, tmp_path)


def test_slurm_script_reads_the_storage_from_the_environment_and_never_holds_the_password(
    spec_file,
):
    text = render_slurm_workers(spec=load_spec(spec_file, check=False), storage=URL, workers=2)
    assert PASSWORD not in text
    assert "postgresql+psycopg://hv:***@db.example.org:5432/campaigns" in text
    assert 'if [[ -z "${HVADAM_STORAGE:-}" ]]' in text
    assert "--storage" not in text.split("srun", 1)[1]


def test_slurm_script_without_gpus_runs_workers_on_the_cpu(spec_file, tmp_path):
    text = render_slurm_workers(
        spec=load_spec(spec_file, check=False), storage=URL, workers=3, gpus_per_task=0
    )
    opts = sbatch_options(text)
    assert "gres" not in opts and "partition" not in opts
    assert opts["array"] == "0-2"
    assert "--device cpu" in text
    bash_syntax_ok(text, tmp_path)


def test_slurm_script_exits_with_a_message_when_the_storage_is_not_set(spec_file, tmp_path):
    text = render_slurm_workers(spec=load_spec(spec_file, check=False), storage=URL, workers=1)
    path = tmp_path / "job.sh"
    path.write_text(text)
    env = {"PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "set HVADAM_STORAGE" in proc.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"storage": "sqlite:///hvadam.db"}, "SQLite"),
        ({"workers": 0}, "--workers must be >= 1"),
        ({"time": "two hours"}, "--time 'two hours'"),
        ({"partition": "gpu; rm -rf /"}, "--partition"),
        ({"sbatch": ["mem=3G"]}, "--sbatch 'mem=3G'"),
    ],
)
def test_bad_cluster_options_are_refused_naming_the_option(spec_file, changes, message):
    kwargs = {"spec": load_spec(spec_file, check=False), "storage": URL, "workers": 2, **changes}
    with pytest.raises(ClusterError, match=re.escape(message)):
        render_slurm_workers(**kwargs)


def test_ray_cluster_job_starts_head_and_workers_then_tunes_with_ray(spec_file, tmp_path):
    text = render_ray_cluster(
        spec=load_spec(spec_file, check=False), storage=URL, nodes=3, gpus_per_node=4, cpus=16
    )
    opts = sbatch_options(text)
    assert opts["nodes"] == "3" and opts["gres"] == "gpu:4"
    assert "ray start --head" in text
    assert re.search(r"ray start --address=\"\$\{head_ip\}:\$\{port\}\"", text)
    assert "--num-gpus=4" in text and "--num-cpus=16" in text
    tune = next(
        line for line in text.splitlines() if "hvadam tune" in line and not line.startswith("#")
    )
    argv = shlex.split(tune.split("hvadam", 1)[1])
    assert argv[:2] == ["tune", str(spec_file)]
    assert argv[argv.index("--backend") + 1] == "ray"
    assert argv[argv.index("--address") + 1] == "auto"
    assert PASSWORD not in text
    bash_syntax_ok(text, tmp_path)


def test_shipped_ray_recipe_is_valid_bash(tmp_path):
    assert set(available_templates()) >= {
        "slurm-workers.sbatch",
        "ray-cluster.sbatch",
        "ray-cluster.sh",
    }
    text = template_text("ray-cluster.sh")
    bash_syntax_ok(text, tmp_path)
    proc = subprocess.run(["bash", "-c", text, "ray-cluster.sh"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_cli_cluster_slurm_writes_the_script_and_masks_the_url(spec_file, tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    code = main(
        [
            "cluster",
            "slurm",
            str(spec_file),
            "--storage",
            URL,
            "--workers",
            "8",
            "--partition",
            "a100",
            "--time",
            "1-00:00:00",
            "--sbatch=--mem=32G",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    text = out.read_text()
    opts = sbatch_options(text)
    assert opts["array"] == "0-7" and opts["partition"] == "a100" and opts["mem"] == "32G"
    assert opts["time"] == "1-00:00:00"
    assert out.stat().st_mode & 0o077 == 0  # only the owner may read it
    captured = capsys.readouterr()
    assert PASSWORD not in text + captured.out + captured.err


def test_cli_cluster_without_storage_is_an_error(spec_file, capsys, monkeypatch):
    monkeypatch.delenv("HVADAM_STORAGE", raising=False)
    assert main(["cluster", "slurm", str(spec_file), "--workers", "2"]) == 2
    assert "--storage" in capsys.readouterr().err
