"""An out-of-tree knobflow target, as a user's package would ship one: zlib compression.

It tunes how a service compresses its payloads (level, window, memory level, strategy, chunk
size) for throughput. It is registered by entry point (see the ``.dist-info`` beside it; in a real
package's pyproject.toml: ``[project.entry-points."knobflow.targets"]`` with
``zlib = "knobflow_zlib_target:ZlibTarget"``) and passes knobflow's target contract
(``knobflow check-target zlib``).

zlib refuses a parameter it cannot use (``zlib.error``/``ValueError``) instead of clamping it, so
the values it accepted are the values it applied: that is its effective config.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Mapping
from typing import Any, ClassVar

from targets.base import MAXIMIZE, ConfigRefused, ContractExamples, Measurement, Target

_STRATEGIES = {
    "default": zlib.Z_DEFAULT_STRATEGY,
    "filtered": zlib.Z_FILTERED,
    "huffman_only": zlib.Z_HUFFMAN_ONLY,
    "rle": zlib.Z_RLE,
}


class ZlibTarget(Target):
    """zlib compression of a service's payloads (an example plug-in target)."""

    name: ClassVar[str] = "zlib"
    workload_defaults: ClassVar[Mapping[str, Any]] = {"megabytes": 4, "redundancy": 0.7}
    workload_limits: ClassVar[Mapping[str, tuple[float, float]]] = {
        "megabytes": (1, 1024),
        "redundancy": (0.0, 1.0),
    }
    metrics: ClassVar[Mapping[str, str]] = {"mb_per_s": MAXIMIZE, "ratio": MAXIMIZE}
    default_objective: ClassVar[str] = "mb_per_s"
    trial_timeout_s: ClassVar[float] = 60.0

    def start(self, config: Mapping[str, Any]) -> None:
        try:
            self.compressor = zlib.compressobj(
                int(config["level"]),
                zlib.DEFLATED,
                int(config["wbits"]),
                int(config["mem_level"]),
                _STRATEGIES[config["strategy"]],
            )
        except (ValueError, zlib.error, KeyError) as exc:
            raise ConfigRefused(f"zlib refused the config: {exc}") from None
        self.applied = dict(config)

    def run(self) -> Measurement:
        rng = random.Random(self.seed)
        words = [bytes(rng.choices(range(97, 123), k=8)) for _ in range(256)]
        chunk = int(self.applied["chunk_kb"]) * 1024
        total = int(self.workload["megabytes"]) * 2**20
        redundancy = float(self.workload["redundancy"])
        payload = b"".join(
            rng.choice(words[:16]) if rng.random() < redundancy else rng.choice(words)
            for _ in range(total // 8)
        )
        started = time.perf_counter()
        size = 0
        for i in range(0, len(payload), chunk):
            size += len(self.compressor.compress(payload[i : i + chunk]))
        size += len(self.compressor.flush())
        seconds = time.perf_counter() - started
        return Measurement(
            metrics={"mb_per_s": len(payload) / 2**20 / seconds, "ratio": len(payload) / size},
            effective_config=dict(self.applied),
            samples=[{"t": seconds, "phase": "compress", "bytes": len(payload)}],
            counters={"compressed_bytes": float(size)},
            duration_s=seconds,
        )

    @classmethod
    def workload_features(cls, workload: Mapping[str, Any]) -> dict[str, float]:
        return {
            "megabytes": float(workload["megabytes"]),
            "redundancy": float(workload["redundancy"]),
        }

    @classmethod
    def contract_examples(cls) -> Mapping[str, ContractExamples]:
        return {
            "zlib": ContractExamples(
                workload={"megabytes": 1}, refused={"mem_level": 0}, timeout_s=20.0
            )
        }
