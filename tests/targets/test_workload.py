"""Workload files and ``--set-workload`` values: every bad example under tests/data/bad/workloads
fails with its exact one-line error through ``flows.job.resolve_workload``; good files, overrides
and ``parse_assignments`` give typed, range-checked workloads.

Each bad example starts with ``# error: <message>``; ``{path}`` in the message stands for the
file as ``display_path`` shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flows.job import parse_assignments, resolve_workload
from targets.base import Measurement, Target
from targets.common.errors import KnobflowError, WorkloadError
from targets.common.files import display_path
from targets.synthetic import SyntheticTarget

DATA = Path(__file__).resolve().parent.parent / "data"
BAD_WORKLOADS = sorted((DATA / "bad" / "workloads").glob("*.yaml"))
GOOD_WORKLOADS = sorted((DATA / "good" / "workloads").glob("*.yaml"))
DEFAULTS = {"shift": 0.0, "noise": 0.03, "duration": 0.05, "intervals": 5}
KNOWN = "known: shift, noise, duration, intervals"


def expected_error(path: Path) -> str:
    """The message a bad example must give: its first line, ``# error: ...``, path filled in."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith("# error: "), f"{path.name}: first line must be '# error: <message>'"
    return first.removeprefix("# error: ").replace("{path}", display_path(path))


def raises_workload_error(call: Any, *args: Any) -> str:
    """Call; it must raise a WorkloadError with a one-line message, which is returned."""
    with pytest.raises(WorkloadError) as info:
        call(*args)
    assert type(info.value) is WorkloadError
    assert isinstance(info.value, KnobflowError)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- bad examples --------------------------------------------------------------------------------
def test_there_are_bad_workload_examples() -> None:
    assert len(BAD_WORKLOADS) >= 10


@pytest.mark.parametrize("path", BAD_WORKLOADS, ids=lambda p: p.stem)
def test_bad_workload_fails_with_its_error(path: Path) -> None:
    expected = expected_error(path)
    assert expected.startswith(display_path(path) + ":")
    message = raises_workload_error(resolve_workload, SyntheticTarget, str(path), {})
    assert message == expected


def test_bad_workload_file_is_reported_even_if_an_override_would_fix_it() -> None:
    path = DATA / "bad" / "workloads" / "above_limit.yaml"
    message = raises_workload_error(resolve_workload, SyntheticTarget, str(path), {"shift": "0.5"})
    assert message == expected_error(path)


def test_missing_workload_file(tmp_path: Path) -> None:
    path = tmp_path / "wl.yaml"
    message = raises_workload_error(resolve_workload, SyntheticTarget, str(path), {})
    assert message == f"{display_path(path)}: file not found"


# -- good examples -------------------------------------------------------------------------------
GOOD = {
    "empty": DEFAULTS,
    "shifted": {"shift": 1.0, "noise": 0.0, "duration": 0.05, "intervals": 1000},
}


def test_every_good_workload_has_expectations() -> None:
    assert sorted(p.stem for p in GOOD_WORKLOADS) == sorted(GOOD)


@pytest.mark.parametrize("path", GOOD_WORKLOADS, ids=lambda p: p.stem)
def test_good_workload(path: Path) -> None:
    workload = resolve_workload(SyntheticTarget, str(path), {})
    assert workload == GOOD[path.stem]
    assert list(workload) == list(DEFAULTS)
    for key, value in workload.items():
        assert type(value) is type(DEFAULTS[key])


def test_no_file_no_overrides_gives_the_defaults() -> None:
    assert resolve_workload(SyntheticTarget, None, {}) == DEFAULTS
    assert resolve_workload(SyntheticTarget, "", {}) == DEFAULTS


# -- --set-workload ------------------------------------------------------------------------------
def test_overrides_are_coerced() -> None:
    workload = resolve_workload(
        SyntheticTarget, None, {"shift": "0.25", "intervals": "1_000", "noise": "0"}
    )
    assert workload == {"shift": 0.25, "noise": 0.0, "duration": 0.05, "intervals": 1000}
    assert type(workload["intervals"]) is int and type(workload["noise"]) is float


def test_overrides_win_over_the_file() -> None:
    path = DATA / "good" / "workloads" / "shifted.yaml"
    workload = resolve_workload(SyntheticTarget, str(path), {"shift": "0.5", "intervals": "7"})
    assert workload == {"shift": 0.5, "noise": 0.0, "duration": 0.05, "intervals": 7}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"shift": "2"}, "--set-workload: workload parameter 'shift' = 2.0 is outside [0.0, 1.0]"),
        (
            {"noise": "-0.5"},
            "--set-workload: workload parameter 'noise' = -0.5 is outside [0.0, 1.0]",
        ),
        (
            {"intervals": "0"},
            "--set-workload: workload parameter 'intervals' = 0 is outside [1, 1000]",
        ),
        (
            {"shfit": "1"},
            "--set-workload: unknown workload parameter 'shfit' for target "
            f"'synthetic' (did you mean 'shift'?); {KNOWN}",
        ),
        (
            {"clients": "8"},
            f"--set-workload: unknown workload parameter 'clients' for target 'synthetic'; {KNOWN}",
        ),
        (
            {"intervals": "ten"},
            "--set-workload: workload parameter 'intervals' must be an integer, got 'ten'",
        ),
        (
            {"intervals": "2.5"},
            "--set-workload: workload parameter 'intervals' must be an integer, got '2.5'",
        ),
        (
            {"shift": ""},
            "--set-workload: workload parameter 'shift' must be a finite number, got ''",
        ),
        (
            {"shift": "nan"},
            "--set-workload: workload parameter 'shift' must be a finite number, got 'nan'",
        ),
    ],
)
def test_bad_overrides(overrides: dict[str, str], message: str) -> None:
    assert raises_workload_error(resolve_workload, SyntheticTarget, None, overrides) == message


def test_bad_override_is_named_as_such_even_with_a_file() -> None:
    path = DATA / "good" / "workloads" / "shifted.yaml"
    message = raises_workload_error(resolve_workload, SyntheticTarget, str(path), {"shift": "3"})
    assert message == "--set-workload: workload parameter 'shift' = 3.0 is outside [0.0, 1.0]"


# -- parse_assignments ---------------------------------------------------------------------------
def test_parse_assignments() -> None:
    assert parse_assignments([]) == {}
    assert parse_assignments(["shift=0.5", " noise = 0.1 ", "tag=a=b", "empty="]) == {
        "shift": "0.5",
        "noise": "0.1",
        "tag": "a=b",
        "empty": "",
    }
    assert parse_assignments(["shift=0.1", "shift=0.2"]) == {"shift": "0.2"}  # the last wins


@pytest.mark.parametrize("item", ["shift", "=0.5", " =0.5", ""])
def test_parse_assignments_refuses(item: str) -> None:
    message = raises_workload_error(parse_assignments, ["noise=0.1", item])
    assert message == f"--set-workload {item!r}: expected KEY=VALUE, e.g. read_ratio=0.9"


def test_parse_assignments_names_its_option() -> None:
    message = raises_workload_error(parse_assignments, ["shift"], "--set")
    assert message == "--set 'shift': expected KEY=VALUE, e.g. read_ratio=0.9"


def test_assignments_then_resolve() -> None:
    overrides = parse_assignments(["shift=1", "intervals=3"])
    assert resolve_workload(SyntheticTarget, None, overrides) == {
        **DEFAULTS,
        "shift": 1.0,
        "intervals": 3,
    }


# -- Target.parse_workload with every parameter type ---------------------------------------------
class _Toy(Target):
    name: ClassVar[str] = "toy"
    workload_defaults: ClassVar[Mapping[str, Any]] = {
        "warm": True,
        "label": "a",
        "clients": 4,
        "ratio": 0.5,
    }
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = {"clients": (1, 64)}
    default_objective: ClassVar[str] = "ops"

    def start(self, config: Mapping[str, Any]) -> None:  # pragma: no cover - never run
        pass

    def run(self) -> Measurement:  # pragma: no cover - never run
        raise NotImplementedError


class _NoWorkload(_Toy):
    name: ClassVar[str] = "bare"
    workload_defaults: ClassVar[Mapping[str, Any]] = {}
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = {}


def test_parse_workload_coerces_every_type() -> None:
    assert _Toy.parse_workload({}) == {"warm": True, "label": "a", "clients": 4, "ratio": 0.5}
    got = _Toy.parse_workload({"warm": "off", "label": 7, "clients": 8.0, "ratio": 1})
    assert got == {"warm": False, "label": "7", "clients": 8, "ratio": 1.0}
    assert type(got["clients"]) is int and type(got["ratio"]) is float
    for text, value in [("yes", True), ("ON", True), ("1", True), ("no", False), ("0", False)]:
        assert _Toy.parse_workload({"warm": text})["warm"] is value


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"warm": "maybe"}, "wl: workload parameter 'warm' must be true or false, got 'maybe'"),
        ({"warm": 2}, "wl: workload parameter 'warm' must be true or false, got 2"),
        ({"clients": True}, "wl: workload parameter 'clients' must be an integer, got true"),
        ({"ratio": False}, "wl: workload parameter 'ratio' must be a finite number, got false"),
        ({"clients": 65}, "wl: workload parameter 'clients' = 65 is outside [1, 64]"),
        (
            {"client": 5},
            "wl: unknown workload parameter 'client' for target 'toy' "
            "(did you mean 'clients'?); known: warm, label, clients, ratio",
        ),
    ],
)
def test_parse_workload_refuses(values: dict[str, Any], message: str) -> None:
    assert raises_workload_error(_Toy.parse_workload, values, "wl") == message


def test_parse_workload_default_source_and_no_parameters() -> None:
    message = raises_workload_error(_NoWorkload.parse_workload, {"x": 1})
    assert message == "workload: unknown workload parameter 'x' for target 'bare'; known: none"
