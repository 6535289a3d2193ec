"""Bounded input (issue items 6, 7 and the file parts of 8), attacked the way a user would, with
the CLI run in this process: every file a user names (search space, workload, config for
``validate``, rule file for ``rules check``, CSV to ``import``) is bounded before it is read.

``knobflow validate sqlite /dev/zero`` grew to 18.8 GB and set off a machine-wide out-of-memory
kill, a 21 MB space file took 150 s and 1.8 GB (101 s and 2.6 GB here); a FIFO would have been
waited on for ever. Deep nesting was a ``RecursionError``, a ``!!python/object`` tag in a rule
file was reported as "names no 'target:'", an empty space or workload file silently meant the
defaults. Imports: a duplicated header, a row with too many fields, a semicolon-delimited file,
a header-only file, exact duplicate rows, text, ``7`` or ``inf`` in a ``workload.*`` column and
instance names that are paths or spreadsheet formulas each get a precise message now.

Each attack must exit 2 with its exact one-line error, leave an existing home (a job, an import)
as it was, and return well within ``BLOW_UP`` seconds under a memory ceiling: a regression fails
the test instead of taking the machine down.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, invoke_cli

from targets.common.files import display_path
from targets.sqlite import SqliteTarget
from tasks.expert import check_rows

#: far above what a refusal takes on a busy machine, far below what the attacks took
BLOW_UP = 10.0
#: memory the process may add while an attack runs (reading /dev/zero would pass it in seconds)
CEILING = 2 << 30
EXPERT = REPO / "tests" / "data" / "expert" / "sqlite.csv"
FAST = ["--set-workload", "duration=0", "--verify-repeats", "2", "--no-train"]
TAG_FIX = ("is not allowed; remove it (a file holds plain values: numbers, text, lists and "
           "mappings, never code)")

#: each kind of file: how a user names it, what messages call it, its byte limit, the fix when
#: it is too big and the environment variable that raises the limit
KINDS: dict[str, tuple[Callable[[str, str], list[str]], str, int, str, str]] = {
    "space": (lambda f, h: ["tune", "synthetic", "--space", f, "--home", h],
              "search space file", 64 << 10, "list only the knobs you tune",
              "KNOBFLOW_MAX_SPACE_FILE_BYTES"),
    "workload": (lambda f, h: ["tune", "synthetic", "--workload", f, "--home", h],
                 "workload file", 64 << 10, "keep only the workload's parameters",
                 "KNOBFLOW_MAX_WORKLOAD_FILE_BYTES"),
    "config": (lambda f, h: ["validate", "synthetic", f, "--home", h],
               "config file", 64 << 10, "keep only the knobs and their values",
               "KNOBFLOW_MAX_CONFIG_FILE_BYTES"),
    "rules": (lambda f, h: ["rules", "check", f],
              "rule file", 1 << 20, "split it into several files", "KNOBFLOW_MAX_RULE_FILE_BYTES"),
    "import": (lambda f, h: ["import", "sqlite", f, "--home", h],
               "CSV to import", 4 << 20, "split it into several files",
               "KNOBFLOW_MAX_IMPORT_FILE_BYTES"),
}
#: a valid file of each kind (the oversized ones repeat it, or pad it with comments)
VALID = {
    "space": "knobs:\n  threads: {range: [2, 32]}\n",
    "workload": "shift: 0.5\n",
    "config": "mode: gamma\nthreads: 4\n",
    "rules": "target: synthetic\nrules:\n  - id: a\n    kind: forbid\n    when: threads > 60\n",
    "import": "journal_mode,ops_per_s\nwal,150000\n",
}


# -- the home that must stay as it was -----------------------------------------------------------
@pytest.fixture(scope="module")
def stored(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home holding a finished job and an expert import."""
    home = tmp_path_factory.mktemp("stored") / "kf"
    home.mkdir()
    job = invoke_cli(["tune", "synthetic", "--budget", "2", "--home", str(home), *FAST])
    assert job.returncode == 0, job.stderr
    imported = invoke_cli(["import", "sqlite", str(EXPERT), "--home", str(home)])
    assert imported.returncode == 0, imported.stderr
    return home


def snapshot(home: Path) -> dict[str, str]:
    """Every file and folder under ``home`` with a hash of its content."""
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "folder" for p in sorted(home.rglob("*"))}


@pytest.fixture
def home(stored: Path) -> Iterator[Path]:
    """The stored home; the test fails if anything in it changed."""
    before = snapshot(stored)
    assert any(k.startswith("jobs/") for k in before) and "expert/sqlite.parquet" in before
    yield stored
    assert snapshot(stored) == before, "bad input changed what was stored"


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """At most CEILING more bytes of address space while the block runs, and a BLOW_UP bound
    on its time."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    ceiling = pages * os.sysconf("SC_PAGE_SIZE") + CEILING
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    start = time.monotonic()
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    elapsed = time.monotonic() - start
    assert elapsed < BLOW_UP, f"took {elapsed:.1f} s"


def refused(args: list[str]) -> str:
    """Run ``knobflow ARGS`` bounded; it must exit 2 with one line on stderr: that line."""
    with bounded():
        result = invoke_cli(args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def attack(kind: str, path: Path, home: Path) -> str:
    return refused(KINDS[kind][0](str(path), str(home)))


# -- /dev/zero, FIFOs and files too big ------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_dev_zero_is_read_no_further_than_the_limit(kind: str, home: Path) -> None:
    """stat says 0 bytes for /dev/zero: the read itself stops one byte past the limit."""
    _, what, limit, shrink, variable = KINDS[kind]
    assert attack(kind, Path("/dev/zero"), home) == (
        f"knobflow: error: /dev/zero: the file is more than the {limit} bytes a {what} may hold; "
        f"{shrink}, or raise the limit with the environment variable {variable}"
    )


@contextlib.contextmanager
def rescued(fifo: Path) -> Iterator[None]:
    """Should the FIFO be opened for reading, a writer comes after BLOW_UP seconds and closes
    it: the reader sees its end and the test fails on its message, rather than hanging."""
    done = threading.Event()

    def rescue() -> None:
        if done.wait(BLOW_UP):
            return
        with contextlib.suppress(OSError):  # nobody reading: ENXIO
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("kind", KINDS)
def test_a_fifo_is_refused_not_waited_on(kind: str, home: Path, tmp_path: Path) -> None:
    fifo = tmp_path / f"{kind}.fifo"
    os.mkfifo(fifo)
    with rescued(fifo):
        message = attack(kind, fifo, home)
    assert message == (
        f"knobflow: error: {display_path(fifo)}: cannot read: it is a FIFO (named pipe), not a "
        f"regular file; save the {KINDS[kind][1]} as a regular file and name that"
    )


def oversized(kind: str, path: Path, size: int) -> Path:
    """A file of ``size`` bytes that parses slowly if read: the valid file over and over (a
    21 MB space file's values took 101 s and 2.6 GB), padded with comments."""
    text = VALID[kind]
    if kind == "space":
        body = "knobs:\n  mode:\n    values: ["
        text = body + "alpha, beta, " * ((size - len(body) - 7) // 13)
        text += " " * (size - len(text) - 7) + "gamma]\n"
    elif kind == "import":
        row = "wal,150000\n"
        text = text + row * ((size - len(text)) // len(row))
    pad = size - len(text.encode())
    if pad:
        text += "\n" * pad if kind == "import" else "#" * (pad - 1) + "\n"
    path.write_text(text, encoding="utf-8")
    assert path.stat().st_size == size
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_over_its_limit_is_refused_from_its_size(
    kind: str, home: Path, tmp_path: Path
) -> None:
    _, what, limit, shrink, variable = KINDS[kind]
    size = 21 << 20
    path = oversized(kind, tmp_path / f"big.{kind}", size)
    assert attack(kind, path, home) == (
        f"knobflow: error: {display_path(path)}: the file is {size} bytes, more than the "
        f"{limit} bytes a {what} may hold; {shrink}, or raise the limit with the environment "
        f"variable {variable}"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_the_limit_is_exact_and_raised_from_the_environment(
    kind: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from targets.common.files import (
        CONFIG_FILE,
        IMPORT_FILE,
        SPACE_FILE,
        WORKLOAD_FILE,
        UserFile,
        read_user_file,
    )

    files = {"space": SPACE_FILE, "workload": WORKLOAD_FILE, "config": CONFIG_FILE,
             "import": IMPORT_FILE,
             "rules": UserFile("rule file", KINDS["rules"][4], 1 << 20, KINDS["rules"][3])}
    _, what, _, shrink, variable = KINDS[kind]
    path = tmp_path / f"ok.{kind}"
    path.write_text(VALID[kind], encoding="utf-8")
    size = path.stat().st_size
    monkeypatch.setenv(variable, str(size))
    assert read_user_file(path, files[kind]) == VALID[kind]  # at the limit: read
    monkeypatch.setenv(variable, str(size - 1))
    assert attack(kind, path, home) == (
        f"knobflow: error: {display_path(path)}: the file is {size} bytes, more than the "
        f"{size - 1} bytes a {what} may hold; {shrink}, or raise the limit with the environment "
        f"variable {variable}"
    )
    monkeypatch.setenv(variable, "lots")
    assert attack(kind, path, home) == (
        f"knobflow: error: {variable}='lots': must be a whole number above 0 (default "
        f"{KINDS[kind][2]})"
    )


# -- hostile YAML ------------------------------------------------------------------------------
#: a YAML file of each kind holding ``value`` under its first key: (text, line, column of value)
YAML_KINDS = {
    "space": lambda value: ("knobs: " + value + "\n", 1, 8),
    "workload": lambda value: ("shift: " + value + "\n", 1, 8),
    "config": lambda value: ("mode: " + value + "\n", 1, 7),
    "rules": lambda value: ("target: " + value + "\nrules: []\n", 1, 9),
}


@pytest.mark.parametrize("kind", YAML_KINDS)
def test_deep_nesting_is_an_error_not_a_recursion_error(
    kind: str, home: Path, tmp_path: Path
) -> None:
    text, line, column = YAML_KINDS[kind]("[" * 10_000 + "]" * 10_000)
    if kind == "rules":  # the target is named; the rules nest
        text, line, column = "target: synthetic\nrules: " + "[" * 10_000 + "]" * 10_000, 2, 8
    path = tmp_path / f"deep.{kind}.yaml"
    path.write_text(text, encoding="utf-8")
    # the root mapping is level 1: the 50th '[' would be level 51
    assert attack(kind, path, home) == (
        f"knobflow: error: {display_path(path)}:{line}:{column + 49}: the document nests deeper "
        "than 50 levels; flatten it"
    )


@pytest.mark.parametrize("kind", YAML_KINDS)
def test_a_python_tag_is_refused_and_never_run(kind: str, home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text, line, column = YAML_KINDS[kind](f'!!python/object/apply:os.system ["touch {marker}"]')
    path = tmp_path / f"tagged.{kind}.yaml"
    path.write_text(text, encoding="utf-8")
    assert attack(kind, path, home) == (
        f"knobflow: error: {display_path(path)}:{line}:{column}: invalid YAML: the tag "
        f"'!!python/object/apply:os.system' {TAG_FIX}"
    )
    assert not marker.exists()


def laughs() -> str:
    """A "billion laughs": 10 values, 10 uses of those, ... 10**7 values in 200 bytes."""
    lines = ["a: &a [" + ", ".join(["1"] * 10) + "]"]
    for name, prev in zip("bcdefg", "abcdef", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def chain() -> str:
    """Anchors each 40 levels deep around the one before: 8,000 levels through aliases."""
    lines = ["a0: &a0 " + "[" * 40 + "1" + "]" * 40]
    lines += [f"a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 for i in range(1, 200)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind", ["config", "space", "workload"])
@pytest.mark.parametrize(("text", "message"), [
    (laughs(), ":2:8: aliases expand the document by more than 100000 values; write the values "
               "out instead"),
    (chain(), ":2:49: the document nests deeper than 50 levels through its aliases; write the "
              "values out instead"),
    ("a: &loop [1, *loop]\n", ":1:14: invalid YAML: an alias refers to a collection it is "
                              "inside of; write the values out instead"),
], ids=["billion-laughs", "deep-through-aliases", "loop"])
def test_aliases_that_blow_up_are_refused(
    kind: str, text: str, message: str, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / f"aliases.{kind}.yaml"
    path.write_text(text, encoding="utf-8")
    assert attack(kind, path, home) == f"knobflow: error: {display_path(path)}{message}"


def test_a_long_value_is_quoted_as_a_short_excerpt(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "long.yaml"
    config.write_text("threads: " + "7" * 200 + "x\n", encoding="utf-8")
    message = attack("config", config, home)
    assert message == (
        f"knobflow: error: {display_path(config)}:1:1: knob 'threads': "
        f"'{'7' * 40}'... is not an integer"
    )
    space = tmp_path / "longer.yaml"
    space.write_text("knobs:\n  mode: {values: [alpha, " + "b" * 10_000 + "]}\n", encoding="utf-8")
    message = attack("space", space, home)
    assert message == (
        f"knobflow: error: {display_path(space)}:2:26: a value of 10000 characters "
        f"('{'b' * 40}'...); a search space file holds values of at most 256 characters"
    )


# -- empty files -----------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "fix"), [
    ("space", "list the knobs to tune under 'knobs:', or leave out --space to tune every knob"),
    ("workload", "set the parameters to change, e.g. 'shift: 0.0', or leave out --workload to "
                 "use the target's defaults"),
    ("config", "a config is a mapping of knob to value, e.g. a job's best.yaml"),
])
@pytest.mark.parametrize("text", ["", "# knobs:\n#   threads: {}\n\n"])
def test_an_empty_file_is_an_error_not_the_defaults(
    kind: str, fix: str, text: str, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / f"empty.{kind}.yaml"
    path.write_text(text, encoding="utf-8")
    assert attack(kind, path, home) == (
        f"knobflow: error: {display_path(path)}: the file holds no settings (it is empty or "
        f"only comments); {fix}"
    )


# -- imports: the file -----------------------------------------------------------------------
IMPORT_FILES = [
    ("duplicated-header", "journal_mode,ops_per_s,journal_mode\nwal,5,wal\n",
     "column 'journal_mode' is named twice in the header (columns 1 and 3); keep one of them"),
    ("too-many-fields", "journal_mode,ops_per_s,latency_p50_us\nwal,150000,4,20\n",
     ":2: the row has 4 fields, but the header names 3 columns; quote a value that holds a "
     "comma (\"a,b\"), or remove the extra field"),
    ("too-few-fields", "journal_mode,ops_per_s,latency_p50_us\nwal,150000,4\nwal,150000\n",
     ":3: the row has 2 fields, but the header names 3 columns; give every column a field (an "
     "empty field, two commas, leaves a knob at its default)"),
    ("semicolons", "journal_mode;ops_per_s\nwal;150000\n",
     "the header is one column, 'journal_mode;ops_per_s': its columns are separated by ';'; "
     "separate them with commas (save the file as comma-separated values)"),
    ("tabs", "journal_mode\tops_per_s\nwal\t150000\n",
     "the header is one column, 'journal_mode\\tops_per_s': its columns are separated by '\\t'; "
     "separate them with commas (save the file as comma-separated values)"),
    ("header-only", "journal_mode,ops_per_s\n",
     "no rows under the header; add one row per measured config (its knobs and metrics)"),
    ("empty", "",
     "the file is empty; its first line names the columns (knobs, metrics, 'instance', "
     "'workload.<feature>'), then one row per measured config"),
    ("unnamed-column", "journal_mode,ops_per_s,\nwal,150000,\n",
     "column 3 of the header has no name; name it, or remove the comma before it"),
    ("unknown-workload", "journal_mode,ops_per_s,workload.read_ratoi\nwal,150000,0.5\n",
     "unknown column 'workload.read_ratoi' (did you mean 'workload.read_ratio'?); the workload "
     "features of target 'sqlite' are workload.rows, workload.ops, workload.read_ratio, "
     "workload.update_ratio, workload.value_size, workload.batch_size"),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in IMPORT_FILES],
                         ids=[i for i, _, _ in IMPORT_FILES])
def test_an_import_file_that_is_not_the_targets_csv(
    text: str, message: str, home: Path, tmp_path: Path
) -> None:
    path = tmp_path / "expert.csv"
    path.write_text(text, encoding="utf-8")
    separator = "" if message.startswith(":") else ": "
    assert attack("import", path, home) == (
        f"knobflow: error: {display_path(path)}{separator}{message}"
    )


def test_an_import_over_the_row_limit(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("journal_mode,ops_per_s\n" + "wal,150000\n" * 4, encoding="utf-8")
    monkeypatch.setenv("KNOBFLOW_MAX_IMPORT_ROWS", "3")
    assert attack("import", path, home) == (
        f"knobflow: error: {display_path(path)}:5: the file holds 4 rows, more than the 3 an "
        "import may hold; split it into several files, or raise the limit with the environment "
        "variable KNOBFLOW_MAX_IMPORT_ROWS"
    )


# -- imports: the rows -------------------------------------------------------------------------
INSTANCE_MUST = ("is not an instance name; use 1-64 letters, digits, '.', '_' or '-', starting "
                 "with a letter or digit")
BAD_ROWS = [
    # (the row after 'journal_mode,ops_per_s,workload.read_ratio,instance', its one reason)
    ("wal,150000,0.5,db-1", None),
    ("wal,150000,0.5,db-1", "an exact copy of line 2; a measurement counts once: remove the copy"),
    ("wal,150000,0.5,db-1", "an exact copy of line 2; a measurement counts once: remove the copy"),
    ("wal,150001,high,db-1", "workload.read_ratio: must be a number (got 'high')"),
    ("wal,150002,7,db-1", "workload.read_ratio: 7.0 is outside [0.0, 1.0], the workload limits "
                          "of target 'sqlite'"),
    ("wal,150003,inf,db-1", "workload.read_ratio: must be a finite number (got 'inf')"),
    ("wal,150004,0.5,../../etc", f"instance: '../../etc' {INSTANCE_MUST}"),
    ("wal,150005,0.5,eu/1", f"instance: 'eu/1' {INSTANCE_MUST}"),
    ('wal,150006,0.5,"=HYPERLINK(""http://x"")"',
     f"instance: '=HYPERLINK(\"http://x\")' {INSTANCE_MUST}"),
    ("wal,150007,0.5,+1", f"instance: '+1' {INSTANCE_MUST}"),
    ("wal,150008,0.5,-cmd", f"instance: '-cmd' {INSTANCE_MUST}"),
    ("wal,150009,0.5,@sum", f"instance: '@sum' {INSTANCE_MUST}"),
    ("wal,150010,0.5," + "a" * 65, f"instance: '{'a' * 40}'... {INSTANCE_MUST}"),
    ("wal,150011,0.5," + "b" * 64, None),
    ("delete,120000,0.9,", None),
]


def test_bad_rows_of_an_import_are_rejected_each_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("journal_mode,ops_per_s,workload.read_ratio,instance\n"
                    + "\n".join(row for row, _ in BAD_ROWS) + "\n", encoding="utf-8")
    result = check_rows(path, SqliteTarget)
    expected = [(line, [reason]) for line, (_, reason) in enumerate(BAD_ROWS, 2) if reason]
    assert result.rejected == expected
    assert [row["trial"] for row in result.kept] == [
        f"line-{line}" for line, (_, reason) in enumerate(BAD_ROWS, 2) if reason is None
    ]
    home = tmp_path / "kf"
    imported = invoke_cli(["import", "sqlite", str(path), "--home", str(home)])
    assert imported.returncode == 0, imported.stderr
    out = tmp_path / "train.parquet"
    export = invoke_cli(["export", "sqlite", "--out", str(out), "--training",
                         "--use-expert-data", "--home", str(home)])
    assert export.returncode == 0, export.stderr
    table = pd.read_parquet(out)
    assert len(table) == 3  # the copies once, no row with 7, inf or a bad instance
    assert table["workload.read_ratio"].between(0, 1).all()
    assert sorted(table["instance"]) == ["", "b" * 64, "db-1"]
