"""Speed of the rule engine: 100,000 candidate configs checked against 20 rules at once.

The rules are RocksDB's shipped set (rules/sets/rocksdb.yaml, 8 rules) and 12 more written below as
a rule file (parsed by the real parser): constraints with arithmetic over several knobs, the
machine's facts and workload parameters, ``? :``, ``$min``/``$max``/``$abs`` and ``in [...]``,
and forbids. The candidates are random configs of RocksDB's whole search space
(``rules.review.sample_space``). Reported: compiling the 20 rules, ``RuleSet.check_frame`` over
all candidates (best of several runs), and ``RuleSet.check`` called once per config on 1,000 of
them for contrast. Goal: ``check_frame`` under 1 s for 100,000 configs x 20 rules.

    python benchmarks/rules_speed.py [--configs 100000] [--repeats 5] [--single 1000]

Prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from rich.console import Console
from rich.table import Table

from rules.parse import load_rule_file, parse_rules
from rules.review import sample_space
from rules.ruleset import RuleSet, shipped_rules_path
from targets.rocksdb import RocksdbTarget
from tuners.space import SearchSpace

EXTRA = """\
target: rocksdb
rules:
  - id: memtables-fit-memory
    kind: constraint
    expr: >-
      write_buffer_size * (max_write_buffer_number + min_write_buffer_number_to_merge)
      <= 0.25 * machine.memory
  - id: cache-and-memtables-fit
    kind: constraint
    expr: >-
      (block_cache_size + write_buffer_size * max_write_buffer_number) / 1048576
      <= machine.memory_mb * 0.75
  - id: jobs-per-core
    kind: constraint
    expr: max_background_jobs <= $max([2, machine.cores * 2])
  - id: files-fit-disk
    kind: constraint
    expr: target_file_size_base * level0_slowdown_writes_trigger <= machine.disk / 4
  - id: level-base-vs-file
    kind: constraint
    expr: >-
      max_bytes_for_level_base
      >= target_file_size_base * $min([level0_file_num_compaction_trigger, 4])
  - id: bloom-for-reads
    kind: constraint
    expr: "workload.read_ratio > 0.5 ? bloom_bits >= 4 : true"
    severity: warn
  - id: block-fits-cache
    kind: constraint
    expr: block_size * 1024 <= block_cache_size + 1048576
  - id: sync-size
    kind: constraint
    expr: bytes_per_sync == 0 or bytes_per_sync * 4 <= write_buffer_size
  - id: slowdown-margin
    kind: constraint
    expr: $abs(level0_slowdown_writes_trigger - level0_file_num_compaction_trigger * 2) <= 48
  - id: no-compression-small-blocks
    kind: forbid
    when: compression in ['zstd', 'lz4'] and block_size < 2048 and bloom_bits > 18
  - id: few-files-many-jobs
    kind: forbid
    when: max_open_files == 64 and max_background_jobs >= 7 and not cache_index_and_filter_blocks
  - id: tiny-buffer-many-merges
    kind: forbid
    when: >-
      write_buffer_size < 2 * 1048576 and min_write_buffer_number_to_merge >= 3
      and workload.num_keys > 100000
"""


def build_rules() -> tuple[RuleSet, float]:
    """The 20 rules and how long loading and compiling them took (seconds)."""
    spec = RocksdbTarget.knob_spec()
    workload = dict(RocksdbTarget.workload_defaults)
    path = shipped_rules_path(RocksdbTarget)
    assert path is not None
    started = time.perf_counter()
    rules = load_rule_file(path, spec, RocksdbTarget, workload)
    rules += parse_rules(EXTRA, "benchmarks/rules_speed.py", spec, RocksdbTarget, workload)
    compiled = time.perf_counter() - started
    return RuleSet(spec=spec, rules=rules, workload=workload), compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--single", type=int, default=1000, help="configs checked one at a time")
    args = parser.parse_args()

    compile_s = []
    for _ in range(args.repeats):
        ruleset, seconds = build_rules()
        compile_s.append(seconds)
    n_rules = len(ruleset.config_rules)
    space = SearchSpace.full(ruleset.spec)
    started = time.perf_counter()
    frame = sample_space(space, args.configs, seed=0)
    sample_s = time.perf_counter() - started

    frame_s = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        verdicts = ruleset.check_frame(frame)
        frame_s.append(time.perf_counter() - started)

    configs = frame.head(args.single).to_dict(orient="records")
    started = time.perf_counter()
    single = [ruleset.check(c).blocked for c in configs]
    single_s = time.perf_counter() - started
    agree = single == verdicts["blocked"].head(args.single).tolist()

    console = Console(width=120)
    table = Table(title=f"rule engine: {n_rules} rules (rocksdb shipped + 12), {args.configs:,} "
                        f"random configs; {platform.processor() or platform.machine()}, "
                        f"{os.cpu_count()} cores")
    for col in ("step", "configs", "best s", "median s", "per config µs", "note"):
        table.add_column(col)
    table.add_row("compile 20 rules", "", f"{min(compile_s):.4f}",
                  f"{sorted(compile_s)[len(compile_s) // 2]:.4f}", "",
                  f"{min(compile_s) / n_rules * 1e3:.2f} ms per rule")
    table.add_row("sample configs", f"{args.configs:,}", f"{sample_s:.3f}", "", "", "sample_space")
    best = min(frame_s)
    goal = "[green]goal met[/green]" if best < 1.0 else "[red]goal: < 1 s[/red]"
    table.add_row("check_frame", f"{args.configs:,}", f"[bold]{best:.3f}[/bold]",
                  f"{sorted(frame_s)[len(frame_s) // 2]:.3f}", f"{best / args.configs * 1e6:.2f}",
                  f"{goal}; {int(verdicts['blocked'].sum()):,} blocked")
    table.add_row("check, one by one", f"{args.single:,}", f"{single_s:.3f}", "",
                  f"{single_s / args.single * 1e6:.0f}",
                  f"{single_s / args.single / (best / args.configs):.0f}x per config; "
                  f"verdicts {'agree' if agree else 'DIFFER'}")
    console.print(table)
    by_rule = {r.id: int(verdicts[r.id].sum()) for r in ruleset.config_rules}
    console.print("configs failing each rule: " + ", ".join(f"{k} {v}" for k, v in by_rule.items()))
    if not agree:
        raise SystemExit("check and check_frame disagree")


if __name__ == "__main__":
    main()
