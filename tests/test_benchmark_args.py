"""benchmarks/transfer.py refuses bad arguments with the exact error, before running any job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("args", "error"), [
    (["--targets", "synthetic,nope"], "transfer.py: error: --targets: unknown setup 'nope'; one "
     "of synthetic, sqlite, synthetic-far, synthetic-chain"),
    (["--reuse"], "transfer.py: error: --reuse needs --keep DIR"),
])
def test_bad_arguments_exit_2_with_the_error(args: list[str], error: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer.py"), *args,
                           "--plot", str(tmp_path / "p.png")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == error
    assert not (tmp_path / "p.png").exists()
