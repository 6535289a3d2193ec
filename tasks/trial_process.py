"""The trial process: runs one target lifecycle (start, run, stop) and writes its outcome.

Started by ``tasks/explore.py`` as ``python -m tasks.trial_process REQUEST.json`` in a new session
(its own process group), so the tuner can kill it and everything it started with one signal; it
kills its own group when the tuner dies. Only the standard library and the target's module are
imported here: start-up time is paid on every trial.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any


def _watch_parent(parent: int) -> None:
    """End the whole process group when the tuner dies (even by SIGKILL): no orphaned trials."""
    while True:
        time.sleep(0.25)
        if os.getppid() != parent:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str), encoding="utf-8")
    os.replace(tmp, path)


def run_request(request: dict[str, Any]) -> dict[str, Any]:
    """Run the lifecycle described by ``request``; return the outcome document."""
    from targets.base import BenchmarkError, ConfigRefused, FailureClass, TrialFailed
    from targets.registry import import_target

    target_cls = import_target(request["target_ref"])
    data_dir = Path(request["data_dir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    target = target_cls(data_dir, request["workload"], seed=int(request["seed"]))

    def failed(cls: FailureClass, message: str) -> dict[str, Any]:
        return {"status": "failed", "failure_class": str(cls), "message": message}

    try:
        with target:
            target.start(request["config"])
            measurement = target.run()
    except ConfigRefused as exc:
        return failed(FailureClass.REFUSED, str(exc))
    except BenchmarkError as exc:
        return failed(FailureClass.BENCHMARK_ERROR, str(exc))
    except TrialFailed as exc:
        return failed(exc.failure_class, str(exc))
    except MemoryError as exc:
        return failed(FailureClass.OUT_OF_MEMORY, f"MemoryError: {exc}")
    except OSError as exc:
        return failed(FailureClass.IO_ERROR, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # the target's own bug: report it, the job goes on
        traceback.print_exc()
        return failed(FailureClass.TARGET_ERROR, f"{type(exc).__name__}: {exc}")
    return {"status": "ok", "measurement": measurement.to_dict()}


def main(argv: list[str]) -> int:
    request_path = Path(argv[1])
    request = json.loads(request_path.read_text(encoding="utf-8"))
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    outcome = run_request(request)
    _write_atomic(Path(request["result_path"]), outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
