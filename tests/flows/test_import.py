"""`knobflow import` of an expert's CSV and `knobflow export` of the trial table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import REPO, invoke_cli, run_cli

from flows.trials import service_table

EXPERT = REPO / "tests" / "data" / "expert" / "sqlite.csv"


def test_import_keeps_good_rows_and_rejects_bad_ones_with_reasons(home: Path) -> None:
    # a process of its own: the table of rejected rows is as wide as COLUMNS says
    result = run_cli(["import", "sqlite", str(EXPERT), "--home", str(home)],
                     env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2 rows kept (source=expert), 6 rejected" in out
    for line, reason in [
        ("4", "knob 'journal_mode': 'bogus' is not one of"),
        ("5", "knob 'cache_size': 5000000 is outside range [-1048576, -64]"),
        ("6", "metric.ops_per_s: must be a number (got 'fast')"),
        ("7", "ops_per_s must be above 0 and at most 1e+08"),
        ("8", "metric.ops_per_s: ops_per_s, the default objective, must be measured"),
        ("9", "the p99 latency cannot be below the p50 (got 20 vs 50)"),
    ]:
        assert any(row.split("│")[1].strip() == line and reason in row
                   for row in out.splitlines() if row.count("│") >= 3), (line, reason)

    table = service_table(home, "sqlite")
    assert list(table["source"]) == ["expert", "expert"]
    assert sorted(table["trial"]) == ["line-2", "line-3"]
    assert set(table["knob.journal_mode"]) == {"wal"}
    assert table["knob.page_size"].tolist() == [4096, 4096]  # knobs left out are at default
    assert table["workload.read_ratio"].tolist() == [0.8, 0.8]

    again = invoke_cli(["import", "sqlite", str(EXPERT), "--home", str(home)])
    assert again.returncode == 0
    assert len(service_table(home, "sqlite")) == 2  # no duplicates


def test_expert_rows_stay_out_of_training_unless_asked(home: Path, tmp_path: Path) -> None:
    assert invoke_cli(["import", "sqlite", str(EXPERT), "--home", str(home)]).returncode == 0
    for args, rows in ([], 2), (["--training"], 0), (["--training", "--use-expert-data"], 2):
        out = tmp_path / f"t{len(args)}.parquet"
        result = invoke_cli(["export", "sqlite", "--out", str(out), "--home", str(home), *args])
        assert result.returncode == 0, result.stderr
        assert len(pd.read_parquet(out)) == rows, args


def test_bad_import_files(home: Path, tmp_path: Path) -> None:
    bad_column = tmp_path / "bad.csv"
    bad_column.write_text("journal_mod,ops_per_s\nwal,5\n")
    result = invoke_cli(["import", "sqlite", str(bad_column), "--home", str(home)])
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"knobflow: error: {bad_column}: unknown column 'journal_mod' (did you mean "
        "'journal_mode'?); columns are the knobs and metrics of target 'sqlite', 'instance' and "
        "'workload.<feature>'"
    )
    no_metric = tmp_path / "nometric.csv"
    no_metric.write_text("journal_mode\nwal\n")
    result = invoke_cli(["import", "sqlite", str(no_metric), "--home", str(home)])
    assert result.returncode == 2
    assert "no metric column; add at least one of ops_per_s" in result.stderr
    all_bad = tmp_path / "allbad.csv"
    all_bad.write_text("journal_mode,ops_per_s\nbogus,5\n")
    result = invoke_cli(["import", "sqlite", str(all_bad), "--home", str(home)])
    assert result.returncode == 1
    assert "0 rows kept" in result.stdout
    assert not (home / "expert").exists(), "nothing stored when nothing was kept"
