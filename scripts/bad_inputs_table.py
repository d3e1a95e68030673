"""The before/after table of bad inputs: each class of tests/bad_inputs.py run as a real
`medbench` process against one or more checkouts, with its exit code, stderr line count,
whether a traceback was printed, and the first line.

    python scripts/bad_inputs_table.py OLD_CHECKOUT NEW_CHECKOUT [--nifti]

A checkout is a folder holding `bench/` (e.g. `git archive <commit> | tar -x -C DIR`). Bombs
are written whole ($BAD_INPUTS_FULL), as a real attacker's are. Each process is capped at
4 GiB of address space (RLIMIT_AS) so an unbounded decode fails instead of taking the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bad_inputs import CASES, FULL_ENV, NIFTI_CASES  # noqa: E402

CAP = 4 << 30


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


def run_case(checkout: Path, builder, tmp: Path) -> dict:
    argv = builder(tmp)
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1",
           "MEDBENCH_OFFLINE": "1"}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "bench.cli", *argv], env=env, cwd=tmp,
                          capture_output=True, text=True, preexec_fn=_cap, timeout=600)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    return {"code": done.returncode, "lines": len(lines),
            "traceback": "Traceback" in done.stderr, "wall_s": time.time() - t0,
            "first": (lines[-1] if "Traceback" in done.stderr else lines[0]) if lines else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkouts", nargs="+", type=Path)
    ap.add_argument("--nifti", action="store_true", help="also the .nii.gz bomb (nibabel)")
    args = ap.parse_args()
    os.environ[FULL_ENV] = "1"
    cases = {**CASES, **(NIFTI_CASES if args.nifti else {})}
    print("| input | " + " | ".join(f"{c.name}" for c in args.checkouts) + " |")
    print("|---|" + "---|" * len(args.checkouts))
    for name, builder in cases.items():
        cells = []
        for checkout in args.checkouts:
            with tempfile.TemporaryDirectory() as tmp:
                r = run_case(checkout.resolve(), builder, Path(tmp))
            first = r["first"].replace(str(tmp), "…").replace("|", "\\|")[:150]
            cells.append(f"exit {r['code']}, {r['lines']} line(s)"
                         f"{', traceback' if r['traceback'] else ''}: `{first}`")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
