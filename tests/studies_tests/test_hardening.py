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
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
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


# ---- 4. overrides checked against the optimizer; devices -----------------------------------------


def _nothing_written(url: str) -> bool:
    path = Path(make_url(url).database)
    if not path.exists():
        return True
    engine = sa.create_engine(url)
    try:
        return not sa.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("optimizers", "key", "needle"),
    [
        ({"adam": {"lr": -0.5}}, "optimizers.adam.lr", "Invalid learning rate"),
        ({"adam": {"lr": float("nan")}}, "optimizers.adam.lr", "nan"),
        ({"adam": {"lr": "fast"}}, "optimizers.adam.lr", "'fast'"),
        (
            {"adam": {"eps": {"kind": "float", "low": -1.0, "high": -0.5, "default": -0.7}}},
            "optimizers.adam.eps",
            "refused by 'adam'",
        ),
        ({"adam": {"betas.0": {"high": 1.5}}}, "optimizers.adam.betas.0", "1.5"),
        ({"adam": {"colour": 3}}, "optimizers.adam.colour", "not a hyperparameter"),
    ],
)
def test_an_override_the_optimizer_refuses_fails_at_spec_load_naming_the_key(
    tmp_path, capsys, optimizers, key, needle
):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["tune", spec_file(tmp_path, optimizers=optimizers), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert f"{key}:" in err and needle in err, err
    assert _nothing_written(url)


def test_every_shipped_space_passes_the_optimizer_check():
    from search_spaces import available_spaces, load_space
    from studies.space_check import check_space_values

    for name in available_spaces():
        check_space_values("shipped", name, load_space(name))


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--device", "tpu"], "--device must be one of"),
        (["--device", "cpu\n"], "--device must be one of"),
    ],
)
def test_a_device_this_machine_cannot_use_is_refused_before_anything_is_written(
    tmp_path, capsys, flags, needle
):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["tune", spec_file(tmp_path), "--storage", url, *flags]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists()


def test_cuda_without_cuda_is_refused_before_anything_is_written(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["tune", spec_file(tmp_path), "--storage", url, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert main(["tune", spec_file(tmp_path, device="cuda:0"), "--storage", url]) == 2
    assert "device 'cuda:0': CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists()


# ---- 5, 9. run flags checked first ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--grace-period", "1", "--heartbeat-interval", "10"], "more than twice"),
        (["--heartbeat-interval", "120"], "more than twice"),
        (["--grace-period", "20", "--heartbeat-interval", "10"], "more than twice"),
        (["--workers", "0"], "--workers must be"),
        (["--workers", "100000"], "more than this machine can run"),
        (["--threads", "-3"], "--threads must be"),
        (["--heartbeat-interval", "0"], "--heartbeat-interval must be"),
        (["--max-concurrent", "2"], "only with --backend ray"),
    ],
)
def test_bad_run_flags_are_refused_before_the_storage_is_touched(tmp_path, capsys, flags, needle):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["tune", spec_file(tmp_path), "--storage", url, *flags]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "c.db").exists()


def test_worker_and_demo_check_their_flags_too(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    spec = spec_file(tmp_path)
    assert main(["worker", spec, "--storage", url, "--grace-period", "5"]) == 2
    assert "more than twice" in capsys.readouterr().err
    assert main(["demo", "--storage", url, "--seeds", "-1"]) == 2
    assert "--seeds must be" in capsys.readouterr().err
    assert main(["demo", "--storage", url, "--workers", "0"]) == 2
    assert not (tmp_path / "c.db").exists()


def test_runner_config_refuses_a_grace_period_within_two_heartbeats():
    from studies.campaign import CampaignError
    from studies.worker import RunnerConfig

    with pytest.raises(CampaignError, match="more than twice"):
        RunnerConfig(storage="sqlite:///x.db", heartbeat_interval=10, grace_period=20)
    assert RunnerConfig(storage="sqlite:///x.db", heartbeat_interval=1, grace_period=3)


# ---- 6, 7. one YAML reader -----------------------------------------------------------------------


def test_numbers_read_the_same_in_specs_configs_and_spaces(tmp_path):
    import hvadam
    from search_spaces import load_space
    from studies.spec import load_spec

    text = yaml.safe_dump(TINY) + "optimizers:\n  adam: {lr: {low: 1e-4, high: 1e-1}}\n"
    text = text.replace("optimizers:\n- hvadam\n- sgd\n", "")
    spec = load_spec(spec_file(tmp_path, text))
    assert spec.entry("adam").overrides == {"lr": {"low": 1e-4, "high": 1e-1}}
    config = tmp_path / "c.yaml"
    config.write_text("optimizer: adam\nhyperparameters: {lr: 3e-4, eps: 1e-8}\n")
    assert hvadam.load_config(config)["hyperparameters"]["lr"] == 3e-4
    space = tmp_path / "s.yaml"
    space.write_text(
        "optimizer: adam\nparams:\n  lr: {kind: float, low: 1e-5, high: 1e-1, log: true, default: 1e-3}\n"
    )
    assert load_space(space).params["lr"].low == 1e-5


def test_duplicate_keys_are_refused_in_specs_and_configs(tmp_path):
    import hvadam
    from studies.spec import SpecError, load_spec

    text = yaml.safe_dump(TINY) + "seed: 1\nseed: 2\n"
    with pytest.raises(SpecError, match="duplicate key 'seed' \\(line"):
        load_spec(spec_file(tmp_path, text))
    config = tmp_path / "c.yaml"
    config.write_text("optimizer: adam\nhyperparameters: {lr: 0.1, lr: 0.2}\n")
    with pytest.raises(ValueError, match="duplicate key 'lr'"):
        hvadam.load_config(config)


# ---- 8. names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"name": "abc\n"}, "name: must be a string"),
        ({"name": "a" * 256}, "at most 255 characters"),
        ({"optimizers": {"x" * 65: {"space": "adam"}}}, "at most 64 characters"),
        ({"optimizers": {"adam\n": {}}}, "an optimizer label must be"),
        ({"device": "cpu\n"}, "device: must be one of"),
    ],
)
def test_names_are_matched_whole_and_fit_the_database_columns(tmp_path, changes, needle):
    from studies.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=needle):
        load_spec(spec_file(tmp_path, **changes), check=False)


def test_the_longest_names_fit_optuna_and_postgresql(postgres_url, tmp_path, capsys):
    from studies.spec import MAX_LABEL_LENGTH, MAX_NAME_LENGTH

    name, label = "n" * MAX_NAME_LENGTH, "l" * MAX_LABEL_LENGTH
    spec = spec_file(
        tmp_path, name=name, optimizers={label: {"space": "sgd"}}, budget={"trials": 1}
    )
    assert main(["tune", spec, "--storage", postgres_url, "--threads", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", name, "--storage", postgres_url, "--format", "csv"]) == 0
    assert label in capsys.readouterr().out


def test_a_partition_name_with_a_newline_is_refused(tmp_path):
    from studies.cluster import ClusterError, render_slurm_workers
    from studies.spec import load_spec

    spec = load_spec(spec_file(tmp_path), check=False)
    with pytest.raises(ClusterError, match="--partition"):
        render_slurm_workers(
            spec=spec,
            storage="postgresql+psycopg://hv:pw@db/c",
            workers=1,
            partition="gpu\n#SBATCH --x",
        )


# ---- 10. confirm seeds ------------------------------------------------------------------------------


def test_confirm_seeds_are_bounded(tmp_path):
    from studies.spec import MAX_CONFIRM_SEEDS, SpecError, load_spec

    with pytest.raises(
        SpecError, match=f"confirm.seeds: must be an integer in \\[0, {MAX_CONFIRM_SEEDS}\\]"
    ):
        load_spec(spec_file(tmp_path, confirm={"seeds": 100_000_000}), check=False)


def test_the_claim_lookup_does_not_walk_every_seed_slot():
    from studies.results.claims import open_slots as _open_slots

    seeds = 10**12  # far beyond the bound: the lookup must not depend on it
    claims = [
        {"slot": 0, "status": "done", "heartbeat_at": 0.0},
        {"slot": 1, "status": "running", "heartbeat_at": 0.0},
        {"slot": 2, "status": "running", "heartbeat_at": 1e12},
    ]
    slots = _open_slots(claims, seeds, lambda c: c["heartbeat_at"] < 1.0)
    assert slots is not None
    assert [next(slots) for _ in range(3)] == [1, 3, 4]
    done = [{"slot": s, "status": "done", "heartbeat_at": 0.0} for s in range(3)]
    assert _open_slots(done, 3, lambda c: True) is None


# ---- 11. read-only commands create nothing ---------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "tiny"],
        ["compare", "tiny"],
        ["report", "tiny", "-o", "out"],
        ["export", "tiny"],
    ],
)
def test_read_only_commands_never_create_a_database(tmp_path, capsys, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    assert main([*command, "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "nothing was created" in err
    assert list(tmp_path.iterdir()) == []


# ---- 12. export outputs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_campaign(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("tiny")
    url = f"sqlite:///{root / 'c.db'}"
    assert main(["tune", spec_file(root), "--storage", url, "--threads", "1", "--quiet"]) == 0
    return url


def test_export_refuses_a_suffix_load_optimizer_cannot_read(tiny_campaign, tmp_path, capsys):
    for name in ("best.txt", "best.json"):
        code = main(
            [
                "export",
                "tiny",
                "--storage",
                tiny_campaign,
                "-o",
                str(tmp_path / name),
                "--format",
                "yaml",
            ]
        )
        assert code == 2
        assert "must end in .yaml or .yml" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_reports_write_errors_as_such(tiny_campaign, tmp_path, capsys):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    full = tmp_path / "best.yaml"
    full.symlink_to("/dev/full")
    assert (
        main(["export", "tiny", "--storage", tiny_campaign, "-o", str(full), "--optimizer", "sgd"])
        == 2
    )
    assert "No space left on device" in capsys.readouterr().err
    assert main(["export", "tiny", "--storage", tiny_campaign, "-o", "/dev/full"]) == 2
    assert "must end in .yaml or .yml" in capsys.readouterr().err


def test_export_never_creates_missing_parent_directories(tiny_campaign, tmp_path, capsys):
    for target in ("no/such/best.yaml", "no/such/dir"):
        assert (
            main(["export", "tiny", "--storage", tiny_campaign, "-o", str(tmp_path / target)]) == 2
        )
        assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert main(["export", "tiny", "--storage", tiny_campaign, "-o", str(tmp_path / "dir")]) == 0
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["hvadam.yaml", "sgd.yaml"]


# ---- 13. a campaign in which no run completed -----------------------------------------------------


@pytest.fixture(scope="module")
def diverged_campaign(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every trial diverges (SGD at lr 1000 on a quadratic): no run completes."""
    root = tmp_path_factory.mktemp("diverged")
    url = f"sqlite:///{root / 'c.db'}"
    spec = spec_file(
        root,
        name="nc",
        workload={
            "name": "noisy-quadratic",
            "options": {"dim": 10, "steps": 60, "report_every": 20},
        },
        optimizers={"sgd": {"lr": 1000.0}},
    )
    assert main(["tune", spec, "--storage", url, "--threads", "1", "--quiet"]) == 0
    return url


def test_study_notes_of_a_campaign_without_a_completed_run(diverged_campaign):
    from dashboards.notes import annotate_studies

    assert annotate_studies(diverged_campaign, "nc") == ["nc/sgd"]


def test_report_of_a_campaign_without_a_completed_run_says_so(diverged_campaign, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", "nc", "--storage", diverged_campaign, "-o", str(out)]) == 0
    assert "No completed run yet" in capsys.readouterr().out
    assert "No completed run yet" in (out / "report.html").read_text()


def test_export_of_a_campaign_without_a_completed_run_fails_clearly(diverged_campaign, capsys):
    assert main(["export", "nc", "--storage", diverged_campaign]) == 2
    assert "has no completed run to export" in capsys.readouterr().err


# ---- 15. a corrupted database ---------------------------------------------------------------------


def test_a_corrupted_database_is_reported_by_its_root_cause_in_one_line(
    tiny_campaign, tmp_path, capsys
):
    import shutil

    source = Path(make_url(tiny_campaign).database)
    copy = tmp_path / "c.db"
    shutil.copy(source, copy)
    for suffix in ("-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copy(f"{source}{suffix}", f"{copy}{suffix}")
    engine = sa.create_engine(f"sqlite:///{copy}")
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    size = copy.stat().st_size
    with open(copy, "r+b") as fh:  # every page but the first (the schema) overwritten
        fh.seek(4096)
        fh.write(b"\xff" * (size - 4096))
    url = f"sqlite:///{copy}"
    for command in (["status", "tiny"], ["tune", spec_file(tmp_path), "--threads", "1"]):
        assert main([*command, "--storage", url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "database disk image is malformed" in err[0], err


def test_an_error_summary_names_the_root_cause():
    from studies.storage import error_summary

    try:
        try:
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("disk I/O error"))
        except Exception as inner:
            raise RuntimeError("An exception is raised during the commit.\nmore") from inner
    except RuntimeError as exc:
        assert error_summary(exc) == (
            "An exception is raised during the commit. (cause: OperationalError: "
            "(builtins.Exception) disk I/O error)"
        )


# ---- 17. compare --format json ----------------------------------------------------------------------


def test_compare_json_keeps_full_precision(tiny_campaign, capsys):
    import json

    from studies.results import compare_frame

    frame = compare_frame(tiny_campaign, "tiny")
    assert main(["compare", "tiny", "--storage", tiny_campaign, "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    for rec, row in zip(records, frame.to_dict(orient="records"), strict=True):
        for key in ("best_value", "confirm_mean", "compute_time"):
            assert rec[key] == row[key], key  # exactly, not to 10 digits


def test_compare_json_keeps_tiny_values():
    import json

    import pandas as pd

    from studies.formatting import format_compare

    frame = pd.DataFrame(
        [{"optimizer": "a", "best_value": 3.2e-11, "confirm_std": float("nan"), "n": 3}]
    )
    (rec,) = json.loads(format_compare(frame, "json"))
    assert rec == {"optimizer": "a", "best_value": 3.2e-11, "confirm_std": None, "n": 3}


# ---- siblings: data files never run code ------------------------------------------------------------


def test_a_cifar_batch_that_runs_code_is_refused(tmp_path):
    import pickle

    from workload_files import write_tiny_cifar

    from studies.workloads import DataNotFoundError
    from studies.workloads.cifar import load_cifar

    root = write_tiny_cifar(tmp_path / "data", "cifar10", train=20, test=10)
    images = load_cifar(root, "cifar10")
    assert tuple(images.train_x.shape) == (20, 3, 32, 32)  # the real format still loads
    target = tmp_path / "pwned"
    batch = next((root).rglob("data_batch_1"))
    batch.write_bytes(pickle.dumps({"data": _Exploit(target), "labels": [0]}))
    with pytest.raises(DataNotFoundError, match="not allowed in a data file"):
        load_cifar(root, "cifar10")
    assert not target.exists()
