"""A target for tests/flows/test_testbeds.py, imported by its trial processes (which import
this module, not the test's): it starts a child process as a server would, and reports the CPU
set and address-space limit of the trial process and of that child; with ``hog_mb`` it
allocates that much."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from targets.base import Measurement, Target


class ProbeTarget(Target):
    """Starts a child process as a server would, and reports what it and its child got; with
    ``hog_mb`` it allocates that much."""

    name: ClassVar[str] = "probe"
    workload_defaults: ClassVar[Mapping[str, Any]] = {"hog_mb": 0}
    metrics: ClassVar[Mapping[str, str]] = {"throughput": "maximize"}
    default_objective: ClassVar[str] = "throughput"

    def start(self, config: Mapping[str, Any]) -> None:
        self.server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])

    def run(self) -> Measurement:
        hog = bytearray(int(self.workload["hog_mb"]) * 2**20)  # noqa: F841 - the allocation
        said = []
        for pid in (os.getpid(), self.server.pid):
            status = Path(f"/proc/{pid}/status").read_text()
            cpus = next(ln.split(":")[1].strip() for ln in status.splitlines()
                        if ln.startswith("Cpus_allowed_list"))
            limit = next(ln.split()[-3] for ln in Path(f"/proc/{pid}/limits").read_text()
                         .splitlines() if ln.startswith("Max address space"))
            said.append(f"pid {pid} cpus {cpus} as {limit}")
        return Measurement(metrics={"throughput": 1.0}, effective_config={}, log=said)

    def stop(self) -> None:
        self.server.kill()
        self.server.wait()

    @classmethod
    def cleanup(cls, data_dir: Path) -> None:
        pass
