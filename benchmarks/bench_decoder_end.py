"""What the narrow decoder's 16-channel floor costs: training steps per second of resnet18 U-Nets whose decoder
ends with 8 channels at full resolution (128 halved four times, as before the floor), with 16 (the floor,
model.decoder_channels) and smp's 256-wide decoder, side by side in one process, alternating, `--rounds` times.

RGB input, 4 classes, 8 crops of 256 px (the RGB planner benchmark's shape), timed with the planner's probe step.
Prints one line per case and round and writes a JSON.

    python benchmarks/bench_decoder_end.py                  # this CPU at the precision auto picks
    python benchmarks/bench_decoder_end.py --isa avx2       # fp32 with oneDNN limited to AVX2 (a laptop stand-in)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_end_to_end import log
from bench_planner import isa_environment, where_it_ran

REPO = Path(__file__).resolve().parent.parent
DECODERS = {"128 ending in 8": (128, 64, 32, 16, 8), "128 ending in 16": (128, 64, 32, 16, 16),
            "256 (smp's)": (256, 128, 64, 32, 16)}


def crops_per_second(decoder: tuple[int, ...], *, steps: int, crop: int = 256, batch: int = 8) -> float:
    """The planner's own probe step (planner.training_rate) with the decoder's widths given: the fastest of the
    timed steps (until 2026-12-07 their mean, as in decoder_end.json and decoder_end_avx2.json)."""
    import torch

    from unetcli.model import build_model
    from unetcli.planner import training_rate
    from unetcli.runtime import pick_precision

    device = torch.device("cpu")
    torch.manual_seed(0)
    return training_rate(build_model("resnet18", 3, 4, decoder=decoder), crop=crop, batch=batch, channels=3,
                         out_channels=4, device=device, precision=pick_precision("auto", device), steps=steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.isa == "avx2" and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":  # oneDNN reads it at start: re-run
        return subprocess.run([sys.executable, *sys.argv], env=isa_environment("avx2"), check=False).returncode
    rows = []
    for round_ in range(args.rounds):
        for name, decoder in DECODERS.items():
            rate = crops_per_second(decoder, steps=args.steps)
            rows.append({"decoder": name, "channels": decoder, "round": round_, "crops_per_s": round(rate, 2)})
            log(f"round {round_} resnet18, decoder {name}: {rate:.2f} crops/s")
    out = args.out or REPO / "benchmarks" / "results" / f"decoder_end{'_avx2' * (args.isa == 'avx2')}.json"
    result = {**where_it_ran(args.isa), "when": time.strftime("%Y-%m-%d"), "crop": 256, "batch": 8,
              "command": " ".join(["python", "benchmarks/bench_decoder_end.py", *sys.argv[1:]]), "runs": rows}
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
