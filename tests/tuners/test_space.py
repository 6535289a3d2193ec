"""Search-space override files: every bad example under tests/data/bad/spaces fails with its exact
one-line error (checked against the synthetic target's spec); the good ones give the expected
Optuna distributions, configs and default params.

Each bad example starts with ``# error: <message>``; ``{path}`` in the message stands for the
file as ``display_path`` shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from targets.common.errors import KnobflowError, SpecError
from targets.common.files import display_path
from targets.spec import KnobSpec, load_spec
from targets.synthetic import SyntheticTarget
from tuners.space import SearchSpace, load_space, parse_space, space_for_knobs

DATA = Path(__file__).resolve().parent.parent / "data"
BAD_SPACES = sorted((DATA / "bad" / "spaces").glob("*.yaml"))
GOOD_SPACES = sorted((DATA / "good" / "spaces").glob("*.yaml"))

FULL = {
    "x": FloatDistribution(0.0, 1.0, log=False),
    "y": FloatDistribution(0.001, 1000.0, log=True),
    "threads": IntDistribution(1, 64, log=False),
    "buffer_kb": IntDistribution(16, 65536, log=True),
    "mode": CategoricalDistribution(["alpha", "beta", "gamma"]),
    "compress": CategoricalDistribution([False, True]),
}
DEFAULTS = SyntheticTarget.knob_spec().defaults()


def expected_error(path: Path) -> str:
    """The message a bad example must give: its first line, ``# error: ...``, path filled in."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith("# error: "), f"{path.name}: first line must be '# error: <message>'"
    return first.removeprefix("# error: ").replace("{path}", display_path(path))


@pytest.fixture(scope="module")
def spec() -> KnobSpec:
    return SyntheticTarget.knob_spec()


# -- bad examples --------------------------------------------------------------------------------
def test_there_are_bad_space_examples() -> None:
    assert len(BAD_SPACES) >= 20


@pytest.mark.parametrize("path", BAD_SPACES, ids=lambda p: p.stem)
def test_bad_space_fails_with_its_error(path: Path, spec: KnobSpec) -> None:
    expected = expected_error(path)
    assert expected.startswith(display_path(path) + ":")
    with pytest.raises(SpecError) as info:
        load_space(path, spec)
    assert type(info.value) is SpecError
    assert isinstance(info.value, KnobflowError)
    message = str(info.value)
    assert message == expected
    assert "\n" not in message


def test_missing_space_file(tmp_path: Path, spec: KnobSpec) -> None:
    path = tmp_path / "space.yaml"
    with pytest.raises(SpecError) as info:
        load_space(path, spec)
    assert str(info.value) == f"{display_path(path)}: file not found"


# -- good examples -------------------------------------------------------------------------------
GOOD: dict[str, dict[str, Any]] = {
    "empty": {"dists": FULL, "fixed": {}, "default_params": DEFAULTS},
    "narrowed": {
        "dists": {
            "x": FloatDistribution(0.0, 0.4, log=False),
            "y": FloatDistribution(0.01, 100.0, log=True),
            "threads": IntDistribution(2, 32, log=True),
            "buffer_kb": IntDistribution(1024, 8192, log=False),
            "mode": CategoricalDistribution(["gamma", "beta"]),
            "compress": CategoricalDistribution([False, True]),
        },
        "fixed": {},
        "default_params": None,  # the defaults of x, buffer_kb and mode are outside
    },
    "keeps_defaults": {
        "dists": {
            "threads": IntDistribution(1, 16, log=False),
            "buffer_kb": FULL["buffer_kb"],
            "mode": FULL["mode"],
            "y": FloatDistribution(0.001, 1000.0, log=False),
        },
        "fixed": {"compress": True, "x": 1.0},
        "default_params": {k: DEFAULTS[k] for k in ("threads", "buffer_kb", "mode", "y")},
    },
    "only_fixed": {
        "dists": {k: v for k, v in FULL.items() if k not in ("mode", "buffer_kb")},
        "fixed": {"mode": "beta", "buffer_kb": 4096},
        "default_params": {k: DEFAULTS[k] for k in ("x", "y", "threads", "compress")},
    },
}


def test_every_good_space_has_expectations() -> None:
    assert sorted(p.stem for p in GOOD_SPACES) == sorted(GOOD)


@pytest.mark.parametrize("path", GOOD_SPACES, ids=lambda p: p.stem)
def test_good_space(path: Path, spec: KnobSpec) -> None:
    want = GOOD[path.stem]
    space = load_space(path, spec)
    dists = space.distributions()
    assert dists == want["dists"]
    assert list(dists) == list(want["dists"])  # file order
    for name, dist in dists.items():  # types, not only equal values
        if isinstance(dist, (IntDistribution, FloatDistribution)):
            assert type(dist.low) is type(want["dists"][name].low)
            assert type(dist.high) is type(want["dists"][name].high)
    assert space.fixed == want["fixed"]
    assert all(type(v) is type(DEFAULTS[k]) for k, v in space.fixed.items())
    assert space.names == list(want["dists"])
    assert space.default_params() == want["default_params"]


@pytest.mark.parametrize("path", GOOD_SPACES, ids=lambda p: p.stem)
def test_good_space_config_fills_defaults_and_fixed(path: Path, spec: KnobSpec) -> None:
    space = load_space(path, spec)
    params = {"threads": 2} if "threads" in space.names else {}
    config = space.config(params)
    assert config == {**DEFAULTS, **space.fixed, **params}
    assert list(config) == spec.names
    assert spec.validate_config(config, "trial") == config


def test_config_order_of_precedence(spec: KnobSpec) -> None:
    space = load_space(DATA / "good" / "spaces" / "keeps_defaults.yaml", spec)
    config = space.config({"threads": 12, "mode": "gamma"})
    assert config == {
        "x": 1.0,
        "y": 1.0,
        "threads": 12,
        "buffer_kb": 256,
        "mode": "gamma",
        "compress": True,
    }


@pytest.mark.parametrize("path", GOOD_SPACES, ids=lambda p: p.stem)
def test_to_dict_round_trips(path: Path, spec: KnobSpec) -> None:
    """What a job records (``to_dict``) reloads to the same space (``--resume``)."""
    space = load_space(path, spec)
    again = parse_space(space.to_dict(), spec, "job test")
    assert again.distributions() == space.distributions()
    assert again.fixed == space.fixed
    assert again.tuned == space.tuned


def test_full_space(spec: KnobSpec) -> None:
    space = SearchSpace.full(spec)
    assert space.distributions() == FULL
    assert space.fixed == {}
    assert space.default_params() == DEFAULTS
    assert space.config({}) == DEFAULTS
    assert parse_space(None, spec, "none").distributions() == FULL
    assert parse_space({}, spec, "empty").distributions() == FULL
    assert parse_space(space.to_dict(), spec, "job").tuned == space.tuned


def test_narrowing_keeps_the_spec_untouched(spec: KnobSpec) -> None:
    load_space(DATA / "good" / "spaces" / "narrowed.yaml", spec)
    assert SearchSpace.full(spec).distributions() == FULL
    assert spec["threads"].low == 1 and spec["threads"].high == 64


def test_range_at_the_limits_is_allowed(spec: KnobSpec) -> None:
    space = parse_space(
        {"knobs": {"threads": {"range": [1, 64]}, "y": {"range": [0.001, 1000]}}}, spec, "s"
    )
    assert space.distributions() == {"threads": FULL["threads"], "y": FULL["y"]}


def test_default_params_none_when_a_range_excludes_a_default(spec: KnobSpec) -> None:
    default = DEFAULTS["threads"]
    inside = parse_space({"knobs": {"threads": {"range": [default, 8]}}}, spec, "s")
    assert inside.default_params() == {"threads": default}
    outside = parse_space({"knobs": {"threads": {"range": [default + 1, 8]}}}, spec, "s")
    assert outside.default_params() is None
    values = parse_space({"knobs": {"mode": {"values": ["beta", "gamma"]}}}, spec, "s")
    assert values.default_params() is None


def test_int_valued_categorical_values_are_coerced() -> None:
    example = load_spec(DATA / "good" / "specs" / "every_field.yaml")
    space = parse_space({"knobs": {"page_size": {"values": ["4096", 512]}}}, example, "s")
    assert space.distributions() == {"page_size": CategoricalDistribution([4096, 512])}
    assert space.default_params() == {"page_size": 4096}


def test_parse_space_errors_name_their_source(spec: KnobSpec) -> None:
    with pytest.raises(SpecError) as info:
        parse_space({"knobs": {"threads": {"range": [0, 8]}}}, spec, "job j1")
    assert str(info.value) == (
        "job j1: knob 'threads': range [0, 8] is outside the knob's limits [1, 64]; "
        "narrow it to fit inside"
    )
    with pytest.raises(SpecError) as info:
        parse_space("threads", spec, "job j1")
    assert str(info.value) == (
        "job j1: a search space must be a mapping with 'knobs' and/or 'fixed'"
    )


# -- --knobs a,b ---------------------------------------------------------------------------------
def test_space_for_knobs(spec: KnobSpec) -> None:
    space = space_for_knobs(spec, ["mode", "threads"])
    assert space.names == ["mode", "threads"]
    assert space.distributions() == {"mode": FULL["mode"], "threads": FULL["threads"]}
    assert space.fixed == {}
    assert space.default_params() == {"mode": "alpha", "threads": DEFAULTS["threads"]}
    assert space.config({"threads": 9}) == {**DEFAULTS, "threads": 9}


def test_space_for_knobs_unknown_knob(spec: KnobSpec) -> None:
    with pytest.raises(SpecError) as info:
        space_for_knobs(spec, ["threads", "thread"])
    assert str(info.value) == (
        "--knobs: unknown knob 'thread' for target 'synthetic' (did you mean 'threads'?)"
    )
    with pytest.raises(SpecError) as info:
        space_for_knobs(spec, ["latency"], source="--knobs latency")
    assert str(info.value) == "--knobs latency: unknown knob 'latency' for target 'synthetic'"
