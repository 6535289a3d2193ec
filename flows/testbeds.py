"""Jobs that share test-beds: work-queue priorities, a concurrency limit per test-bed, isolation.

- **Priorities.** A service's setting ``priority`` (``knobflow service set S priority=production``,
  ``tasks/services.py``) picks the work-pool queue its tune jobs are submitted to: ``production``
  (priority 1) or ``default`` (priority 10). A worker polling the pool takes the runs of the
  production queue first. ``ensure_queues`` makes both queues (and the pool, a process pool, if it
  is missing) with those priorities, idempotently; ``submit_tune`` starts a tune deployment's run on
  the queue of its service (Prefect's ``run_deployment(..., work_queue_name=...)``).
- **One test-bed, N jobs at once.** A job runs its instances on a test-bed (``--testbed``, default
  this host's name). The tune flow holds one slot of the Prefect global concurrency limit
  ``testbed-<name>`` from the first trial to the last (noise check, exploration, verification,
  the reference's measurement), created with ``--testbed-slots`` (default 1) when missing. A job
  that has to wait says so in its log (and which limit it waits for). The slot is a lease that
  the flow renews; a job killed without releasing it frees it when the lease runs out
  (``LEASE_S``). Without a Prefect server (``PREFECT_API_URL`` unset: the temporary API of one
  ``knobflow tune``, which no other job sees) there is no limit to share: the job runs at once
  and its log says that its test-bed is not guarded (one job per instance still holds, by the
  instance's lock).
- **Isolation.** ``isolate`` plans each instance's CPU set and memory limit on the host running
  the job (``tasks/isolation.py``) and records what the host gave in ``job.json``
  (``isolation``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.job import Job
from targets.common.errors import KnobflowError
from tasks.isolation import Isolation, IsolationError, plan_isolation
from tasks.services import service_settings

if TYPE_CHECKING:
    from tasks.runner import TrialRunner
    from tasks.track import JobTracker

__all__ = [
    "LEASE_S", "QUEUES", "ensure_queues", "hold_testbed", "host_testbed", "isolate",
    "limit_name", "queue_for", "submit_tune",
]

#: The work-pool queues of knobflow and their priorities (1 is served first).
QUEUES: dict[str, int] = {"production": 1, "default": 10}
#: Seconds a test-bed slot outlives a job that died holding it (the flow renews its lease).
LEASE_S = 60.0

Logger = logging.Logger | logging.LoggerAdapter[Any]


# -- priorities ---------------------------------------------------------------------------------
def queue_for(home: str | Path, service: str) -> str:
    """The work-pool queue of ``service``'s tune jobs: its ``priority`` setting."""
    return service_settings(home, service).priority


def ensure_queues(pool: str | None = None) -> dict[str, int]:
    """Make sure work pool ``pool`` (default: the settings' ``work_pool``) exists and has the
    queues of ``QUEUES`` with their priorities; a second call changes nothing. The queues'
    priorities as the server has them now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if pool is None:
        from targets.common.settings import current_settings

        pool = current_settings().work_pool
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        # lowest priority first: a queue moved to a priority another holds pushes that one down
        for name, priority in sorted(QUEUES.items(), key=lambda kv: -kv[1]):
            try:
                queue = client.read_work_queue_by_name(name, work_pool_name=pool)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_work_queue(name, priority=priority, work_pool_name=pool,
                                             description=f"knobflow: {name} services' jobs")
                continue
            if queue.priority != priority:
                client.update_work_queue(queue.id, priority=priority)
        return {name: client.read_work_queue_by_name(name, work_pool_name=pool).priority
                for name in QUEUES}


def submit_tune(deployment: str, parameters: dict[str, Any], *, home: str | Path,
                service: str | None = None) -> Any:
    """Start a run of tune ``deployment`` (``flow/deployment``) with ``parameters`` on the work
    pool queue of its service (``parameters['service']``, else its target), the pool's queues
    made first (``ensure_queues``); the flow run, not waited for."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    service = service or parameters.get("service") or parameters["target"]
    with get_client(sync_client=True) as client:
        pool = client.read_deployment_by_name(deployment).work_pool_name
    if pool:  # a queue named in a run but missing would be made with the lowest priority
        ensure_queues(pool)
    return run_deployment(deployment, parameters={**parameters, "home": str(home)}, timeout=0,
                          work_queue_name=queue_for(home, service), as_subflow=False)


# -- the test-bed's limit -----------------------------------------------------------------------
def host_testbed() -> str:
    """This host's name as a test-bed name (its first label, letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname().split(".")[0]).strip("-._")
    return (name or "localhost")[:64]


def limit_name(testbed: str) -> str:
    """The Prefect global concurrency limit of ``testbed``."""
    return f"testbed-{testbed}"


def _prefect_server() -> str | None:
    from flows.temporary_api import configured_api

    return configured_api()


@contextlib.contextmanager
def hold_testbed(testbed: str | None, slots: int | None,
                 logger: Logger) -> Iterator[dict[str, Any]]:
    """Hold one slot of ``testbed`` while the block runs (waiting for one, and saying so);
    yields what was held (``{"limit": name, "slots": N}``, or ``{"limit": None, ...}`` when the
    job names no test-bed or no Prefect server is configured). A job guards its test-bed only
    when asked (``--testbed``/``--testbed-slots``): a default limit of one per host would queue
    every job of a host behind the others, and a killed job's slot would hold the next for a
    lease."""
    if testbed is None and slots is None:
        logger.info("test-bed not named (--testbed): no concurrency limit is held")
        yield {"limit": None, "slots": None, "testbed": host_testbed()}
        return
    testbed = testbed or host_testbed()
    if _prefect_server() is None:
        logger.info("test-bed %s is not guarded: no Prefect server is configured "
                    "(PREFECT_API_URL), so no concurrency limit is shared with other jobs; "
                    "point knobflow at a server (infra/stack) to limit jobs per test-bed",
                    testbed)
        yield {"limit": None, "slots": None, "testbed": testbed}
        return
    from prefect.concurrency.sync import concurrency

    name = limit_name(testbed)
    limit, busy = _ensure_limit(name, slots)
    if busy:
        logger.info("test-bed %s is busy (all %d slots of %s are held by other jobs): waiting",
                    testbed, limit, name)
    began = time.monotonic()
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S):
        waited = time.monotonic() - began
        logger.info("test-bed %s: holding a slot of %s (limit %d)%s", testbed, name, limit,
                    f" after waiting {waited:.1f} s" if busy else "")
        yield {"limit": name, "slots": limit, "testbed": testbed, "waited_s": round(waited, 2)}


def _ensure_limit(name: str, slots: int | None) -> tuple[int, bool]:
    """Create the limit ``name`` with ``slots`` (default 1) if it is missing, or set it to
    ``slots`` if given; its limit, and whether all its slots are held now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots or 1))
            existing = client.read_global_concurrency_limit_by_name(name)
        if not existing.active:
            raise KnobflowError(f"the Prefect concurrency limit {name} is turned off (inactive); "
                                f"turn it on (prefect gcl enable {name}) or give another "
                                "--testbed")
        limit = int(existing.limit)
        if slots is not None and limit != slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
                limit=slots))
            limit = slots
        return limit, int(existing.active_slots) >= limit


# -- isolation ----------------------------------------------------------------------------------
def isolate(job: Job) -> Isolation:
    """Each instance's CPU set and memory limit on this host (``tasks/isolation.py``), recorded
    in the job's record; a ``KnobflowError`` naming the option when the host cannot give it."""
    try:
        plan = plan_isolation(list(job.instance_dirs()), job.cpus, job.memory_mb,
                              job.study_name)
    except IsolationError as exc:
        raise KnobflowError(str(exc)) from None
    return plan


@contextlib.contextmanager
def on_testbed(job: Job, runner: TrialRunner, tracker: JobTracker, resume: bool,
                logger: logging.Logger | logging.LoggerAdapter[Any]) -> Iterator[None]:
    """Run the job's trials on its test-bed: each instance isolated as this host allows (its
    CPU set, its memory limit), one slot of the test-bed's concurrency limit held throughout;
    what was given is recorded in job.json and the MLflow run."""
    runner.isolation = isolate(job)
    try:
        with hold_testbed(job.testbed, job.testbed_slots, logger) as held:
            job.isolation = {"testbed": held["testbed"], "limit": held["limit"],
                             "slots": held["slots"], "waited_s": held.get("waited_s"),
                             "held_since": datetime.now(UTC).isoformat(),
                             **runner.isolation.record()}
            job.save()
            cpus = ";".join(f"{k}={v}" for k, v in job.isolation["cpus"].items())
            tags = {"knobflow.testbed": held["testbed"], "knobflow.isolation.cpus": cpus,
                    "knobflow.isolation.memory": job.isolation["memory"]}
            params = {} if resume else {"testbed": held["testbed"],
                                        "isolation.memory": job.isolation["memory"],
                                        "isolation.cpus": cpus[:500]}
            tracker.annotate(params=params, tags=tags)
            logger.info("isolation of the instances: cpus %s; memory %s%s", cpus,
                        job.isolation["memory"],
                        f" ({job.isolation['why_not_cgroup']})"
                        if job.isolation.get("why_not_cgroup") else "")
            yield
    finally:
        runner.processes.close()  # the trial launcher: its trials have ended
        runner.isolation.release()
