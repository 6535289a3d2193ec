"""Faults of the environment never become learned rules (issue 12, item 1): a trial timeout
shorter than the default's own trial, a failure the default config shares, a full disk. A
full disk is an ``io_error`` and stops the job instead of burning its budget."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import invoke_cli

from flows.tune import JobFailed, tune
from rules.learn import LearnedRules, learned_path, propose_forbid
from rules.ruleset import RuleSet
from targets.common.errors import DiskFull, HarnessBroken
from targets.synthetic import SyntheticTarget
from tuners.space import SearchSpace

SPEC = SyntheticTarget.knob_spec()


def _learned(home: Path, service: str) -> list[dict]:
    return LearnedRules(learned_path(home, service), SPEC).documents()


def _default_file(tmp_path: Path) -> Path:
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump(SPEC.defaults()))
    return path


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_a_timeout_shorter_than_the_defaults_own_trial_teaches_nothing(
    prefect_api: str, home: Path, tmp_path: Path
) -> None:
    # every trial, the default's included, lasts 1.5 s: a 1 s timeout times them all out
    with pytest.raises(JobFailed) as failed:  # no trial completed: the flow run is Failed
        tune("synthetic", budget=4, seed=1, trial_timeout=1.0, train=False,
             workload={"duration": 1.5, "noise": 0.0}, home=str(home))
    summary = failed.value.summary
    assert summary.failure_classes == {"timeout": 4}
    assert summary.learned_rules == [] and _learned(home, "synthetic") == []
    checked = invoke_cli(["validate", "synthetic", str(_default_file(tmp_path)),
                          "--home", str(home)])
    assert checked.returncode == 0, checked.stdout + checked.stderr  # the default still passes


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_a_failure_the_default_config_shares_teaches_nothing(
    prefect_api: str, home: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"  # every config crashes, the default's too (compress, threads)
    space.write_text(yaml.safe_dump({"knobs": {"x": {}, "buffer_kb": {}},
                                     "fixed": {"threads": 60, "compress": True}}))
    with pytest.raises(JobFailed) as failed:
        tune("synthetic", budget=5, seed=2, space_file=str(space), train=False,
             workload={"duration": 0.0}, home=str(home))
    summary = failed.value.summary
    assert summary.failure_classes == {"crash": 5}
    assert summary.learned_rules == [] and _learned(home, "synthetic") == []


def test_a_rule_that_would_block_the_default_config_is_never_proposed() -> None:
    space = SearchSpace.full(SPEC)
    assert propose_forbid(SPEC.defaults(), [], space, RuleSet.for_target(SyntheticTarget)) is None


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (skipped where the machine does not allow mounting)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_is_an_io_error_that_stops_the_job_and_teaches_nothing(
    prefect_api: str, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "24m") as disk:
        home = disk / "kf"
        # 200,000 rows of 200 bytes need ~50 MB: the first trial (the default) fills the disk
        with pytest.raises(DiskFull, match=r"trial 0 on local failed: disk full \(.*MiB free "
                                           r"under .*\): .*; free some space, then continue "
                                           r"the job with --resume"):
            tune("sqlite", budget=10, seed=1, train=False, home=str(home), noise_runs=0,
                 workload={"rows": 200_000, "ops": 1000, "value_size": 200})
        job = next((home / "jobs").glob("*/job.json"))
        record = yaml.safe_load(job.read_text())
        assert record["status"] == "interrupted"  # resumable once there is room
        trials = list((job.parent / "trials").iterdir())
        assert [t.name for t in trials] == ["0"], "the job went on burning its budget"
        assert _learned(home, "sqlite") == []
        assert shutil.disk_usage(disk).free > 8 * 2**20, "the failed trial's data stayed"


@pytest.mark.usefixtures("mlflow_store")  # made once per session: not what is tested here
def test_a_target_the_trials_cannot_import_stops_the_job_after_a_few_trials(
    prefect_api: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the target's module is where the tuner finds it but not where the trial processes run
    # (a plug-in installed for one Python only, an upgrade half done): every trial fails before
    # the target runs its config
    from targets import registry

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "kf_elsewhere.py").write_text(
        "from targets.synthetic import SyntheticTarget as Elsewhere  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(plugin))  # this process only: PYTHONPATH does not name it
    entry_points = {**registry._entry_points(), "synthetic": "kf_elsewhere:Elsewhere"}
    monkeypatch.setattr(registry, "_entry_points", lambda: entry_points)
    with pytest.raises(HarnessBroken, match=r"trials \d+, \d+, \d+ each failed before the target "
                                            r"ran their config .*ModuleNotFoundError: No module "
                                            r"named 'kf_elsewhere'.*--resume"):
        tune("synthetic", budget=10, seed=1, train=False, home=str(home), noise_runs=0,
             workload={"duration": 0.0})
    job = next((home / "jobs").glob("*/job.json"))
    assert yaml.safe_load(job.read_text())["status"] == "interrupted"  # resumable once fixed
    ran = list((job.parent / "trials").iterdir())  # a candidate the rules blocked never ran
    assert len(ran) == 3, f"the job went on burning its budget: {ran}"
    assert _learned(home, "synthetic") == []
