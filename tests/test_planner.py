"""The planner (issue 12): the data's fingerprint, the choice rules on a fixed clock, and `unetcli plan` / a planned
`unetcli train` on real files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml
from helpers import cli, ok, user_error, write_binary_dataset

from unetcli.errors import UsageError
from unetcli.fingerprint import Fingerprint, typical_object_diameter
from unetcli.options import TrainOptions
from unetcli.planner import CANDIDATES, ENOUGH_CROPS, WIDE_DECODER_CROPS, Probe, make_plan, plan_batch, plan_crop, short_run_batch, training_rate
from unetcli.runtime import PeakMemory, pick_precision


def discs(diameter: int, count: int = 6, size: int = 256) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for i in range(count):
        centre = (40 + (i % 3) * 80, 50 + (i // 3) * 100)
        cv2.circle(mask, centre, diameter // 2, 1, -1)
    return mask


def test_typical_object_diameter_is_the_size_of_the_objects_not_of_the_specks():
    mask = discs(40)
    for x in range(0, 250, 10):  # 25 specks of 2x2 pixels and a sliver at the border
        mask[250:252, x:x + 2] = 1
    mask[:, :3] = 1
    assert typical_object_diameter([mask]) == pytest.approx(40, rel=0.1)
    assert typical_object_diameter([np.zeros((32, 32), np.uint8)]) is None


def fingerprint(diameter, smallest=512, pairs=20, val_pixels=4 * 512 * 512) -> Fingerprint:
    return Fingerprint(pairs=pairs, channels=1, median_size=(smallest, smallest), smallest_side=smallest,
                       class_shares=(0.7, 0.3), object_diameter=diameter, val_pixels=val_pixels)


@pytest.mark.parametrize(("diameter", "smallest", "crop"), [(83, 512, 256), (10, 512, 128), (300, 2000, 512),
                                                             (60, 150, 160), (None, 512, 256), (None, 100, 128)])
def test_crop_holds_about_three_objects_and_fits_the_images(diameter, smallest, crop):
    assert plan_crop(fingerprint(diameter, smallest))[0] == crop


def fixed_clock(rates: dict[str, float], bytes_per_crop: dict[str, float] | None = None, probed: list | None = None,
                speedup=None):
    """A timer that reports the given crops/s per encoder+decoder instead of timing anything (x speedup(batch) if
    given), and a step's memory as bytes_per_crop x batch (None: not measured); `probed` collects (model, batch)."""
    def timer(candidate, *, batch, **_):
        if probed is not None:
            probed.append((candidate.name, batch))
        peak = bytes_per_crop[candidate.name] * batch if bytes_per_crop else None
        return Probe(rates[candidate.name] * (speedup(batch) if speedup else 1), peak)
    return timer


def plan_for(options: TrainOptions, rates: dict[str, float], fp: Fingerprint | None = None, device: str = "cpu",
             **clock):
    import torch

    cpu = torch.device("cpu")  # a "cuda" device here is only a name: the fake clock times nothing
    return make_plan(fp or fingerprint(83), options, device=torch.device(device), precision=pick_precision("fp32", cpu),
                     out_channels=1, timer=fixed_clock(rates, **clock))


SLOW = {"resnet34, decoder 256": 1.1, "resnet18, decoder 256": 1.6, "resnet18, decoder 128": 2.8}  # AVX2 laptop
FAST = {"resnet34, decoder 256": 13.0, "resnet18, decoder 256": 20.0, "resnet18, decoder 128": 30.0}  # AMX


def test_a_slow_device_gets_the_fastest_model_and_a_fast_one_the_largest():
    slow = plan_for(TrainOptions(time_limit=600.0), SLOW)
    assert (slow.choices["encoder"], slow.choices["decoder_width"]) == ("resnet18", 128)
    assert plan_for(TrainOptions(time_limit=120.0), SLOW).choices["augment"] == "light"  # few passes
    fast = plan_for(TrainOptions(time_limit=600.0), FAST)
    assert (fast.choices["encoder"], fast.choices["decoder_width"]) == ("resnet34", 256)
    assert fast.choices["epochs"] * fast.choices["samples_per_epoch"] * (256 / 256) ** 2 >= ENOUGH_CROPS
    # even at the smallest's rate the middle one would be short of its minimum: neither larger one was timed
    assert list(slow.throughput) == [CANDIDATES[-1].name]
    assert len(fast.throughput) == len(CANDIDATES)
    assert "too few for a larger model" in slow.reasons["encoder"] and "it needs 4000 of 256 px" in fast.reasons["encoder"]
    # each model its own peak learning rate: 6x the usual for the narrow decoder; light augmentation with it
    assert slow.choices["lr"] == 6 * TrainOptions().lr and "higher peak" in slow.reasons["lr"]
    assert slow.choices["augment"] == "light" and "smallest model" in slow.reasons["augment"]
    assert fast.choices["augment"] == "default"
    assert fast.choices["lr"] == TrainOptions().lr and "the usual peak" in fast.reasons["lr"]


def test_between_few_and_enough_crops_the_middle_model_with_the_wider_decoder():
    middle = plan_for(TrainOptions(time_limit=180.0), FAST)  # about 3000 crops of resnet18 / 256 in 3 minutes
    assert (middle.choices["encoder"], middle.choices["decoder_width"]) == ("resnet18", 256)
    assert f"it needs {WIDE_DECODER_CROPS} of 256 px" in middle.reasons["encoder"] and middle.choices["lr"] == TrainOptions().lr
    # 2 minutes there: about 2000 crops, under the line, so the narrow decoder
    assert plan_for(TrainOptions(time_limit=120.0), FAST).choices["decoder_width"] == 128


def test_a_larger_model_is_timed_only_where_it_could_meet_its_minimum():
    """A larger model is never faster, so one that would fall short of its minimum of crops even at the smaller
    one's rate is not timed: on a slow device a probe costs seconds of the budget."""
    smallest, middle, largest = (c.name for c in reversed(CANDIDATES))
    probed = []
    between = {largest: 2.0, middle: 3.0, smallest: 5.0}  # 10 min: about 2900 crops at 5/s, 1700 at 3/s
    plan_for(TrainOptions(time_limit=600.0), between, probed=probed)
    assert [name for name, _ in probed] == [smallest, middle]  # could have been enough: timed, and it was not
    probed.clear()
    plan_for(TrainOptions(time_limit=180.0), FAST, probed=probed)  # resnet34: at most 20/s, about 3300 of 4000
    assert [name for name, _ in probed] == [smallest, middle]
    probed.clear()
    plan_for(TrainOptions(time_limit=120.0), SLOW, probed=probed)
    assert [name for name, _ in probed] == [smallest]


def test_the_probe_counts_the_fastest_step_not_the_slow_first_ones():
    """The first steps of a fresh model run slower (kernels, allocator), and load elsewhere only slows a step
    down: a probe of one timed step after one warm-up read 8.7-17.5 crops/s for a model that trained at 21-25."""
    import time

    import torch

    class SlowStart(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.calls = torch.nn.Conv2d(1, 1, 3, padding=1), 0

        def forward(self, x):
            self.calls += 1
            if self.calls <= 3:  # the warm-up and the first two timed steps
                time.sleep(0.3)
            return self.conv(x)

    model = SlowStart()
    rate = training_rate(model, crop=32, batch=4, channels=1, out_channels=1, device=torch.device("cpu"),
                         precision=pick_precision("fp32", torch.device("cpu")), steps=3)
    assert model.calls == 4
    assert rate > 4 / 0.05  # the third timed step, milliseconds long, counts; a mean over the three would be 4 / 0.2


@pytest.mark.parametrize("budget", [120.0, 600.0, 3600.0])
@pytest.mark.parametrize("rates", [SLOW, FAST])
def test_the_schedule_fills_the_budget_without_overrunning_it(budget, rates):
    plan = plan_for(TrainOptions(time_limit=budget), rates)
    assert 0.8 * budget <= plan.expected_seconds <= budget
    rate = plan.throughput[f"{plan.choices['encoder']}, decoder {plan.choices['decoder_width']}"]
    expected_epochs = plan.choices["epochs"] // 2  # twice as many are allowed: the clock ends a time-limited run
    assert expected_epochs * plan.choices["samples_per_epoch"] / rate <= budget
    assert plan.choices["samples_per_epoch"] % plan.choices["batch_size"] == 0


def test_validation_is_held_to_a_share_of_the_budget_by_fewer_longer_epochs():
    small_val = plan_for(TrainOptions(time_limit=600.0), SLOW, fingerprint(83, val_pixels=2 * 512 * 512))
    large_val = plan_for(TrainOptions(time_limit=600.0), SLOW, fingerprint(83, val_pixels=60 * 1024 * 1024))
    assert large_val.choices["epochs"] < small_val.choices["epochs"]
    assert plan_for(TrainOptions(), SLOW).choices["epochs"] <= 12  # without --time-limit: the planned count
    assert large_val.choices["samples_per_epoch"] > small_val.choices["samples_per_epoch"]


def test_what_the_user_sets_wins_over_the_plan():
    options = TrainOptions.from_values({"time_limit": 600, "encoder": "resnet34", "crop": 128, "epochs": 5, "lr": 5e-4})
    plan = plan_for(options, SLOW)
    assert plan.choices["encoder"] == "resnet34" and plan.choices["crop"] == 128 and plan.choices["epochs"] == 5
    assert plan.choices["lr"] == 5e-4
    assert plan.reasons["encoder"] == plan.reasons["crop"] == plan.reasons["epochs"] == plan.reasons["lr"] == "set by you"
    assert plan.reasons["decoder_width"] != "set by you"  # planned among the candidates with a resnet34
    applied = plan.apply(options)
    assert (applied.encoder, applied.crop, applied.epochs, applied.lr) == ("resnet34", 128, 5, 5e-4)
    assert applied.samples_per_epoch == plan.choices["samples_per_epoch"]


@pytest.mark.parametrize(("crop", "batch"), [(128, 8), (256, 8), (320, 5), (384, 4), (512, 2)])
def test_larger_crops_come_in_smaller_batches_of_about_the_same_pixels(crop, batch):
    assert plan_batch(crop)[0] == batch


@pytest.mark.parametrize(("crop", "batch"), [(160, 8), (256, 4), (384, 2), (512, 2)])
def test_the_smallest_model_steps_on_half_the_pixels(crop, batch):
    assert short_run_batch(crop, *plan_batch(crop))[0] == batch
    assert short_run_batch(crop, 1, "cut to fit")[1] == "cut to fit"  # a batch cut for memory stays as it was


def test_on_a_cpu_the_smallest_model_gets_twice_the_steps_and_the_others_keep_theirs():
    slow = plan_for(TrainOptions(time_limit=600.0), SLOW)  # resnet18 / 128
    assert slow.choices["batch_size"] == 4 and "more steps for the same crops" in slow.reasons["batch_size"]
    assert slow.choices["samples_per_epoch"] % 4 == 0
    assert plan_for(TrainOptions(time_limit=600.0), FAST).choices["batch_size"] == 8  # resnet34
    assert plan_for(TrainOptions(time_limit=180.0), FAST).choices["batch_size"] == 8  # resnet18 / 256
    assert plan_for(TrainOptions(time_limit=600.0), SLOW, fingerprint(53)).choices["batch_size"] == 8  # 160-px crops
    user_set = plan_for(TrainOptions.from_values({"time_limit": 600, "batch_size": 8}), SLOW)
    assert user_set.choices["batch_size"] == 8 and user_set.reasons["batch_size"] == "set by you"


def test_a_large_crop_gets_its_batch_and_the_probes_time_that_batch():
    probed = []
    plan = plan_for(TrainOptions(time_limit=600.0), FAST, fingerprint(300, smallest=2000), probed=probed)
    assert plan.choices["crop"] == 512 and plan.choices["batch_size"] == 2 and "512 px" in plan.reasons["batch_size"]
    assert {batch for _, batch in probed} == {2}


GB = 2**30


def test_the_batch_shrinks_until_a_step_fits_in_half_the_free_memory(monkeypatch):
    monkeypatch.setenv("UNETCLI_MEMORY_LIMIT", "4G")  # half of it, 2 GB, for a step
    per_crop = {"resnet34, decoder 256": 0.6 * GB, "resnet18, decoder 256": 0.3 * GB, "resnet18, decoder 128": 0.3 * GB}
    probed = []
    plan = plan_for(TrainOptions(time_limit=600.0), FAST, bytes_per_crop=per_crop, probed=probed)
    assert plan.choices["batch_size"] == 4  # 8 crops needed 2.4 GB, 4 need 1.2
    assert "8 needed 2.4 GB" in plan.reasons["batch_size"] and "4.0 GB free" in plan.reasons["batch_size"]
    # resnet34's step at that batch needs more than 2 GB: it is left out, and the reason says so
    assert (plan.choices["encoder"], plan.choices["decoder_width"]) == ("resnet18", 256)
    assert "resnet34, decoder 256 needed 2.4 GB" in plan.reasons["encoder"]  # 4 x 0.6
    assert probed[:2] == [("resnet18, decoder 128", 8), ("resnet18, decoder 128", 4)]  # halved, timed again
    monkeypatch.setenv("UNETCLI_MEMORY_LIMIT", "400M")  # 200 MB for a step: not even one crop of 0.3 GB
    probed.clear()
    short = plan_for(TrainOptions(time_limit=600.0), FAST, bytes_per_crop=per_crop, probed=probed)
    assert short.choices["batch_size"] == 1 and [batch for _, batch in probed] == [8, 4, 2, 1, 1]  # + the next model
    assert short.choices["decoder_width"] == 128 and "resnet18, decoder 256 needed 307.2 MB" in short.reasons["encoder"]
    assert short.reasons["batch_size"].startswith("1 crop per step") and "a smaller --crop" in short.reasons["batch_size"]


def test_a_batch_the_user_sets_is_kept_even_where_memory_is_short(monkeypatch):
    monkeypatch.setenv("UNETCLI_MEMORY_LIMIT", "1G")
    per_crop = dict.fromkeys(FAST, 0.5 * GB)
    plan = plan_for(TrainOptions.from_values({"time_limit": 600, "batch_size": 8}), FAST, bytes_per_crop=per_crop)
    assert plan.choices["batch_size"] == 8 and plan.reasons["batch_size"] == "set by you"
    # a step of any model needs 4 GB: the smallest is the fallback, the next is left out for memory
    assert plan.choices["decoder_width"] == 128 and "needed 4.0 GB" in plan.reasons["encoder"]
    assert "too few" not in plan.reasons["encoder"]  # memory, not the crops, left the larger models out


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="the resident-set peak is read on Linux")
def test_on_a_gpu_the_batch_grows_while_it_trains_faster_and_fits(monkeypatch):
    import unetcli.runtime

    free = {"bytes": 80 * GB}
    monkeypatch.setattr(unetcli.runtime, "free_memory", lambda device: free["bytes"])
    gpu = {name: 40 * rate for name, rate in FAST.items()}
    per_crop = dict.fromkeys(FAST, 0.5 * GB)
    saturates_at_32 = lambda batch: min(batch, 32) / 8
    probed = []
    plan = plan_for(TrainOptions(time_limit=300.0), gpu, device="cuda", probed=probed, speedup=saturates_at_32,
                    bytes_per_crop=per_crop)
    assert plan.choices["batch_size"] == 32  # 64 trained no more crops per second than 32
    assert probed[:4] == [("resnet18, decoder 128", batch) for batch in (8, 16, 32, 64)]
    assert {batch for _, batch in probed[4:]} == {32}  # the larger candidates are timed at the grown batch
    assert plan.reasons["batch_size"] == "32 crops per step: this GPU trained 4800 crops/s with 32, 1200 with 8"
    free["bytes"] = 20 * GB  # half of it, 10 GB, holds 20 crops of 0.5 GB: 16, not 32
    assert plan_for(TrainOptions(time_limit=300.0), gpu, device="cuda", speedup=saturates_at_32,
                    bytes_per_crop=per_crop).choices["batch_size"] == 16
    probed.clear()  # a CPU is not tried: per crop a larger batch is no faster there
    assert plan_for(TrainOptions(time_limit=300.0), FAST, probed=probed, speedup=saturates_at_32).choices["batch_size"] == 8
    assert {batch for _, batch in probed} == {8}
    user_set = plan_for(TrainOptions.from_values({"time_limit": 300, "batch_size": 8}), gpu, device="cuda",
                        speedup=saturates_at_32, bytes_per_crop=per_crop)
    assert user_set.choices["batch_size"] == 8 and user_set.reasons["batch_size"] == "set by you"


def test_peak_memory_sees_what_a_block_adds_and_frees():
    import torch

    with PeakMemory(torch.device("cpu")) as memory:
        block = np.ones(200 * 2**20, np.uint8)  # 200 MB, every page touched
        del block
    assert 190 * 2**20 <= memory.peak <= 260 * 2**20, memory.peak
    with PeakMemory(torch.device("cpu")) as quiet:
        pass
    assert quiet.peak < 20 * 2**20  # the peak was reset: the 200 MB before is not counted again


def test_unetcli_plan_measures_a_real_step_and_cuts_the_batch_to_fit(planner_data):
    """A real probe in a fresh process (its peak resident memory is the measure) with little memory to spare."""
    env = {**os.environ, "UNETCLI_MEMORY_LIMIT": "64M"}
    done = subprocess.run([sys.executable, "-m", "unetcli", "plan", str(planner_data), "--time-limit", "2m", "--json"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    # 32 MB for a step: no real model's step fits, so the batch is halved to 1 and the plan says to lower the crop
    assert plan["choices"]["batch_size"] == 1, plan["reasons"]
    assert "8 needed" in plan["reasons"]["batch_size"] and "even 1 needs" in plan["reasons"]["batch_size"]
    # resnet18's weights, gradients and two AdamW moments alone are about 180 MB: a probe that reuses memory
    # an earlier one left (no malloc_trim) read 81-124 MB here
    assert float(re.search(r"even 1 needs ([0-9.]+) MB", plan["reasons"]["batch_size"]).group(1)) >= 150


def test_a_budget_too_short_to_plan_is_refused():
    with pytest.raises(UsageError, match="too short to plan"):
        plan_for(TrainOptions(time_limit=20.0), FAST)


@pytest.fixture(scope="module")
def planner_data(tmp_path_factory):
    return write_binary_dataset(tmp_path_factory.mktemp("plan") / "data", count=8, size=(96, 128))


def test_unetcli_plan_prints_the_plan_as_json_and_as_a_table(planner_data):
    data = json.loads(ok(cli("plan", planner_data, "--time-limit", "2m", "--json")).stdout)
    assert set(data["choices"]) == {"encoder", "decoder_width", "crop", "batch_size", "epochs", "samples_per_epoch",
                                    "augment", "lr"}
    assert data["budget_seconds"] == 120 and 0 < data["expected_seconds"] <= 120
    assert data["predict_tile"] == max(4 * data["choices"]["crop"], 1024)  # the tile the model will predict with
    assert data["fingerprint"]["pairs"] == 6  # two of the eight pairs are held out for validation
    table = ok(cli("plan", planner_data, "--time-limit", "2m", "--crop", "64")).stdout
    assert "--crop" in table and "set by you" in table and "2m00s budget" in table and "predict --tile" in table


def test_unetcli_plan_refuses_a_bad_budget_and_a_resume(planner_data, tmp_path):
    user_error(cli("plan", planner_data, "--time-limit", "10s"), 2, "too short to plan")
    user_error(cli("plan", planner_data, "--no-plan"), 2, "nothing to plan")
    user_error(cli("plan", planner_data, "--resume", tmp_path), 2, "nothing to plan")


def test_a_planned_train_uses_and_records_the_plan(planner_data, tmp_path):
    run = tmp_path / "run"
    result = ok(cli("train", planner_data, "-o", run, "--crop", "64", "--epochs", "1", "--samples-per-epoch", "8"))
    assert "plan:" in result.stderr and "set by you" in result.stderr
    recorded = yaml.safe_load((run / "run.yaml").read_text())
    assert recorded["crop"] == 64 and recorded["epochs"] == 1 and recorded["plan"] is True
    assert (recorded["encoder"], recorded["decoder_width"]) in {(c.encoder, c.decoder_width) for c in CANDIDATES}
    config = json.loads((run / "model-last" / "config.json").read_text())
    assert config["encoder_name"] == recorded["encoder"] and config["decoder_channels"][0] == recorded["decoder_width"]
    # the run's run.yaml retrains it exactly: every option is given, nothing is planned again
    again = ok(cli("train", "--config", run / "run.yaml", "-o", tmp_path / "again"))
    assert "plan:" not in again.stderr


def test_object_id_masks_get_the_border_weight_map_unless_the_user_says_otherwise():
    import dataclasses

    fp = dataclasses.replace(fingerprint(40), instances=True)
    assert plan_for(TrainOptions(time_limit=600.0), SLOW, fp).choices["border_weight"] is True
    assert "border_weight" not in plan_for(TrainOptions(time_limit=600.0), SLOW).choices
    off = plan_for(TrainOptions.from_values({"time_limit": 600, "border_weight": False}), SLOW, fp)
    assert off.choices["border_weight"] is False and off.reasons["border_weight"] == "set by you"
