"""What a full garbage collection costs in a flow run forked by ``knobflow serve``'s fork server,
with and without what the fork server loaded frozen first (``gc.freeze``, what
``flows.serve_fork._ServedRunProcess`` does before a run).

A fork server is started with serve's preload list (``preload_modules(PACKAGES)``); children of
it alternate, unfrozen and frozen; each times its first and second full collections and reads
its private memory (USS) around them: the pages a collection copies from the fork server. Prints
one row per child and the medians.

    python benchmarks/fork_gc.py --children 8
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's code, whatever the installed one is


def child(freeze: bool, answers: Any) -> None:
    """In a forked child: freeze (or not), then two full collections, timed, and the private
    memory they made."""
    import psutil

    me = psutil.Process()
    if freeze:
        gc.freeze()
    before = me.memory_full_info().uss
    began = time.perf_counter()
    gc.collect()
    first = time.perf_counter() - began
    began = time.perf_counter()
    gc.collect()
    second = time.perf_counter() - began
    copied = (me.memory_full_info().uss - before) / 2**20
    answers.put((freeze, first * 1000, second * 1000, copied, gc.get_freeze_count()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=8, help="children in all (alternating)")
    args = parser.parse_args()
    from flows.serve_fork import preload_modules
    from flows.warm_client import PACKAGES

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*preload_modules(PACKAGES), "__main__"])
    answers = context.Queue()
    rows = []
    for i in range(args.children):
        process = context.Process(target=child, args=(bool(i % 2), answers))
        process.start()
        rows.append(answers.get(timeout=600))
        process.join()
    print("| in the forked run | first full collection (ms) | second (ms) | private memory "
          "copied (MB) | objects frozen |")
    print("| --- | --- | --- | --- | --- |")
    for frozen, first, second, copied, count in rows:
        print(f"| {'frozen' if frozen else 'not frozen'} | {first:.0f} | {second:.0f} | "
              f"{copied:+.0f} | {count:,} |")
    for kind in (False, True):
        mine = [r for r in rows if r[0] is kind]
        print(f"median, {'frozen' if kind else 'not frozen'}: first "
              f"{statistics.median(r[1] for r in mine):.0f} ms, second "
              f"{statistics.median(r[2] for r in mine):.0f} ms, copied "
              f"{statistics.median(r[3] for r in mine):+.0f} MB")


if __name__ == "__main__":
    main()
