"""Rules applied to a whole search space before a job, and range hints after it.

Before a job: a search space (the knob spec, or an expert's narrowed ranges) where every config
fails an error rule stops the job; a range whose end a rule blocks, or a default config that fails
a rule, is reported ("range of shared_buffers [16, 16384]: at 16384, rule 'shared-buffers-fit-
memory' blocks it"). After a job: when most of the best configs sit at the edge of a knob's
range, the range may be what held the tuning back (a wide integer knob's edge is judged by ratio).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rules.language import RuleError
from rules.ruleset import RuleSet
from targets.common.errors import fmt_quantity, fmt_value
from tuners.space import SearchSpace

SAMPLES = 2000


def sample_space(space: SearchSpace, n: int = SAMPLES, seed: int = 0) -> pd.DataFrame:
    """``n`` random configs of the space (full configs: defaults, fixed knobs, tuned knobs)."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for knob in space.tuned:
        if knob.is_numeric:
            low, high = float(knob.low), float(knob.high)
            values = (np.exp(rng.uniform(np.log(low), np.log(high), n)) if knob.log
                      else rng.uniform(low, high, n))
            columns[knob.name] = np.round(values) if knob.type == "int" else values
        else:
            choices = list(knob.choices)
            columns[knob.name] = [choices[i] for i in rng.integers(0, len(choices), n)]
    frame = pd.DataFrame(columns)
    for name, value in space.config({}).items():
        if name not in frame:
            frame[name] = [value] * n
    return frame


def check_space(rules: RuleSet, space: SearchSpace, where: str) -> list[str]:
    """Stop a space that the rules block entirely; return warnings about its edges."""
    sample = sample_space(space)
    verdicts = rules.check_frame(sample)
    if len(sample) and verdicts["blocked"].all():
        errors = [r for r in rules.config_rules if r.severity == "error"]
        worst = max(errors, key=lambda r: int(verdicts[r.id].sum()))
        raise RuleError(
            f"{where}: every config of the search space fails the rules (e.g. rule "
            f"'{worst.id}': {worst.message}); widen or move the ranges, or drop the rule"
        )
    warnings = []
    default = rules.check(space.spec.defaults())
    for failure in default.failures:
        warnings.append(f"the default config fails rule '{failure.rule}': {failure.message}")
    base = space.config({})
    for knob in space.tuned:
        if not knob.is_numeric:
            continue
        for end, value in (("low", knob.low), ("high", knob.high)):
            verdict = rules.check({**base, knob.name: value})
            for failure in verdict.errors:
                if knob.name in failure.values:
                    warnings.append(
                        f"range of {knob.name} {knob.domain_text()}: at {fmt_value(value)} "
                        f"({end} end), rule '{failure.rule}' blocks it: {failure.message}"
                    )
    return warnings


def range_hints(best: Sequence[Mapping[str, Any]], space: SearchSpace, edge: float = 0.02,
                at_least: int = 4) -> list[str]:
    """Knobs where ``at_least`` of the best configs sit within ``edge`` of a range bound."""
    hints = []
    for knob in space.tuned:
        if not knob.is_numeric or len(best) < at_least:
            continue
        # a wide integer knob's by ratio: 10 Hz of 1-500 Hz is not at its low end
        position = [knob.position(c[knob.name], by_ratio=True) for c in best]
        for side, count, bound in (
            ("lower", sum(p <= edge for p in position), knob.low),
            ("upper", sum(p >= 1 - edge for p in position), knob.high),
        ):
            if count >= at_least:
                hints.append(
                    f"{knob.name}: {count} of the {len(best)} best configs are at the {side} "
                    f"bound {fmt_quantity(bound, knob.unit)}; the "
                    "range may be too narrow"
                )
    return hints
