"""Isolation of a trial's instance: its own CPU set and a memory limit, as the host allows.

Parallel instances of one job (and jobs that share a test-bed) must not disturb each other's
measurements. ``plan_isolation`` decides, once per job on the host that runs it, what each instance
gets:

- **CPUs** (``--cpus``): ``auto`` splits the CPUs this process may use into one distinct, contiguous
  set per parallel instance; an explicit list (``0,1`` or ``0-3,6``) is split the same way. The
  trial process pins itself (``os.sched_setaffinity``) before it runs anything of the target, so
  every process it starts (a PostgreSQL or Redis server, a benchmark client) inherits the set,
  across ``exec`` and a user switch.
- **Memory** (``--memory-mb``): a cgroup v2 per instance (``memory.max``, ``memory.swap.max`` 0,
  ``memory.oom.group`` 1, and ``cpuset.cpus``) when the host delegates one to knobflow, else
  ``RLIMIT_AS`` (``resource.setrlimit``) set by the trial process on itself, inherited by its
  children. A cgroup bounds the whole tree of the trial together; an rlimit bounds each process's
  address space apart (virtual memory, which is more than what is resident). Which one was used
  is said in the job's record (``job.json`` ``isolation``) and its MLflow run.

A cgroup v2 is used when ``KNOBFLOW_CGROUP`` names a cgroup v2 directory knobflow may create
children in (a delegated one, e.g. a systemd unit with ``Delegate=yes``), or when this process's own
cgroup on a cgroup2 mount lists ``memory`` in ``cgroup.controllers`` and is writable, and the
controllers can be turned on for its children; otherwise (a cgroup v1 or hybrid host, a
container without delegation) the rlimit. A trial that goes over its limit ends as
``out_of_memory``: killed by the kernel's OOM killer in its cgroup (``memory.events``
``oom_kill`` counts it), or failing to allocate under the rlimit (Python's ``MemoryError``,
"Cannot allocate memory" in its log).

The child's side (``apply_limits``) uses the standard library only: it runs in every trial
process before the target is imported.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CGROUP_ENV", "InstanceLimits", "Isolation", "IsolationError", "apply_limits",
    "check_cpus", "cpu_list_text", "looks_out_of_memory", "parse_cpu_list", "plan_isolation",
]

#: A cgroup v2 directory knobflow may create its instances' cgroups in (a delegated one).
CGROUP_ENV = "KNOBFLOW_CGROUP"
#: What processes say when an allocation failed.
_OUT_OF_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|out of memory|bad_alloc|ENOMEM",
                            re.IGNORECASE)


class IsolationError(ValueError):
    """A ``--cpus`` or ``--memory-mb`` the host cannot give; the message names the fix."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(message)


def parse_cpu_list(text: str) -> list[int]:
    """``0,1`` or ``0-3,6`` as a sorted list of CPU numbers; ValueError if it is not one."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d{1,4})(?:-(\d{1,4}))?", part)
        if not match:
            raise ValueError(f"{part!r} is not a CPU number or range")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"range {part!r} runs backwards")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def cpu_list_text(cpus: list[int] | None) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5`` (the kernel's list format); None as ``all``."""
    if not cpus:
        return "all"
    parts, start, prev = [], cpus[0], cpus[0]
    for cpu in [*cpus[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def _split(cpus: list[int], n: int) -> list[list[int]]:
    """``cpus`` in ``n`` contiguous chunks whose sizes differ by one at most."""
    size, extra = divmod(len(cpus), n)
    chunks, at = [], 0
    for k in range(n):
        take = size + (1 if k < extra else 0)
        chunks.append(cpus[at:at + take])
        at += take
    return chunks


def check_cpus(instances: list[str], cpus: str | None) -> dict[str, list[int] | None]:
    """Each instance's CPU set for ``cpus`` on this host; an ``IsolationError`` when the host
    cannot give it (more CPUs than it has, CPUs it does not let this process use)."""
    if cpus is None:
        return dict.fromkeys(instances)
    host = sorted(os.sched_getaffinity(0))
    shown = cpu_list_text(host)
    if cpus == "auto":
        wanted = host
        if len(instances) > len(host):
            raise IsolationError("cpus", f"--cpus auto gives each of the {len(instances)} "
                                 f"parallel instances its own CPUs, but this host lets knobflow "
                                 f"use {len(host)} ({shown}); lower --parallel to {len(host)} "
                                 "or less, or drop --cpus")
    else:
        try:
            wanted = parse_cpu_list(cpus)
        except ValueError as exc:
            raise IsolationError("cpus", f"--cpus {cpus!r}: {exc}; give auto or a CPU list such "
                                 "as 0,1 or 0-3") from None
        missing = [c for c in wanted if c not in host]
        if missing:
            raise IsolationError("cpus", f"--cpus {cpus} asks for CPU {cpu_list_text(missing)}, "
                                 f"which this host does not let knobflow use (it may use "
                                 f"{shown}); give CPUs of that list, or auto")
        if len(wanted) < len(instances):
            raise IsolationError("cpus", f"--cpus {cpus} has {len(wanted)} CPUs for "
                                 f"{len(instances)} parallel instances (each gets its own); give "
                                 f"at least {len(instances)} CPUs, or lower --parallel")
    return dict(zip(instances, _split(wanted, len(instances)), strict=True))


# -- cgroup v2 ----------------------------------------------------------------------------------
def _cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (None: no cgroup2 mount)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split()[4])
    return None


def cgroup_base() -> tuple[Path | None, str]:
    """The cgroup v2 directory the instances' cgroups go under, or None and why not."""
    given = os.environ.get(CGROUP_ENV)
    if given:
        base = Path(given)
    else:
        mount = _cgroup2_mount()
        if mount is None:
            return None, "no cgroup v2 hierarchy is mounted"
        own = ""
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    own = line[3:].strip()
        base = mount / own.lstrip("/")
    try:
        controllers = (base / "cgroup.controllers").read_text().split()
    except OSError:
        return None, f"{base} is not a cgroup v2 directory"
    if "memory" not in controllers:
        return None, (f"the memory controller is not delegated to {base} (its controllers: "
                      f"{' '.join(controllers) or 'none'})")
    if not os.access(base, os.W_OK):
        return None, f"{base} is not writable"
    return base, ""


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


def _make_cgroup(base: Path, scope: str, instance: str, memory_bytes: int,
                 cpus: list[int] | None) -> Path:
    """The instance's cgroup under ``base/knobflow-<scope>`` with its limits (OSError if the host
    refuses any of it)."""
    group = base / f"knobflow-{scope}"
    wanted = ["memory", *(["cpuset"] if cpus else [])]
    for parent in (base, group):  # the controllers must be on for the children of both
        parent.mkdir(exist_ok=True)
        enabled = (parent / "cgroup.subtree_control").read_text().split() \
            if (parent / "cgroup.subtree_control").exists() else []
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
    leaf = group / instance
    leaf.mkdir(exist_ok=True)
    _write(leaf / "memory.max", str(memory_bytes))
    if (leaf / "memory.swap.max").exists():
        _write(leaf / "memory.swap.max", "0")  # over the limit: killed, not swapping for minutes
    _write(leaf / "memory.oom.group", "1")  # the whole trial is killed together
    if cpus:
        _write(leaf / "cpuset.cpus", cpu_list_text(cpus))
    return leaf


# -- the plan -----------------------------------------------------------------------------------
@dataclass
class InstanceLimits:
    """What one instance's trial process gets: its CPUs, its memory limit and how."""

    cpus: list[int] | None = None
    memory_bytes: int | None = None
    memory_via: str = "none"  # "cgroup", "rlimit" or "none"
    cgroup: str | None = None  # the instance's cgroup v2 directory (memory_via "cgroup")

    def request(self) -> dict[str, Any]:
        """What the trial process is told (``apply_limits``)."""
        return {"cpus": self.cpus, "memory_bytes": self.memory_bytes,
                "memory_via": self.memory_via, "cgroup": self.cgroup}

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in the instance's cgroup."""
        if not self.cgroup:
            return 0
        with contextlib.suppress(OSError, ValueError):
            for line in (Path(self.cgroup) / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0


@dataclass
class Isolation:
    """The isolation of a job's instances, as planned on the host that runs the job."""

    instances: dict[str, InstanceLimits] = field(default_factory=dict)
    memory: str = "none"  # "cgroup 512 MiB", "rlimit 512 MiB" or "none"
    why_not_cgroup: str = ""  # a memory limit without a cgroup: why the host gave none

    def limits(self, instance: str) -> InstanceLimits:
        return self.instances.get(instance) or InstanceLimits()

    @property
    def active(self) -> bool:
        return any(v.cpus or v.memory_bytes for v in self.instances.values())

    def record(self) -> dict[str, Any]:
        """What ``job.json`` keeps: each instance's CPUs and the memory mechanism."""
        out: dict[str, Any] = {
            "cpus": {name: cpu_list_text(v.cpus) for name, v in self.instances.items()},
            "memory": self.memory}
        if self.why_not_cgroup:
            out["why_not_cgroup"] = self.why_not_cgroup
        return out

    def release(self) -> None:
        """Remove the instances' cgroups (empty once their trials ended); what cannot be
        removed stays, harmless."""
        parents = set()
        for limits in self.instances.values():
            if limits.cgroup:
                with contextlib.suppress(OSError):
                    os.rmdir(limits.cgroup)
                parents.add(os.path.dirname(limits.cgroup))
        for parent in parents:
            with contextlib.suppress(OSError):
                os.rmdir(parent)


def plan_isolation(instances: list[str], cpus: str | None, memory_mb: int | None,
                   scope: str) -> Isolation:
    """What each of ``instances`` gets on this host; an ``IsolationError`` when the host cannot
    give what ``cpus`` asks. ``scope`` names the job (its cgroups' parent)."""
    sets = check_cpus(instances, cpus)
    plan = Isolation({name: InstanceLimits(cpus=sets[name]) for name in instances})
    if memory_mb is None:
        return plan
    memory_bytes = memory_mb * 2**20
    base, why = cgroup_base()
    if base is not None:
        try:
            for name in instances:
                plan.instances[name].cgroup = str(_make_cgroup(base, scope, name, memory_bytes,
                                                               sets[name]))
                plan.instances[name].memory_via = "cgroup"
            plan.memory = f"cgroup {memory_mb} MiB"
        except OSError as exc:
            plan.release()
            for limits in plan.instances.values():
                limits.cgroup = None
            why = f"the cgroup under {base} could not be set up ({exc.strerror or exc})"
            base = None
    if base is None:
        for limits in plan.instances.values():
            limits.memory_via = "rlimit"
        plan.memory, plan.why_not_cgroup = f"rlimit {memory_mb} MiB", why
    for limits in plan.instances.values():
        limits.memory_bytes = memory_bytes
    return plan


def looks_out_of_memory(text: str) -> bool:
    """Whether a trial's message or log says an allocation failed."""
    return bool(_OUT_OF_MEMORY.search(text))


# -- the child's side ---------------------------------------------------------------------------
def apply_limits(limits: dict[str, Any] | None) -> str:
    """In the trial process, before the target runs: join the instance's cgroup, pin to its
    CPUs, set the rlimit; what the kernel now says (read back from ``/proc/self``), for its log."""
    if not limits:
        return ""
    if limits.get("cgroup"):
        _write(Path(limits["cgroup"]) / "cgroup.procs", str(os.getpid()))
    if limits.get("cpus"):
        os.sched_setaffinity(0, limits["cpus"])
    if limits.get("memory_bytes") and limits.get("memory_via") == "rlimit":
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    return (f"isolation: cpus {_status('Cpus_allowed_list')}; memory "
            f"{limits.get('memory_via', 'none')}, address space limit {_limit('address space')}")


def _status(key: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return line.split(":", 1)[1].strip()
    return "?"


def _limit(name: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/limits").read_text().splitlines():
            if line.lower().startswith(f"max {name}"):
                return line.split()[-3] if "unlimited" not in line else "unlimited"
    return "?"
