"""Time to quality on the membrane split: the planner against today's fixed defaults at the same budgets.

For each budget and seed, `unetcli train` on slices 0-24 with `--time-limit` (planned, and with `--no-plan`, the
fixed defaults of before the planner), then `unetcli evaluate` of model-last on slices 25-29, as it is and with
`--tta` (the four flipped views averaged: an inference choice, reported beside the plain score). The two
configurations of one budget and seed run back to back, so load on the machine hits both alike. Prints one
line per run and writes a JSON of every figure plus a picture of pixel error against budget.

    python benchmarks/bench_planner.py --minutes 2 5 10 --seeds 0 --isa avx2
    (--isa avx2: fp32 with oneDNN limited to AVX2, standing in for a laptop CPU without bf16)
    python benchmarks/bench_planner.py --dataset rgb --minutes 2 5 --out benchmarks/results/planner_rgb.json
    (--dataset rgb: the generated RGB four-class set of synthetic_rgb.py, so the rules are not tuned to membrane)
    python benchmarks/bench_planner.py --dataset membrane-2x --minutes 5 --configs planner b8 --config "b8=--batch-size 8"
    (--dataset membrane-2x: the membrane split scaled up twice, 1024 px, so objects are twice as large and the plan's
    crop is 512: a case for the batch rule, 2 crops of 512 px against 8)
    python benchmarks/bench_planner.py --dataset rgb --minutes 2 --configs defaults \
        --config "r18-128=--no-plan --encoder resnet18 --decoder-width 128"
    (--config NAME=ARGS adds a configuration of your own, e.g. for an ablation; --configs picks which run)
    python benchmarks/bench_planner.py --merge A.json B.json --out C.json
    (no training: the runs of several result files, of one dataset, CPU and precision, in one file and picture;
    a later file's run of the same configuration, budget and seed replaces an earlier one)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_end_to_end import check, evaluate, load_snapshot, log, machine_facts, run_cli, split_membrane
from membrane import MEMBRANE
from synthetic_rgb import split_rgb

from unetcli.planner import PLANNED

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"planner": [], "defaults": ["--no-plan"]}


def cpu_facts() -> dict:
    """The CPU model and the widest matrix ISA it has (AMX, AVX-512, AVX2), from /proc/cpuinfo."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = "AMX" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    return {"cpu_model": model, "isa": isa, "avx512_bf16": "avx512_bf16" in flags}


def isa_environment(isa: str) -> dict:
    """The environment for subprocesses: as it is (native), or fp32 with oneDNN limited to AVX2 (a laptop stand-in)."""
    env = dict(os.environ)
    if isa == "avx2":
        env.update(UNETCLI_PRECISION="fp32", ONEDNN_MAX_CPU_ISA="AVX2")
    return env


def where_it_ran(isa: str) -> dict:
    """The CPU and the precision the runs used, for a results file."""
    precision = "fp32 (oneDNN limited to AVX2)" if isa == "avx2" else machine_facts()["precision_auto"]
    return {"cpu": cpu_facts(), "precision": precision}


def train_and_score(train_dir: Path, test_dir: Path, run_dir: Path, *, minutes: float, seed: int, config: str,
                    extra: list[str], env: dict) -> dict:
    args = ["train", train_dir, "--val-split", "0", "-o", run_dir, "--time-limit", f"{minutes:g}m", "--seed", seed,
            "--json", "--overwrite", *extra]
    result, wall = run_cli(args, env=env)
    check(result, "unetcli train")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    plan = next((e for e in events if e.get("event") == "plan"), None)
    epochs = [e for e in events if e.get("event") == "epoch"]
    summary, _ = evaluate(run_dir / "model-last", test_dir)
    flipped, _ = evaluate(run_dir / "model-last", test_dir, "--tta")
    run_yaml = (run_dir / "run.yaml").read_text()
    return {"config": config, "minutes": minutes, "seed": seed, "train_wall_s": round(wall, 1),
            "epochs_done": len(epochs), "pixel_error": summary["pixel_error"], "mean_dice": summary["mean_dice"],
            "class_dice": {name: c.get("dice") for name, c in summary["classes"].items()},
            "tta": {"pixel_error": flipped["pixel_error"], "mean_dice": flipped["mean_dice"]},
            "plan": plan and {"choices": plan["choices"], "throughput": plan["throughput"],
                              "expected_seconds": plan["expected_seconds"]},
            "options": {k: v for k, v in (line.split(": ", 1) for line in run_yaml.splitlines() if ": " in line)
                        if k in PLANNED}}


def draw(runs: list[dict], title: str) -> np.ndarray:
    """Pixel error against budget, one line per configuration (mean over seeds), on a white canvas."""
    width, height, left, bottom, top = 640, 400, 70, 50, 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    budgets = sorted({r["minutes"] for r in runs})
    errors = [r["pixel_error"] for r in runs]
    low, high = min(errors) * 0.95, max(errors) * 1.05

    def point(minutes: float, error: float) -> tuple[int, int]:
        x = left + (budgets.index(minutes) + 0.5) * (width - left - 20) / len(budgets)
        y = top + (high - error) / (high - low or 1) * (height - top - bottom)
        return int(x), int(y)

    cv2.putText(canvas, title, (left, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for fraction in (0, 0.5, 1):
        value = low + fraction * (high - low)
        y = point(budgets[0], value)[1]
        cv2.line(canvas, (left, y), (width - 20, y), (225, 225, 225), 1)
        cv2.putText(canvas, f"{value:.4f}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for minutes in budgets:
        x = point(minutes, low)[0]
        cv2.putText(canvas, f"{minutes:g} min", (x - 20, height - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    named = {"planner": (200, 40, 200), "defaults": (90, 90, 90)}  # RGB; other configurations (ablations) cycle below
    others = [(40, 120, 220), (230, 140, 20), (30, 160, 90), (200, 40, 40), (120, 80, 200), (20, 170, 190)]
    colours = {c: rgb for c, rgb in named.items() if any(r["config"] == c for r in runs)}
    colours |= {c: others[i % len(others)] for i, c in enumerate(sorted({r["config"] for r in runs} - set(named)))}
    for row, (config, colour) in enumerate(colours.items()):
        means = [(m, float(np.mean([r["pixel_error"] for r in runs if r["config"] == config and r["minutes"] == m])))
                 for m in budgets if any(r["config"] == config and r["minutes"] == m for r in runs)]
        points = [point(m, e) for m, e in means]
        for a, b in itertools.pairwise(points):
            cv2.line(canvas, a, b, colour, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(canvas, p, 4, colour, -1, cv2.LINE_AA)
        cv2.putText(canvas, config, (width - 200, top + 20 + 18 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    cv2.putText(canvas, "held-out pixel error (lower is better)", (left, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def scaled_twice(folders: tuple[Path, Path], workdir: Path) -> tuple[Path, Path]:
    """Copies of the train and test folders at twice the size: images cubic, masks nearest (their values kept)."""
    scaled = []
    for folder in folders:
        target = workdir / "membrane-2x" / folder.name
        for sub, interpolation in (("images", cv2.INTER_CUBIC), ("masks", cv2.INTER_NEAREST)):
            (target / sub).mkdir(parents=True, exist_ok=True)
            for path in sorted((folder / sub).iterdir()):
                if not (target / sub / path.name).exists():
                    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                    cv2.imwrite(str(target / sub / path.name), cv2.resize(array, None, fx=2, fy=2, interpolation=interpolation))
        scaled.append(target)
    return scaled[0], scaled[1]


def write_result(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    held_out = {"membrane": "membrane 25-29", "membrane-2x": "membrane 25-29 scaled 2x"}.get(result["dataset"],
                                                                                          "RGB 4-class test set")
    cpu = result["cpu"]
    title = f"{held_out}, {cpu['cpu_model']} ({cpu['isa']}), {result['precision']}"
    cv2.imwrite(str(out.with_suffix(".png")), draw(result["runs"], title)[:, :, ::-1])
    log(f"wrote {out} and {out.with_suffix('.png')}")


def merge(paths: list[Path], out: Path) -> int:
    """One result of the runs of several, refused unless they share dataset, CPU and precision; a run of the same
    configuration, budget and seed in a later file replaces the earlier one (a re-run after a change)."""
    results = [{"dataset": "membrane", **json.loads(path.read_text())} for path in paths]  # older files: membrane
    for key in ("dataset", "cpu", "precision"):
        if len({json.dumps(r[key], sort_keys=True) for r in results}) > 1:
            raise SystemExit(f"--merge: the files differ in {key}; merge only runs of one kind")
    merged = {**results[0], "command": [r["command"] for r in results], "merged_from": [p.name for p in paths],
              "runs": list({(run["config"], run["minutes"], run["seed"]): run for r in results for run in r["runs"]}.values())}
    write_result(merged, out)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--membrane", type=Path, default=MEMBRANE)
    parser.add_argument("--dataset", choices=("membrane", "membrane-2x", "rgb"), default="membrane")
    parser.add_argument("--minutes", type=float, nargs="+", default=[2, 5, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config", action="append", default=[], metavar="NAME=ARGS",
                        help="an extra configuration: train options added to the command line")
    parser.add_argument("--configs", nargs="+", help="which configurations run (default: all)")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/unetcli-bench-planner"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "planner.json")
    parser.add_argument("--merge", type=Path, nargs="+", help="result files to combine instead of running")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    env = isa_environment(args.isa)
    if args.dataset == "rgb":
        train_dir, test_dir = split_rgb(args.workdir / "data")
    else:
        train_dir, test_dir = split_membrane(args.membrane, args.workdir / "data")
        if args.dataset == "membrane-2x":
            train_dir, test_dir = scaled_twice((train_dir, test_dir), args.workdir / "data")
    configs = dict(CONFIGS)
    for entry in args.config:
        name, _, extra = entry.partition("=")
        configs[name] = extra.split()
    configs = {name: configs[name] for name in (args.configs or configs)}
    runs = []
    start = load_snapshot()
    for minutes in args.minutes:
        for seed in args.seeds:
            for config, extra in configs.items():
                run_dir = args.workdir / "runs" / args.dataset / f"{config}-{minutes:g}m-seed{seed}"
                row = train_and_score(train_dir, test_dir, run_dir, minutes=minutes, seed=seed, config=config,
                                      extra=extra, env=env)
                runs.append(row)
                log(f"{minutes:g} min seed {seed} {config:8s}: pixel error {row['pixel_error']:.4f}, mean Dice "
                    f"{row['mean_dice']:.4f} (--tta {row['tta']['pixel_error']:.4f}), {row['epochs_done']} epochs in {row['train_wall_s']:.0f} s, {row['options']}")
                # after every run, so that a benchmark stopped part-way keeps the rows it finished
                write_result(results(args, start, runs), args.out)
    return 0


def results(args: argparse.Namespace, start: dict, runs: list[dict]) -> dict:
    return {"command": "python benchmarks/bench_planner.py " + " ".join(sys.argv[1:]), **where_it_ran(args.isa),
            "machine": machine_facts(), "load_start": start, "load_end": load_snapshot(),
            "when": time.strftime("%Y-%m-%d"), "dataset": args.dataset,
            **({"train_slices": "0-24", "test_slices": "25-29"} if args.dataset.startswith("membrane") else
               {"train_pairs": 40, "test_pairs": 10, "generator": "benchmarks/synthetic_rgb.py"}),
            "runs": runs}


if __name__ == "__main__":
    raise SystemExit(main())
