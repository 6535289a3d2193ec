"""The contract every target meets, as checks that run real trials (for tests and for authors).

Each target declares small inputs (``Target.contract_examples()``); the checks then show that the
default config runs and yields metrics with its effective config read back, a refused config fails
with its class, a hang ends at the hard timeout and leaves the instance usable, two instances run
side by side, and no process outlives a trial. ``tests/targets/test_contract.py`` runs them against
every registered target; ``knobflow check-target NAME`` runs them against one (e.g. your own).

Each requirement has an id (``REQUIREMENTS``) that its violation names and that
``docs/targets.md``, the guide for authors of targets, explains (a test keeps the two in step).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from targets.base import MAXIMIZE, ContractExamples, Target
from targets.registry import load_target, target_ref
from tasks.runner import TrialRunner
from tuners.trials import TrialOutcome

#: Every requirement the checks below hold a target to, by id (the guide explains each).
REQUIREMENTS = {
    "contract-examples": "the target declares contract_examples(): at least one variant",
    "default-runs": "the default config runs the example workload and its measurement passes "
                    "the measurement gate",
    "objective-measured": "the default objective is measured (above 0 when it is maximized)",
    "knobs-read-back": "every knob of the spec is in the effective config read back",
    "workload-features": "workload_features() is a non-empty dict of floats",
    "refused-class": "the refused config ends with the declared failure class",
    "refused-message": "a refused config carries the system's own message",
    "hang-timeout": "the hanging config ends as a timeout, within timeout_s + 10 s",
    "hang-leaves-nothing": "no process is left in the instance after the timeout",
    "usable-after-hang": "the next trial on that instance runs",
    "side-by-side": "two instances run the default config at the same time",
    "nothing-outlives": "no process of the instance or the job outlives a trial",
}
GUIDE = "docs/targets.md"


class ContractViolation(AssertionError):
    """A target broke requirement ``requirement`` of its contract; the message says how, and
    where the guide explains the requirement."""

    def __init__(self, requirement: str, detail: str) -> None:
        if requirement not in REQUIREMENTS:
            raise ValueError(f"unknown contract requirement {requirement!r}")
        self.requirement = requirement
        super().__init__(f"{detail} [{requirement}, see {GUIDE}]")


class NotApplicable(Exception):
    """The check does not apply to this target (e.g. it has no known hang)."""


@dataclass(frozen=True)
class Variant:
    """One contract variant of a target (e.g. one driver), with the examples it declared."""

    target: str
    name: str
    examples: ContractExamples

    @property
    def cls(self) -> type[Target]:
        return load_target(self.target)

    def missing_executables(self) -> list[str]:
        return [exe for exe in self.examples.requires if shutil.which(exe) is None]

    @property
    def trial_timeout_s(self) -> float:
        """Hard timeout of the checks' normal trials: the target's own, as in a job.

        Only the hang runs under the short ``timeout_s``; a default config slowed by a loaded
        machine is not a hang (a 3 s db_bench default once took 12.3 s beside CI's other worker).
        """
        return max(self.examples.timeout_s, self.cls.trial_timeout_s)

    def runner(
        self, root: Path, instance: str = "i1", timeout_s: float | None = None
    ) -> TrialRunner:
        """A runner for one instance; its trials end at ``timeout_s`` (default: the normal one)."""
        cls = self.cls
        return TrialRunner(
            target_cls=cls,
            target_ref=target_ref(self.target),
            workload=cls.parse_workload(self.examples.workload, f"{self.target} contract workload"),
            objective=cls.default_objective,
            timeout_s=self.trial_timeout_s if timeout_s is None else timeout_s,
            job_dir=root / "job",
            instance_dirs={instance: root / instance},
        )

    def defaults(self) -> dict:
        return self.cls.knob_spec().defaults()


def variants(target: str) -> list[Variant]:
    """The contract variants a target declares (a target declaring none violates the contract)."""
    examples = load_target(target).contract_examples()
    if not examples:
        raise ContractViolation("contract-examples",
                                f"target '{target}' declares no contract_examples()")
    return [Variant(target, name, ex) for name, ex in examples.items()]


def processes_using(path: Path) -> list[str]:
    """Processes (other than this one) whose command line or working directory is in ``path``."""
    found = []
    marker = str(path)
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if proc.info["pid"] == os.getpid():
            continue
        cmd = " ".join(proc.info["cmdline"] or [])
        if marker in cmd or str(proc.info["cwd"] or "").startswith(marker):
            found.append(f"{proc.info['pid']}: {cmd[:120]}")
    return found


def _require_ok(outcome: TrialOutcome, what: str, requirement: str) -> None:
    if not outcome.ok:
        tail = "\n".join(outcome.log_tail[-5:])
        raise ContractViolation(
            requirement, f"{what} failed: {outcome.failure_class}: {outcome.message}\n{tail}"
        )


def check_default_runs(v: Variant, root: Path) -> None:
    """The default config runs, yields the objective, and every knob is read back."""
    cls = v.cls
    outcome = v.runner(root).run("default", v.defaults(), "i1", seed=1)
    _require_ok(outcome, "the default config", "default-runs")
    objective = cls.default_objective
    if objective not in outcome.metrics:
        raise ContractViolation("objective-measured",
                                f"the objective '{objective}' was not measured")
    if cls.metrics[objective] == MAXIMIZE and outcome.metrics[objective] <= 0:
        raise ContractViolation("objective-measured",
                                f"the objective '{objective}' is {outcome.metrics[objective]}")
    missing = set(cls.knob_spec().names) - set(outcome.effective_config)
    if missing:
        raise ContractViolation("knobs-read-back",
                                f"knobs not read back from the system: {sorted(missing)}")
    features = cls.workload_features(cls.parse_workload(v.examples.workload))
    if not features or not all(isinstance(x, float) for x in features.values()):
        raise ContractViolation("workload-features",
                                f"workload_features must be a non-empty dict of floats: {features}")


def check_refused(v: Variant, root: Path) -> None:
    """A config the system refuses fails with the declared class and the system's message."""
    if v.examples.refused is None:
        raise NotApplicable(f"{v.target} refuses no config")
    outcome = v.runner(root).run("refused", {**v.defaults(), **v.examples.refused}, "i1", seed=1)
    if outcome.failure_class != v.examples.refused_class:
        raise ContractViolation(
            "refused-class", f"refused config ended as {outcome.failure_class or 'a success'}, "
            f"expected {v.examples.refused_class}: {outcome.message}"
        )
    if not outcome.message.strip():
        raise ContractViolation("refused-message",
                                "a refused config must carry the system's message")


def check_hang(v: Variant, root: Path) -> None:
    """A hanging config ends at the hard timeout, leaves nothing running; the next trial runs."""
    if v.examples.hang is None:
        raise NotApplicable(f"{v.target} has no known hang")
    started = time.monotonic()
    hang = {**v.defaults(), **v.examples.hang}
    hung = v.runner(root, timeout_s=v.examples.timeout_s).run("hang", hang, "i1", seed=1)
    elapsed = time.monotonic() - started
    if hung.failure_class != "timeout":
        raise ContractViolation("hang-timeout",
                                f"the hang ended as {hung.failure_class}: {hung.message}")
    if elapsed > v.examples.timeout_s + 10:
        raise ContractViolation(
            "hang-timeout", f"the hard timeout of {v.examples.timeout_s} s took {elapsed:.1f} s"
        )
    left = processes_using(root / "i1")
    if left:
        raise ContractViolation("hang-leaves-nothing", f"processes survived the timeout: {left}")
    after = v.runner(root).run("after-hang", v.defaults(), "i1", seed=2)
    _require_ok(after, "the trial after a hang", "usable-after-hang")


def check_side_by_side(v: Variant, root: Path) -> None:
    """Two instances run the default config at the same time, each in its own data directory."""
    outcomes: dict[str, TrialOutcome] = {}

    def run(name: str) -> None:
        outcomes[name] = v.runner(root / name, name).run("side", v.defaults(), name, seed=3)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=v.trial_timeout_s + 60)  # each trial ends by its own hard timeout
    for name in ("a", "b"):
        if name not in outcomes:
            raise ContractViolation("side-by-side", f"instance {name} did not finish")
        _require_ok(outcomes[name], f"instance {name}, side by side", "side-by-side")


def check_nothing_outlives(v: Variant, root: Path) -> None:
    """After a trial, no process started by the target is left."""
    _require_ok(v.runner(root).run("once", v.defaults(), "i1", seed=4), "the default config",
                "default-runs")
    left = processes_using(root / "i1") + processes_using(root / "job")
    if left:
        raise ContractViolation("nothing-outlives", f"processes outlived the trial: {left}")


CHECKS: dict[str, Callable[[Variant, Path], None]] = {
    "default config runs, effective config read back": check_default_runs,
    "refused config fails with its class": check_refused,
    "hang ends at the timeout, instance usable after": check_hang,
    "two instances run side by side": check_side_by_side,
    "nothing outlives a trial": check_nothing_outlives,
}
