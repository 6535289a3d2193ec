"""What a live Redis's own counters show for a regressing config and for one equal in effect.

Launches a Redis instance under its background load (``targets.live_daemon.launch``: the trial
target's server on a private socket, ``redis-benchmark -l``), then in turn: ``--windows`` windows
of ``--seconds`` s on the default config; the config applied live (CONFIG SET + CONFIG REWRITE
through ``targets.live_redis.RedisLive``); the same number of windows; back to the default, and so
on for each config. Configs: ``appendonly yes`` + ``appendfsync always`` (an fsync of the AOF
after every event-loop round of writes: the issue's regressing config, which no shipped rule
blocks), and ``hz 11`` / ``maxmemory_samples 6`` (equal in effect to the default for this load:
no expiry, no eviction). The first window after each apply is left out when ``--settle`` is set
(turning AOF on forks an AOF rewrite).

    python benchmarks/live_redis.py --windows 5 --seconds 2 [--settle] [--tests set,get]
        [--requests 100000] [--pipeline 16] [--clients 20]
        [--configs aof-always,hz-11,samples-6] [--repeat 1] [--dir DIR]

Prints per config: rps before and after (median, min-max over the windows), the ratio of the
medians, server CPU s/s, and the file system of the instance's directory (fsync on tmpfs costs
nothing, so there the AOF config would not regress).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import psutil

from targets.live import Window, live_system
from targets.live_daemon import launch, stop_launched

CONFIGS: dict[str, dict[str, Any]] = {
    "aof-always": {"appendonly": True, "appendfsync": "always"},
    "hz-11": {"hz": 11},
    "samples-6": {"maxmemory_samples": 6},
}


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path``."""
    best = max((p for p in psutil.disk_partitions(all=True)
                if str(path.resolve()).startswith(p.mountpoint)),
               key=lambda p: len(p.mountpoint), default=None)
    return best.fstype if best else "?"


def summary(windows: list[Window]) -> tuple[float, float, float, float]:
    rps = [w.metrics["rps"] for w in windows]
    cpu = statistics.median(w.counters["server_cpu_s_per_s"] for w in windows)
    return statistics.median(rps), min(rps), max(rps), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--tests", default="set,get")
    parser.add_argument("--requests", type=int, default=100_000,
                        help="of each test in one loop: far below a window's, for a steady mix")
    parser.add_argument("--pipeline", type=int, default=16)
    parser.add_argument("--clients", type=int, default=20, help="connections of the load")
    parser.add_argument("--settle", action="store_true", help="leave out the first window after")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the configs")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="knobflow-live-redis-"))
    data_dir = base / "instance"
    live = live_system(launch("redis", data_dir, {"tests": args.tests,
                                                   "requests": args.requests,
                                                   "pipeline": args.pipeline,
                                                   "clients": args.clients}))
    default = live.read_config()
    print(f"{live.ping()} in {data_dir} ({fs_type(data_dir)}), workload tests={args.tests} "
          f"requests={args.requests} "
          f"pipeline={args.pipeline} clients={args.clients}, "
          f"{args.windows} windows of {args.seconds:g} s")
    print(f"{'config':<12} {'before rps (min-max)':>30} {'after rps (min-max)':>30} "
          f"{'ratio':>6} {'cpu b/a':>11}")
    try:
        for name in args.configs.split(",") * args.repeat:
            config = CONFIGS[name]
            before = live.observe(args.windows, args.seconds)
            live.apply(config)
            after = live.observe(args.windows + int(args.settle), args.seconds)
            after = after[int(args.settle):]
            live.apply({k: default[k] for k in config})
            b, a = summary(before), summary(after)
            print(f"{name:<12} {b[0]:>10.0f} ({b[1]:>8.0f}-{b[2]:>8.0f}) "
                  f"{a[0]:>10.0f} ({a[1]:>8.0f}-{a[2]:>8.0f}) {a[0] / b[0]:>6.2f} "
                  f"{b[3]:>5.2f}/{a[3]:<5.2f}")
        assert live.read_config() == default
    finally:
        stop_launched(data_dir)
        if args.dir is None:
            base.rmdir()


if __name__ == "__main__":
    main()
