"""Rule engine: constraints, dependencies, known-bad configs and actuation triggers, in a safe
expression language; verdicts with reasons; rules learned from failures.

Every name below is imported when first used. rule-engine's parser tables are handed over
first, if kept (``rules.engine_tables``).
"""

from rules.engine_tables import provide
from targets.common.exports import lazy_exports

provide()

__all__, __getattr__ = lazy_exports(__name__, {
    "language": ("RuleError", "compile_expression"),
    "learn": ("LearnedRules", "learned_path", "propose_forbid"),
    "parse": ("load_rule_file", "parse_rules"),
    "review": ("check_space", "range_hints"),
    "rule": ("Failure", "Rule", "Verdict"),
    "ruleset": ("RuleSet",),
})
