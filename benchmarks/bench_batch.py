"""The planner's batch rule: what a training step of each candidate costs in time and memory at the crop and batch
sizes it plans (8 crops of 256 px, or about the same pixels in fewer, larger crops) and at 8 large crops.

Each figure is the planner's own probe (planner.time_steps: one untimed step, then `--steps` timed ones, the
fastest of which gives the rate, and the peak memory as PeakMemory measures it), run in a fresh process so that no
earlier allocation hides a peak. Until 2026-12-07 the probe gave the timed steps' mean: batch.json and
batch_avx2.json were measured that way. Prints one line per case and writes a JSON.

    python benchmarks/bench_batch.py                  # this CPU at the precision auto picks
    python benchmarks/bench_batch.py --isa avx2       # fp32 with oneDNN limited to AVX2 (a laptop stand-in)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_end_to_end import log
from bench_planner import isa_environment, where_it_ran

from unetcli.planner import CANDIDATES

REPO = Path(__file__).resolve().parent.parent
CASES = [(256, 8), (384, 4), (384, 8), (512, 2), (512, 8)]  # (crop, batch): the planned ones and 8 large crops

PROBE = """
import json, sys, torch
from unetcli.planner import CANDIDATES, time_steps
from unetcli.runtime import pick_precision
name, crop, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
candidate = next(c for c in CANDIDATES if c.name == name)
device = torch.device("cpu")
probe = time_steps(candidate, crop=crop, batch=batch, channels=1, out_channels=1, device=device,
                   precision=pick_precision("auto", device), steps=steps)
print(json.dumps({"rate": probe.rate, "peak_bytes": probe.peak_bytes}))
"""


def probe(name: str, crop: int, batch: int, steps: int, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, name, str(crop), str(batch), str(steps)], capture_output=True,
                          text=True, env=env, cwd=REPO, check=False)
    if done.returncode:
        raise SystemExit(f"probe {name} {crop} px x {batch} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "batch.json")
    args = parser.parse_args()
    env = {**isa_environment(args.isa), "PYTHONPATH": str(REPO)}
    rows = []
    for candidate in CANDIDATES:
        for crop, batch in CASES:
            measured = probe(candidate.name, crop, batch, args.steps, env)
            megapixels = measured["rate"] * crop * crop / 1e6
            row = {"model": candidate.name, "crop": crop, "batch": batch, "crops_per_s": round(measured["rate"], 3),
                   "megapixels_per_s": round(megapixels, 3),
                   "peak_gb": measured["peak_bytes"] and round(measured["peak_bytes"] / 2**30, 2)}
            rows.append(row)
            log(f"{candidate.name:22s} {crop} px x {batch}: {row['crops_per_s']:.2f} crops/s, "
                f"{megapixels:.3f} Mpx/s, peak {row['peak_gb']} GB")
    result = {"command": "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:]), **where_it_ran(args.isa),
              "when": time.strftime("%Y-%m-%d"), "steps_timed": args.steps, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
