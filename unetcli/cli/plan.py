"""`unetcli plan`: the options `unetcli train` would choose, printed without training. Takes train's flags."""

from __future__ import annotations

import json

from ..errors import UsageError
from .app import app, err_console, out_console, plan_table, run_guarded
from .train import declared_from_options, options_from_command_line


@app.command(epilog="Example: unetcli plan data/ --time-limit 10m   |   unetcli plan data/ --time-limit 1h --encoder resnet34")
@declared_from_options
def plan(**values) -> None:
    """Plan a training run from the data, this device and --time-limit, and print it without training."""
    as_json, quiet = values.pop("as_json"), values.pop("quiet")

    def action():
        from ..planner import wanted
        from ..session import plan_run

        if values.get("resume") is not None:
            raise UsageError("a resumed run keeps its own options: there is nothing to plan")
        options = options_from_command_line(values)
        if not wanted(options):
            raise UsageError("nothing to plan: --no-plan, or every planned option (encoder, decoder width, crop, "
                             "batch size, epochs, samples per epoch, augmentation) is set")
        chosen = plan_run(options)
        if as_json:
            print(json.dumps(chosen.to_dict()))
            return
        out_console.print(plan_table(chosen))
        if not quiet:
            err_console.print("`unetcli train` with the same flags follows this plan (step timings vary a little "
                              "from run to run; the run's run.yaml records what it used); flags you add override it")

    run_guarded(action)
