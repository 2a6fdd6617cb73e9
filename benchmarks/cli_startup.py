"""How long `lmforge --help` (and `lmforge models`) take to start, vs a bare Python start.

Run: .venv/bin/python benchmarks/cli_startup.py [--runs 15]
Alternates the commands A B C A B C … and reports medians (the machine's speed swings; never assert a time).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

LMFORGE = str(Path(sys.executable).with_name("lmforge"))
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "lmforge --help": [LMFORGE, "--help"],
    "lmforge models": [LMFORGE, "models"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(runs):
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    print(f"{'command':<28} {'median s':>9} {'min s':>7}   ({runs} alternating runs)")
    for name, ts in times.items():
        print(f"{name:<28} {statistics.median(ts):>9.3f} {min(ts):>7.3f}")


if __name__ == "__main__":
    main()
