"""The job spec: every option of a tuning job, declared once.

``JobSpec`` is what was asked of a tuning job, as a pydantic model: each field is one option with
its type, default, bounds, help text, how it is spelled on the command line and whether
``--resume`` may change it. Everything else is made from it: the ``knobflow tune`` options
(``flows/cli_tune.py``), the tune flow's parameters (``flows/tune.py``, so ``prefect.yaml``'s
deployments are checked against it), and what ``--resume`` accepts. A bad value gets the same
one-line error from all of them: "The 'budget' option of tune must be an int in [1, inf). Got 0
instead." What depends on the target (its metrics, knobs, workload, rules) is checked when the job
is built (``flows/job.py``). Adding an option is one field here.
"""

from __future__ import annotations

import enum
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from targets.common.errors import KnobflowError, did_you_mean
from tuners.pruners import PRUNERS
from tuners.samplers import TUNERS

__all__ = ["AUTO_KNOBS", "DEFAULT_TOP_KNOBS", "DIRECTIONS", "Cli", "JobSpec", "Resume",
           "objective_direction", "option_error",
           "spec_parameters", "with_spec_signature"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_MUST = "1-64 letters, digits, '.', '_' or '-'"
_SECONDS_MUST = "a number of seconds > 0"
_CPUS = r"^(auto|[0-9]{1,4}(-[0-9]{1,4})?(,[0-9]{1,4}(-[0-9]{1,4})?)*)$"
_CPUS_MUST = "auto or a CPU list such as 0,1 or 0-3"
#: ``--knobs auto``: the service model's most important knobs first, then all.
AUTO_KNOBS = "auto"
DEFAULT_TOP_KNOBS = 4


class Resume(enum.StrEnum):
    """What ``--resume`` does with an option."""

    FINDS = "finds"  # names the job to continue (target, instance, service)
    MAY_CHANGE = "may change"  # a new value applies to the continued job
    KEEPS = "keeps"  # the job keeps its own; giving one is an error


class Cli(enum.StrEnum):
    """How an option is given on the command line."""

    ARGUMENT = "argument"  # positional
    VALUE = "value"  # --name VALUE
    REPEATED = "repeated"  # --name A --name B -> [A, B]
    ASSIGNMENTS = "assignments"  # --name K=V (repeatable) -> {K: V}
    COMMA_LIST = "comma list"  # --name a,b,c -> [a, b, c]
    OFF_FLAG = "off flag"  # --no-... turns a default-on option off
    ON_FLAG = "on flag"  # --... turns a default-off option on
    FLOW_ONLY = "flow only"  # a parameter of the flow, given on the command line by another


def _option(default: Any, help: str, *, cli: Cli = Cli.VALUE, flag: str | None = None,
            resume: Resume = Resume.KEEPS, must: str | None = None,
            choices: tuple[str, ...] = (), metavar: str | None = None,
            **constraints: Any) -> Any:
    """One option of the spec: a pydantic field with what the CLI and resume need to know."""
    extra = {"cli": str(cli), "flag": flag, "resume": str(resume), "must": must,
             "choices": list(choices), "metavar": metavar}
    return Field(default, description=help, json_schema_extra=extra, **constraints)


class JobSpec(BaseModel):
    """What was asked of one tuning job (``None``: the default the help text names)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    target: str = _option(..., "Target name, e.g. sqlite.", cli=Cli.ARGUMENT, resume=Resume.FINDS)
    instance: str = _option("local", "Instance name; its data lives apart.", pattern=_NAME,
                            must=_NAME_MUST, resume=Resume.FINDS)
    service: str | None = _option(
        None, "Service the instance belongs to; its instances share models, data and learned "
        "rules (default: the target's name).", pattern=_NAME, must=_NAME_MUST,
        resume=Resume.FINDS)
    budget: int | None = _option(None, "Trials to run (default 40).", ge=1,
                                 resume=Resume.MAY_CHANGE)
    time_budget: float | None = _option(None, "Seconds after which no new trial starts.",
                                        gt=0, allow_inf_nan=False, must=_SECONDS_MUST,
                                        resume=Resume.MAY_CHANGE)
    tuner: str = _option("tpe", "tpe (default), random, cmaes, nsga2 (genetic, made for several "
                         "objectives) or surrogate (a random forest with expected improvement).",
                         choices=TUNERS,
                         must=f"one of {', '.join(TUNERS)}")
    parallel: int | None = _option(None, "Instances running trials at once (default 1).",
                                   ge=1, le=64, resume=Resume.MAY_CHANGE)
    workers: int | None = _option(
        None, "Prefect workers running trials at once on one shared study, each on a test "
        "instance of its host (needs the shared stack: infra/stack; default: none, trials run "
        "here).", ge=1, le=256)
    testbed: str | None = _option(
        None, "Test-bed (host or resource) the job's instances run on; jobs on one test-bed "
        "hold one of its slots each, a Prefect concurrency limit named testbed-NAME (default: "
        "none held; with only --testbed-slots, this host's name).", pattern=_NAME,
        must=_NAME_MUST, resume=Resume.MAY_CHANGE, metavar="NAME")
    testbed_slots: int | None = _option(
        None, "Jobs the test-bed runs at once, set when its limit is created (default 1; "
        "an existing limit is set to this value when given).", ge=1, le=64,
        resume=Resume.MAY_CHANGE, metavar="N")
    cpus: str | None = _option(
        None, "CPU set of each instance: auto (its own CPUs for every parallel instance) or a "
        "CPU list such as 0,1 or 0-3 split among them (default: not pinned).",
        pattern=_CPUS, must=_CPUS_MUST, metavar="auto|CPUS")  # kept: changes what is measured
    memory_mb: int | None = _option(
        None, "Memory limit of each instance's trial, MiB: a cgroup v2 where the host delegates "
        "one, else an rlimit on each process's address space (default: none).", ge=64,
        le=2**22, metavar="MIB")
    workload_file: str | None = _option(None, "Workload YAML file.", flag="--workload")
    workload: dict[str, Any] | None = _option(None, "KEY=VALUE workload parameter.",
                                              cli=Cli.ASSIGNMENTS, flag="--set-workload")
    objective: str | None = _option(None, "Metric to optimize.", cli=Cli.FLOW_ONLY)
    seed: int = _option(0, "Seed of sampler and noise (default 0).", ge=0, le=2**31 - 1)
    space_file: str | None = _option(None, "Search-space YAML (expert ranges).", flag="--space")
    knobs: list[str] | None = _option(
        None, "Comma-separated knobs to tune, or auto: first the knobs the service's model "
        "predicts can each buy the most from the default (--top-knobs), then all.",
        cli=Cli.COMMA_LIST)
    top_knobs: int | None = _option(
        None, "With --knobs auto: how many of the most important knobs are tuned first, the "
        "others kept at their values in the best config so far; all knobs are tuned once half "
        "the budget has started, or earlier after a quarter of it (at least 5 trials) without "
        "a new best (default 4).", ge=1, le=1000, metavar="K")
    trial_timeout: float | None = _option(None, "Hard timeout of one trial, seconds.", gt=0,
                                          allow_inf_nan=False, must=_SECONDS_MUST)
    verify_repeats: int = _option(
        10, "Most interleaved pairs of best and default the verification runs; it stops after "
        "3 once the 95% interval is decisive (10).", ge=2, le=100)
    repeats: int | None = _option(
        None, "Runs of every trial config; its value is their mean (default 1, or 2 on a noisy "
        "machine).", ge=1, le=100)
    repeat_until: float | None = _option(
        None, "Repeat a trial until its 95% interval is within +- this fraction.", gt=0, lt=1,
        must="a relative half-width in (0, 1), e.g. 0.05 for +-5 %")
    max_repeats: int = _option(5, "Most runs of one trial with --repeat-until (5).", ge=2,
                               le=100)
    baseline_every: int | None = _option(
        None, "Measure the default before every N-th trial; tell the tuner ratios (default 0: "
        "never, or 5 on a noisy machine).", ge=0, le=10_000)
    noise_runs: int = _option(
        3, "Runs of the default before the search that measure the machine's noise; not "
        "counted in the budget (3; 0: none).", ge=0, le=20,
        must="0 (no noise check) or an int in [2, 20]")
    noise_threshold: float = _option(
        0.1, "Spread of those runs, (max-min)/mean, above which the job repeats trials and "
        "the default (0.1).", gt=0, allow_inf_nan=False, must="a fraction > 0, e.g. 0.1 for 10 %")
    rule_files: list[str] = _option([], "Rule file of your own (repeatable).",
                                    cli=Cli.REPEATED, flag="--rules")
    policies: list[str] = _option([], "Turn on a rule policy, e.g. durability (repeatable).",
                                  cli=Cli.REPEATED, flag="--policy")
    learn_rules: bool = _option(True, "Neither use nor learn rules from failures.",
                                cli=Cli.OFF_FLAG, flag="--no-learned-rules")
    transfer: bool = _option(True, "Start cold: do not use the models and best configs of "
                             "sibling instances.", cli=Cli.OFF_FLAG)
    transfer_priors: bool = _option(False, "Also tell the tuner the siblings' trials whose "
                                    "workloads are close, as prior observations.",
                                    cli=Cli.ON_FLAG)
    train: bool = _option(True, "Do not train the service's models after the job.",
                          cli=Cli.OFF_FLAG)
    fail_on_regression: bool = _option(
        False, "Fail (exit 1) when the job's result is slower than the reference recorded "
        "before it for its service and workload, beyond the noise (the 95% interval of the "
        "ratio lies below 1).", cli=Cli.ON_FLAG)
    objectives: list[str] = _option(
        [], "Metric to optimize (default: the target's), with its direction if not the "
        "metric's own (NAME:max or NAME:min); repeat it for several objectives: the result is "
        "the Pareto front, each point verified, and --prefer picks the config to apply.",
        cli=Cli.REPEATED, flag="--objective", metavar="NAME[:max|min]")
    prefer: str | None = _option(
        None, "With several --objective: the verified Pareto point written as the config to "
        "apply: the best verified gain over the default in NAME, or the best weighted sum of "
        "log gains (NAME:WEIGHT,...) (default: the first objective).",
        metavar="NAME[:WEIGHT],...")
    constraints: list[str] = _option(
        [], "SLA bound on a metric, e.g. \"latency_p99_us <= 5000\" or \"ops_per_s >= 0.9 * "
        "default\" (default: its value for the default config, measured before the search); "
        "repeatable. The result is the best config meeting every bound; when no trial met them "
        "the job says so, writes no config file and exits 1.",
        cli=Cli.REPEATED, flag="--constraint", metavar="BOUND")

    @model_validator(mode="before")
    @classmethod
    def _one_objective(cls, data: Any) -> Any:
        """One ``--objective NAME`` (no direction) is the ``objective`` option, as before."""
        if isinstance(data, dict):
            given = data.get("objectives")
            if (isinstance(given, list) and len(given) == 1 and isinstance(given[0], str)
                    and ":" not in given[0] and data.get("objective") is None):
                data = {k: v for k, v in data.items() if k != "objectives"}
                data["objective"] = given[0]
        return data
    pruner: str = _option(
        "none", "Stop clearly bad trials early from the intermediate values the target reports "
        "while it runs: none (default), median or hyperband. Pruned trials count against the "
        "budget and are never verified or learned from; single runs only: off with repeats or "
        "baselines (--repeats, --repeat-until, --baseline-every, or the noise check).",
        choices=PRUNERS, must=f"one of {', '.join(PRUNERS)}")

    @model_validator(mode="after")
    def _check_together(self) -> JobSpec:
        if self.tuner not in TUNERS:
            raise option_error("tuner", self.tuner)
        if self.pruner not in PRUNERS:
            raise option_error("pruner", self.pruner)
        if not max(self.repeats or 1, 2) <= self.max_repeats:
            raise KnobflowError(_message("max_repeats", self.max_repeats,
                                         _int_range(max(self.repeats or 1, 2), 100)))
        if self.noise_runs == 1:
            raise option_error("noise_runs", self.noise_runs)
        if self.objective and self.objectives:
            raise KnobflowError("objective and objectives both name what to optimize; give "
                                "every metric as objectives (--objective NAME[:max|min], "
                                "repeated)")
        for text in self.objectives or []:
            objective_direction(text)
        if self.space_file and self.knobs:
            raise KnobflowError("--space and --knobs both narrow the search space; use one of "
                                "them")
        if self.knobs and AUTO_KNOBS in self.knobs and len(self.knobs) > 1:
            raise KnobflowError(f"--knobs {AUTO_KNOBS} picks the knobs itself; give it alone "
                                f"(--knobs {AUTO_KNOBS}) or list knobs without it")
        if self.top_knobs is not None and self.knobs != [AUTO_KNOBS]:
            raise KnobflowError(f"--top-knobs applies to --knobs {AUTO_KNOBS}; add --knobs "
                                f"{AUTO_KNOBS} or drop --top-knobs")
        return self

    @classmethod
    def of(cls, **options: Any) -> JobSpec:
        """A spec from ``options`` (omitted or None: the default); a bad value is a
        ``KnobflowError`` with one line naming the option, what it must be and what it got."""
        unknown = [k for k in options if k not in cls.model_fields]
        if unknown:
            raise KnobflowError(f"tune has no option '{unknown[0]}'"
                                f"{did_you_mean(unknown[0], cls.model_fields)}")
        # what was given: a value that is not None and not the default (Prefect passes every
        # parameter of a flow, defaults included)
        given = {k: v for k, v in options.items()
                 if v is not None and not _is_default(k, v)}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:  # the validator's own KnobflowErrors are not wrapped
            error = exc.errors()[0]
            raise option_error(str(error["loc"][0]), error.get("input")) from None

    def given(self) -> dict[str, Any]:
        """The options that were given (not left at their defaults)."""
        return {name: getattr(self, name) for name in self.model_fields_set}

    @classmethod
    def flag(cls, name: str) -> str:
        """How option ``name`` is spelled on the command line (``--set-workload``)."""
        extra = _extra(cls.model_fields[name])
        if extra["flag"]:
            return str(extra["flag"])
        prefix = "--no-" if extra["cli"] == Cli.OFF_FLAG else "--"
        return prefix + name.replace("_", "-")

    @classmethod
    def resume_rule(cls, name: str) -> Resume:
        return Resume(_extra(cls.model_fields[name])["resume"])

    @classmethod
    def cli_kind(cls, name: str) -> Cli:
        return Cli(_extra(cls.model_fields[name])["cli"])

    def check_resume(self, study_name: str) -> None:
        """Refuse options a resumed job would not honour (it keeps its own settings)."""
        kept = [n for n in JobSpec.model_fields if n in self.model_fields_set
                and self.resume_rule(n) == Resume.KEEPS]
        if kept:
            may = [self.flag(n) for n in JobSpec.model_fields
                   if self.resume_rule(n) == Resume.MAY_CHANGE]
            raise KnobflowError(
                f"--resume continues job {study_name} with its own settings; drop "
                + ", ".join(self.flag(n) for n in kept)
                + f" (only {', '.join(may[:-1])} and {may[-1]} may change)")


#: How ``--objective NAME:DIR`` spells a direction.
DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize",
              "minimize": "minimize"}


def objective_direction(text: str) -> tuple[str, str | None]:
    """``NAME[:max|min]`` as (name, direction or None: the metric's own); a ``KnobflowError``
    names ``--objective``, the text and the fix."""
    name, sep, way = text.partition(":")
    name, way = name.strip(), way.strip().lower()
    if not name or (sep and way not in DIRECTIONS):
        raise KnobflowError(
            f"--objective {text!r}: expected NAME or NAME:max or NAME:min (a direction is max "
            f"or min), e.g. --objective ops_per_s:max"
            f"{did_you_mean(way, list(DIRECTIONS)) if way else ''}")
    return name, DIRECTIONS[way] if sep else None


def _is_default(name: str, value: Any) -> bool:
    field = JobSpec.model_fields[name]
    if field.is_required():
        return False
    default = field.get_default(call_default_factory=True)
    return type(value) is type(default) and value == default


def _extra(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, Mapping) else {}


def _int_range(low: Any, high: Any) -> str:
    upper = "inf)" if high is None or high == math.inf else f"{high}]"
    return f"an int in [{low}, {upper}"


def _must(name: str) -> str:
    """What option ``name`` must be, from its declaration."""
    field = JobSpec.model_fields[name]
    extra = _extra(field)
    if extra.get("must"):
        return str(extra["must"])
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "le")
              if getattr(m, k, None) is not None}
    if int in _types(field.annotation):
        return _int_range(bounds.get("ge", "-inf"), bounds.get("le"))
    if bool in _types(field.annotation):
        return "true or false"
    kinds = sorted(t.__name__ for t in _types(field.annotation) if t is not type(None))
    return "a " + " or ".join(kinds)


def _types(annotation: Any) -> set[type]:
    args = getattr(annotation, "__args__", None)
    if args and getattr(annotation, "__origin__", None) is None:  # X | None
        return {t for a in args for t in _types(a)}
    origin = getattr(annotation, "__origin__", None)
    return {origin or annotation} if isinstance(origin or annotation, type) else set()


def _message(name: str, value: Any, must: str, choices: tuple[str, ...] | list[str] = ()) -> str:
    hint = did_you_mean(value, choices) if isinstance(value, str) and choices else ""
    return f"The '{name}' option of tune must be {must}. Got {value!r} instead{hint}."


def option_error(name: str, value: Any, must: str | None = None,
                 choices: tuple[str, ...] | list[str] = ()) -> KnobflowError:
    """The one-line error for a bad value of option ``name`` (scikit-learn's message shape)."""
    if name in JobSpec.model_fields:
        must = must or _must(name)
        choices = choices or tuple(_extra(JobSpec.model_fields[name]).get("choices") or ())
    return KnobflowError(_message(name, value, must or "valid", choices))


def spec_parameters(kind: Any = inspect.Parameter.KEYWORD_ONLY) -> list[inspect.Parameter]:
    """The spec's fields as function parameters (``target`` first, positional): name, type
    with its help text, default."""
    params = []
    for name, field in JobSpec.model_fields.items():
        annotation = Annotated[field.annotation, Field(description=field.description)]
        if field.is_required():
            params.append(inspect.Parameter(
                name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation))
        else:
            default = field.get_default(call_default_factory=True)
            params.append(inspect.Parameter(name, kind, annotation=annotation, default=default))
    return params


F = TypeVar("F", bound=Callable[..., Any])


def with_spec_signature(extra: list[inspect.Parameter], returns: Any) -> Callable[[F], F]:
    """Give ``fn(target, **options)`` the spec's fields and then ``extra`` as its signature, and
    an ``Args:`` section in its docstring (Prefect shows both in its UI and checks deployments'
    parameters against them)."""

    def decorate(fn: F) -> F:
        params = spec_parameters() + extra
        fn.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
        fn.__annotations__ = {**{p.name: p.annotation for p in params}, "return": returns}
        lines = [f"    {name}: {field.description}"
                 for name, field in JobSpec.model_fields.items()]
        lines += [f"    {p.name}: {meta.description}" for p in extra
                  for meta in getattr(p.annotation, "__metadata__", ())
                  if getattr(meta, "description", None)]
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\nArgs:\n" + "\n".join(lines) + "\n"
        return fn

    return decorate
