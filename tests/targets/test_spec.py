"""Knob specs: every bad example under tests/data/bad/specs fails with its exact one-line error,
the good examples and the shipped specs load, and ``KnobSpec.validate_config`` checks configs.

Each bad example starts with ``# error: <message>``; ``{path}`` in the message stands for the
file as ``display_path`` shows it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from targets.common.errors import ConfigError, KnobflowError, SpecError
from targets.common.files import display_path
from targets.spec import KNOB_TYPES, Knob, KnobSpec, load_spec, parse_spec
from targets.synthetic import SyntheticTarget
from tuners.space import SearchSpace

DATA = Path(__file__).resolve().parent.parent / "data"
BAD_SPECS = sorted((DATA / "bad" / "specs").glob("*.yaml"))
GOOD_SPECS = sorted((DATA / "good" / "specs").glob("*.yaml"))
# (not ``import targets``: under pytest, tests/targets can shadow the package as a namespace)
SHIPPED_SPECS = sorted(SyntheticTarget.spec_path().parent.glob("*.yaml"))


def expected_error(path: Path) -> str:
    """The message a bad example must give: its first line, ``# error: ...``, path filled in."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith("# error: "), f"{path.name}: first line must be '# error: <message>'"
    return first.removeprefix("# error: ").replace("{path}", display_path(path))


def assert_one_line(message: str, expected: str) -> None:
    assert message == expected
    assert "\n" not in message and "\r" not in message


# -- bad examples --------------------------------------------------------------------------------
def test_there_are_bad_spec_examples() -> None:
    assert len(BAD_SPECS) >= 25


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_fails_with_its_error(path: Path) -> None:
    expected = expected_error(path)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert type(info.value) is SpecError
    assert isinstance(info.value, KnobflowError)
    assert_one_line(str(info.value), expected)


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_error_names_the_file(path: Path) -> None:
    assert expected_error(path).startswith(display_path(path) + ":")


def test_missing_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert_one_line(str(info.value), f"{display_path(path)}: file not found")


def test_spec_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{display_path(tmp_path)}: cannot read: ")
    assert "\n" not in message


def test_a_spec_file_is_bounded_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "spec.yaml"
    shutil.copy(DATA / "good" / "specs" / "minimal.yaml", path)
    size = path.stat().st_size
    monkeypatch.setenv("KNOBFLOW_MAX_SPEC_FILE_BYTES", str(size))
    assert len(load_spec(path)) >= 1  # at the limit: read
    monkeypatch.setenv("KNOBFLOW_MAX_SPEC_FILE_BYTES", str(size - 1))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert_one_line(str(info.value), (
        f"{display_path(path)}: the file is {size} bytes, more than the {size - 1} bytes a knob "
        "spec may hold; shorten it, or raise the limit with the environment variable "
        "KNOBFLOW_MAX_SPEC_FILE_BYTES"
    ))


def test_a_long_value_in_a_message_is_a_short_excerpt() -> None:
    knob = Knob(name="n", type="int", default=1, low=1, high=8)
    assert knob.problem_with("x" * 10_000) == f"'{'x' * 40}'... is not an integer"
    assert knob.problem_with([0] * 10_000).endswith("... is not an integer")
    assert len(knob.problem_with([0] * 10_000) or "") < 80


def test_parse_spec_names_its_source() -> None:
    data = {"target": "t", "knobs": {"n": {"type": "int", "range": [1, 8], "default": 9}}}
    with pytest.raises(SpecError) as info:
        parse_spec(data, "<inline>")
    assert str(info.value) == "<inline>: knob 'n': default 9 is outside range [1, 8]"


# -- display_path --------------------------------------------------------------------------------
def test_display_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert display_path(tmp_path / "sub" / "a.yaml") == str(Path("sub") / "a.yaml")
    assert display_path("sub/a.yaml") == str(Path("sub") / "a.yaml")


def test_display_path_falls_back_to_the_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shown = display_path(SyntheticTarget.spec_path())
    assert shown == str(Path("targets") / "specs" / "synthetic.yaml")


# -- good examples -------------------------------------------------------------------------------
def test_there_are_good_spec_examples() -> None:
    assert GOOD_SPECS


@pytest.mark.parametrize("path", GOOD_SPECS, ids=lambda p: p.stem)
def test_good_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert isinstance(spec, KnobSpec)
    assert spec.source == display_path(path)
    assert len(spec) >= 1
    for knob in spec:
        assert knob.type in KNOB_TYPES
        assert knob.problem_with(knob.default) is None
    assert spec.validate_config(spec.defaults(), "defaults") == spec.defaults()
    SearchSpace.full(spec).distributions()  # Optuna accepts every knob


def test_good_spec_every_field() -> None:
    spec = load_spec(DATA / "good" / "specs" / "every_field.yaml")
    assert spec.target == "example"
    assert spec.names == [
        "cache_size",
        "mmap_size",
        "ratio",
        "latency_ms",
        "page_size",
        "journal_mode",
        "mixed",
        "fsync",
        "io.scheduler",
    ]
    cache = spec["cache_size"]
    assert (cache.type, cache.low, cache.high, cache.default) == ("int", -2000000, -16, -2000)
    assert (cache.log, cache.unit, cache.restart) == (False, "KiB", False)
    assert cache.description == "Page cache size; negative values are KiB."  # folded, trimmed
    assert spec["mmap_size"].log is True
    ratio = spec["ratio"]
    assert (ratio.low, ratio.high, ratio.default) == (0.0, 1.0, 1.0)
    assert all(type(v) is float for v in (ratio.low, ratio.high, ratio.default))
    assert spec["page_size"].values == (512, 1024, 4096, 65536)
    assert spec["page_size"].restart is True
    assert spec["journal_mode"].values[-1] == "off"  # quoted, so not false
    assert spec["mixed"].values == ("auto", 2, 2.5, True)
    assert spec["fsync"].choices == (False, True)
    assert spec["fsync"].default is True
    assert spec["io.scheduler"].log is False
    assert spec["journal_mode"].description == "How the rollback journal is kept."
    assert spec["mixed"].description == "" and spec["mixed"].unit == ""

    assert SearchSpace.full(spec).distributions() == {
        "cache_size": IntDistribution(-2000000, -16, log=False),
        "mmap_size": IntDistribution(1, 1073741824, log=True),
        "ratio": FloatDistribution(0.0, 1.0, log=False),
        "latency_ms": FloatDistribution(0.01, 1000.0, log=True),
        "page_size": CategoricalDistribution([512, 1024, 4096, 65536]),
        "journal_mode": CategoricalDistribution(
            ["delete", "truncate", "persist", "memory", "wal", "off"]
        ),
        "mixed": CategoricalDistribution(["auto", 2, 2.5, True]),
        "fsync": CategoricalDistribution([False, True]),
        "io.scheduler": CategoricalDistribution(["none", "mq-deadline"]),
    }
    assert spec["cache_size"].domain_text() == "[-2000000, -16]"
    assert spec["journal_mode"].domain_text() == (
        "{'delete', 'truncate', 'persist', 'memory', 'wal', 'off'}"
    )
    assert spec["fsync"].domain_text() == "{false, true}"


def test_fingerprint_ignores_where_the_file_is(tmp_path: Path) -> None:
    original = DATA / "good" / "specs" / "every_field.yaml"
    copy = tmp_path / "moved.yaml"
    shutil.copy(original, copy)
    a, b = load_spec(original), load_spec(copy)
    assert a.source != b.source
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 12
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        original.read_text(encoding="utf-8").replace("default: -2000", "default: -4000"),
        encoding="utf-8",
    )
    assert load_spec(changed).fingerprint() != a.fingerprint()


# -- shipped specs -------------------------------------------------------------------------------
def test_there_are_shipped_specs() -> None:
    assert any(p.stem == "synthetic" for p in SHIPPED_SPECS)


@pytest.mark.parametrize("path", SHIPPED_SPECS, ids=lambda p: p.stem)
def test_shipped_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.target == path.stem  # Target.spec_path() looks for specs/<name>.yaml
    for knob in spec:
        assert knob.problem_with(knob.default) is None
    dists = SearchSpace.full(spec).distributions()
    assert list(dists) == spec.names


def test_synthetic_target_spec() -> None:
    spec = SyntheticTarget.knob_spec()
    assert spec.target == "synthetic"
    assert spec.names == ["x", "y", "threads", "buffer_kb", "mode", "compress"]
    assert SyntheticTarget.knob_spec() is spec  # parsed once per class


# -- validate_config -----------------------------------------------------------------------------
@pytest.fixture
def synthetic() -> KnobSpec:
    return SyntheticTarget.knob_spec()


@pytest.fixture
def example() -> KnobSpec:
    return load_spec(DATA / "good" / "specs" / "every_field.yaml")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"thread": 8},
            "cfg.json: unknown knob 'thread' for target 'synthetic' (did you mean 'threads'?)",
        ),
        ({"cache_size": 8}, "cfg.json: unknown knob 'cache_size' for target 'synthetic'"),
        ({"threads": "many"}, "cfg.json: knob 'threads': 'many' is not an integer"),
        ({"threads": 2.5}, "cfg.json: knob 'threads': 2.5 is not an integer"),
        ({"threads": True}, "cfg.json: knob 'threads': true is not an integer"),
        ({"threads": 100}, "cfg.json: knob 'threads': 100 is outside range [1, 64]"),
        ({"threads": "0"}, "cfg.json: knob 'threads': 0 is outside range [1, 64]"),
        ({"x": "abc"}, "cfg.json: knob 'x': 'abc' is not a finite number"),
        ({"x": "nan"}, "cfg.json: knob 'x': nan is not a finite number"),
        ({"x": 1.5}, "cfg.json: knob 'x': 1.5 is outside range [0.0, 1.0]"),
        ({"y": 0}, "cfg.json: knob 'y': 0.0 is outside range [0.001, 1000.0]"),
        (
            {"mode": "delta"},
            "cfg.json: knob 'mode': 'delta' is not one of {'alpha', 'beta', 'gamma'}",
        ),
        ({"compress": "maybe"}, "cfg.json: knob 'compress': 'maybe' is not true or false"),
        ({"compress": 2}, "cfg.json: knob 'compress': 2 is not true or false"),
        ({"x": 0.5, "threads": 0}, "cfg.json: knob 'threads': 0 is outside range [1, 64]"),
    ],
)
def test_validate_config_refuses(synthetic: KnobSpec, config: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        synthetic.validate_config(config, "cfg.json")
    assert isinstance(info.value, KnobflowError)
    assert_one_line(str(info.value), message)


def test_validate_config_needs_a_mapping(synthetic: KnobSpec) -> None:
    with pytest.raises(ConfigError) as info:
        synthetic.validate_config([("threads", 8)], "cfg.json")  # type: ignore[arg-type]
    assert str(info.value) == "cfg.json: a config must be a mapping of knob to value"


def test_validate_config_coerces_text_and_numbers(synthetic: KnobSpec) -> None:
    clean = synthetic.validate_config(
        {"threads": "8", "buffer_kb": 1024.0, "x": 1, "y": " 2.5 ", "compress": "true"}, "cfg"
    )
    assert clean == {"threads": 8, "buffer_kb": 1024, "x": 1.0, "y": 2.5, "compress": True}
    assert type(clean["threads"]) is int and type(clean["buffer_kb"]) is int
    assert type(clean["x"]) is float


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("True", True),
        ("on", True),
        ("yes", True),
        ("1", True),
        ("false", False),
        ("OFF", False),
        ("no", False),
        ("0", False),
        (False, False),
    ],
)
def test_validate_config_coerces_bools(synthetic: KnobSpec, text: object, value: bool) -> None:
    assert synthetic.validate_config({"compress": text}, "cfg") == {"compress": value}


def test_validate_config_coerces_int_valued_categoricals(example: KnobSpec) -> None:
    clean = example.validate_config({"page_size": "4096", "mixed": "2.5"}, "cfg")
    assert clean == {"page_size": 4096, "mixed": 2.5}
    assert type(clean["page_size"]) is int
    assert example.validate_config({"mixed": "True"}, "cfg") == {"mixed": True}
    with pytest.raises(ConfigError) as info:
        example.validate_config({"page_size": "4097"}, "cfg")
    assert str(info.value) == "cfg: knob 'page_size': '4097' is not one of {512, 1024, 4096, 65536}"


def test_validate_config_keeps_strings_of_string_categoricals(example: KnobSpec) -> None:
    assert example.validate_config({"journal_mode": "off"}, "cfg") == {"journal_mode": "off"}
    with pytest.raises(ConfigError):
        example.validate_config({"journal_mode": False}, "cfg")


def test_validate_config_is_partial_and_full_config_fills_defaults(synthetic: KnobSpec) -> None:
    clean = synthetic.validate_config({"threads": "16"}, "cfg")
    assert clean == {"threads": 16}
    full = synthetic.full_config(clean)
    assert full == {**synthetic.defaults(), "threads": 16}
    assert list(full) == synthetic.names


def test_knob_lookup(synthetic: KnobSpec) -> None:
    assert synthetic.knob("mode", "here").type == "categorical"
    assert "mode" in synthetic and "nope" not in synthetic
    with pytest.raises(ConfigError) as info:
        synthetic.knob("buffer", "--set")
    assert str(info.value) == (
        "--set: unknown knob 'buffer' for target 'synthetic' (did you mean 'buffer_kb'?)"
    )


def test_a_knobs_position_in_its_range_and_back() -> None:
    linear = Knob("x", "float", 0.5, low=0.0, high=2.0)
    log = Knob("buffer_kb", "int", 256, low=16, high=65536, log=True)
    assert linear.position(0.5) == pytest.approx(0.25)
    assert log.position(256) == pytest.approx(1 / 3)  # 2^4 .. 2^16: 2^8 is a third of the way
    assert linear.position(3.0) > 1 and log.position(8) < 0  # outside the range: outside 0..1
    for knob, value in ((linear, 1.7), (log, 4096)):
        assert knob.value_at(knob.position(value)) == pytest.approx(value)
    assert log.value_at(1.4) == 65536 and linear.value_at(-0.2) == 0.0  # clipped
    assert Knob("mode", "categorical", "a", values=("a", "b")).position("b") == 0.0
