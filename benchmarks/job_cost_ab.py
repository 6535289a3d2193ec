"""Two checkouts' job cost side by side, in one run: ``job_cost.py``'s job (``knobflow tune
synthetic --set-workload duration=0 --json`` in a fresh process, each job the first of a new
service, Prefect's temporary server with a warm ``PREFECT_HOME``) from checkouts A and B,
for ``--rounds`` rounds, after one uncounted warm-up job each (its own home and
``PREFECT_HOME`` per checkout). The order turns every round (A B, B A, A B, ...): with A always
first, B's imports or training read 0.2-0.65 s longer in runs where B's change could not touch
them (RESULTS, 2026-12-04 and 12-05); an even number of rounds puts each checkout first as often.
Prints the fixed parts of every job, its exploration's time per trial, the CPU time of the
command and its children, and the load average, and writes them as JSON with ``--json FILE``.

    nice -n 5 python benchmarks/job_cost_ab.py /work/wt/base /work/wt/train --trials 30 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import job_cost  # noqa: E402  (this folder)
import yaml  # noqa: E402
from overhead import SPACE  # noqa: E402

SHOWN = ("imports", "server", "training", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="checkout A (e.g. main)")
    parser.add_argument("b", type=Path, help="checkout B (e.g. the branch)")
    parser.add_argument("--trials", type=job_cost._at_least(2), default=30)
    parser.add_argument("--rounds", type=job_cost._at_least(1), default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write every job's figures here")
    args = parser.parse_args()
    checkouts = {"A": args.a.resolve(), "B": args.b.resolve()}
    jobs: dict[str, list[dict]] = {"A": [], "B": []}
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="knobflow-job-cost-ab-") as tmp:
        root = Path(tmp)
        space = root / "space.yaml"
        space.write_text(yaml.safe_dump(SPACE))

        def run(side: str, n: int, service: str, seed: int) -> dict:
            job_cost.REPO = checkouts[side]  # the job's cwd and PYTHONPATH
            return job_cost.knobflow_job(n, seed, root / side / "home", service,
                                         root / side / "prefect", space)

        for side in checkouts:
            print(f"warm-up job of {side} ({checkouts[side]}), not counted", flush=True)
            run(side, 3, "warm-up", args.seed)
        for r in range(args.rounds):
            for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
                job = run(side, args.trials, f"svc-{r}", args.seed + r)
                job["load"] = os.getloadavg()[0]
                jobs[side].append(job)
                parts = "  ".join(f"{p} {job['fixed_s'][p]:.2f}" for p in SHOWN)
                place = "first" if (side == "A") == (r % 2 == 0) else "second"
                print(f"round {r + 1} {side} ({place}): {parts}  (s)  per trial "
                      f"{_per_trial_ms(job, args.trials):.1f} ms  CPU {job['cpu_s']:.1f} s  "
                      f"(load {job['load']:.2f})", flush=True)
    loads.append(os.getloadavg())
    for side, done in jobs.items():
        medians = "  ".join(f"{p} {statistics.median(j['fixed_s'][p] for j in done):.2f}"
                            for p in SHOWN)
        per_trial = statistics.median(_per_trial_ms(j, args.trials) for j in done)
        print(f"median {side} ({checkouts[side]}): {medians}  per trial {per_trial:.1f} ms  "
              f"CPU {statistics.median(j['cpu_s'] for j in done):.1f} s")
    print(f"load average at the start {loads[0]}, at the end {loads[1]}")
    if args.json:
        args.json.write_text(json.dumps({"checkouts": {k: str(v) for k, v in checkouts.items()},
                                         "loads": loads, "jobs": jobs}, default=str))


def _per_trial_ms(job: dict, trials: int) -> float:
    """The exploration's time per trial (``trials_s``: the fixed parts are not in it)."""
    return 1000 * job["trials_s"] / trials


if __name__ == "__main__":
    main()
