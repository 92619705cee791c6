"""Bad input, hostile input and secrets: what a probe of the command line found (issue #12).

Each test holds one fix: URLs never printed with a password, bad specs and flags refused before
anything is written, read-only commands that create nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from studies.cli import main
from studies.storage import StorageError, check_storage_url, mask_text, mask_url

PASSWORD = "pg-secret-Xy7"  # the conftest PostgreSQL password

TINY = {
    "name": "tiny",
    "workload": {"name": "valley2d", "options": {"steps": 20, "report_every": 5}},
    "optimizers": ["hvadam", "sgd"],
    "budget": {"trials": 2},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 1},
    "device": "cpu",
}


def spec_file(tmp_path: Path, text: str | None = None, **changes) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({**TINY, **changes}))
    return str(path)


# ---- 1. passwords in URLs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://hv@db.example/hv?password=QuerySecret1&sslmode=require",
            "postgresql+psycopg://hv@db.example/hv?password=***&sslmode=require",
        ),
        (
            "postgresql+psycopg://hv@db.example/hv?sslpassword=QuerySecret1",
            "postgresql+psycopg://hv@db.example/hv?sslpassword=***",
        ),
        (
            "postgresql+psycopg://hv:Fa@ke1@db.example/hv",
            "postgresql+psycopg://hv:***@db.example/hv",
        ),
    ],
)
def test_mask_url_hides_query_passwords_and_a_password_holding_an_at_sign(url, shown):
    assert mask_url(url) == shown
    assert mask_url(make_url(url)) == shown
    assert "QuerySecret1" not in mask_text(f"cannot open {url}: refused")
    assert "ke1" not in mask_text(f"cannot open {url}: refused")


def test_mask_text_hides_secret_assignments_quoted_by_drivers():
    text = "connection failed: host=h port=5 password=Hunter22 user=hv; token='t0k3n x'"
    masked = mask_text(text)
    assert "Hunter22" not in masked and "t0k3n" not in masked
    assert "host=h port=5 password=*** user=hv" in masked


def test_an_unparseable_url_is_never_printed(tmp_path, capsys):
    url = "postgresql+psycopg://hv:Secret9@[::1:5432/db"
    assert mask_url(url) == "<a storage URL that could not be parsed>"
    with pytest.raises(StorageError) as info:
        check_storage_url(url)
    assert "Secret9" not in str(info.value) and "percent-encoded" in str(info.value)
    assert main(["status", "--storage", url]) == 2
    captured = capsys.readouterr()
    assert "Secret9" not in captured.out + captured.err


def test_a_password_with_an_unencoded_at_is_refused_with_the_fix(capsys):
    url = "postgresql+psycopg://hv:Fa@ke1@127.0.0.1:1/db"
    with pytest.raises(StorageError) as info:
        check_storage_url(url)
    assert "%40" in str(info.value) and "ke1" not in str(info.value)


def test_query_password_never_appears_in_connection_errors(capsys):
    url = "postgresql+psycopg://hv@127.0.0.1:1/db?password=QuerySecret1&connect_timeout=2"
    assert main(["status", "--storage", url]) == 2
    captured = capsys.readouterr()
    assert "QuerySecret1" not in captured.out + captured.err
    assert "password=***" in captured.err


def test_slurm_script_never_holds_a_query_password(tmp_path):
    from studies.cluster import render_slurm_workers
    from studies.spec import load_spec

    spec = load_spec(spec_file(tmp_path), check=False)
    url = "postgresql+psycopg://hv@db.example:5432/c?password=QuerySecret1"
    text = render_slurm_workers(spec=spec, storage=url, workers=2)
    assert "QuerySecret1" not in text and "password=***" in text


def test_query_password_never_appears_in_tune_output_or_exports(
    postgres_server, postgres_url, tmp_path, capfd
):
    parsed = make_url(postgres_url)
    url = (
        f"{parsed.drivername}://{parsed.username}@{parsed.host}:{parsed.port}/{parsed.database}"
        f"?password={parsed.password}"
    )
    assert PASSWORD in url and f":{PASSWORD}@" not in url
    assert main(["tune", spec_file(tmp_path), "--storage", url, "--threads", "1"]) == 0
    assert main(["export", "tiny", "--storage", url, "-o", str(tmp_path / "best.yaml")]) == 0
    captured = capfd.readouterr()
    assert PASSWORD not in captured.out + captured.err
    assert "password=***" in captured.out
    for path in tmp_path.glob("best*.yaml"):
        assert PASSWORD not in path.read_text()
        assert "password=***" in path.read_text()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM hvadam_runs")).all()
    engine.dispose()
    assert rows and PASSWORD not in repr(rows)


# ---- 2. Ray: loopback locally, token authentication on a cluster -------------------------------

_LISTENERS = """
import json, os, time
from studies.ray_backend.session import ray_session
with ray_session(num_cpus=1):
    import psutil  # Ray ships it
    me = psutil.Process()
    mine = {me.pid} | {p.pid for p in me.children(recursive=True)}
    found = [
        [c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()]
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in mine
    ]
    print("LISTENERS " + json.dumps(found))
"""


def test_a_local_ray_listens_on_the_loopback_interface_only(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", _LISTENERS],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LISTENERS ")]
    assert line, proc.stdout + proc.stderr
    import json

    listeners = json.loads(line[0].removeprefix("LISTENERS "))
    names = {name for _, _, name in listeners}
    assert "gcs_server" in names and "raylet" in names, listeners
    exposed = [entry for entry in listeners if entry[0] not in ("127.0.0.1", "::ffff:127.0.0.1")]
    assert not exposed, f"listening beyond the loopback interface: {exposed}"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def test_the_ray_cluster_job_starts_every_node_with_one_auth_token(tmp_path):
    import os
    import subprocess

    from studies.cluster import render_ray_cluster
    from studies.spec import load_spec

    spec = load_spec(spec_file(tmp_path), check=False)
    text = render_ray_cluster(
        spec=spec, storage="postgresql+psycopg://hv:pw@db/c", nodes=3, gpus_per_node=0
    )
    job = tmp_path / "job.sbatch"
    job.write_text(text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    record = f'echo "$(basename "$0") mode=$RAY_AUTH_MODE token=$RAY_AUTH_TOKEN $*" >> {log}'
    _stub(bin_dir, "scontrol", "printf 'n1\\nn2\\nn3\\n'")
    # srun: drop its own options, run the command (hostname prints the head's address).
    _stub(
        bin_dir,
        "srun",
        record + '\nwhile [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done\n'
        '[[ "$1" == hostname ]] && echo 10.0.0.1 || "$@"',
    )
    _stub(bin_dir, "ray", record)
    _stub(bin_dir, "hvadam", record)
    _stub(bin_dir, "sleep", "true")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        HVADAM_STORAGE="postgresql+psycopg://hv:pw@db/c",
        SLURM_JOB_NODELIST="n[1-3]",
    )
    proc = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [line for line in log.read_text().splitlines() if line.startswith(("ray ", "hvadam "))]
    assert len(calls) == 4  # head, two workers, the driver
    tokens = {line.split(" token=")[1].split(" ")[0] for line in calls}
    assert all(" mode=token " in line for line in calls), calls
    assert len(tokens) == 1 and len(tokens.pop()) == 64


def test_the_ray_cluster_recipe_keeps_token_authentication_on():
    from studies.cluster import template_text

    text = template_text("ray-cluster.sh")
    assert 'RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"' in text
    assert "ray get-auth-token --generate" in text


# ---- 3. PBT checkpoints never run code --------------------------------------------------------


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_pbt_checkpoint_holds_a_real_training_state_and_loads_weights_only(tmp_path):
    import torch

    import hvadam
    from studies.ray_backend.trial import load_checkpoint, save_checkpoint
    from studies.workloads import get_workload

    workload = get_workload("digits-mlp", epochs=1)
    states = []
    workload.run(
        lambda params: hvadam.create_optimizer("hvadam", params, lr=1e-3),
        seed=0,
        device="cpu",
        on_epoch=lambda rep: states.append(rep.state()),
    )
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"trial_number": 3, "run_id": 7, "epoch": 1, "state": states[-1]})
    saved = load_checkpoint(path)
    assert saved["trial_number"] == 3 and saved["epoch"] == 1
    for key, tensor in states[-1]["model"].items():
        assert torch.equal(saved["state"]["model"][key], tensor)
    assert torch.equal(saved["state"]["rng"], states[-1]["rng"])


def test_a_pbt_checkpoint_that_runs_code_is_refused(tmp_path):
    import torch

    from studies.ray_backend.session import RayError
    from studies.ray_backend.trial import load_checkpoint

    target = tmp_path / "pwned"
    path = tmp_path / "state.pt"
    torch.save({"trial_number": 0, "run_id": 1, "epoch": 1, "state": _Exploit(target)}, path)
    with pytest.raises(RayError, match="refused"):
        load_checkpoint(path)
    assert not target.exists()
