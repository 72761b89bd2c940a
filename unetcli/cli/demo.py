"""`unetcli demo`: the built-in default, from synthetic data to scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import QuietOpt, app, err_console, fmt, out_console, run_guarded, scores_table
from .evaluate import render_evaluation
from .predict import render_predictions
from .train import render_training


@app.command(epilog="Example: unetcli demo /tmp/unetcli-demo")
def demo(
    folder: Annotated[Path, typer.Argument(help="Where to put the demo data, run and predictions.")] = Path("unetcli-demo"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Built-in default: make a synthetic dataset, train a U-Net, predict held-out images, evaluate."""

    def action():
        import time

        from ..data import find_pairs, resolve_layout, split_pairs
        from ..demo import demo_train_options, make_dataset
        from ..evaluate import evaluate_model
        from ..outputs import PredictOptions
        from ..predict import predict_files
        from ..predictor import Predictor
        from ..training import train as run_training

        start = time.monotonic()
        make_dataset(folder / "data", seed=seed)
        options = demo_train_options(folder, seed)
        err_console.print(f"synthetic dataset: {folder / 'data'} (striped shapes on a blotchy ground; same mean brightness)")
        done = render_training(run_training(options), quiet=quiet)
        model_dir = done.run_dir / "model-best"
        # predict the held-out pairs, exactly those training validated on
        _, held_out = split_pairs(find_pairs(*resolve_layout(options.data)), options.val_split, options.seed)
        held = folder / "held-out"
        for sub in ("images", "masks"):
            (held / sub).mkdir(parents=True, exist_ok=True)
        for pair in held_out:
            for source, sub in ((pair.image, "images"), (pair.mask, "masks")):
                target = held / sub / source.name
                target.unlink(missing_ok=True)
                target.symlink_to(source.resolve())
        predictor = Predictor.from_folder(model_dir)
        predictions = folder / "predictions"
        results = predict_files(predictor, [p.image for p in held_out],
                                PredictOptions(out_dir=predictions, save=("mask", "overlay")))
        render_predictions(results, as_json=False, quiet=quiet, total=len(held_out))
        evaluation = render_evaluation(evaluate_model(model_dir, held))
        summary = evaluation.summary()
        out_console.print(scores_table(summary))
        out_console.print(f"model:       {model_dir}\npredictions: {predictions}\n"
                          f"finished in {time.monotonic() - start:.0f} s; foreground Dice "
                          f"{fmt(summary['classes']['foreground']['dice'])} on {len(held_out)} held-out images")

    run_guarded(action)
