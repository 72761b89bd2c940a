"""Plan a training run from the data, this device and the time budget.

A few explicit rules over a small table of candidates, not a search (docs/decisions.md says what each rests on):
- crop: about three typical objects across (median connected-component diameter of the non-background
  classes), 128..512 pixels, no larger than the images;
- model: timed on this device (training steps at the planned crop, batch and the precision `auto` picks: the
  fastest of PROBE_STEPS after a warm-up), from the smallest candidate up; the largest that trains on at least its
  own minimum of crops within the budget and whose step fits in memory (the smallest has no minimum, so it is the
  fallback). A larger candidate is not timed when even the smaller one's rate would leave it short of its minimum;
- batch: 8 crops of 256 px, or about as many pixels in fewer, larger crops (no fewer than 2); half those pixels
  for the smallest model on a CPU (short runs: more steps, each as fast per crop); fewer when a step
  would need more than half of the memory free when planning (measured by the smallest candidate's probe); on a
  GPU more, doubled while a step still fits and each doubling trains at least GROWTH_GAIN x the crops per second
  (a GPU is far from full at 8 crops of 256 px; a CPU is not, so there it is not tried);
- epochs and samples per epoch: the budget cut into about EPOCHS_TARGET epochs of equal length, so that the
  learning-rate schedule ends when the budget does and every epoch leaves a model-last to resume from (with
  --time-limit twice as many epochs are allowed and the clock ends the run: the schedule follows the clock);
- augmentation: light with the smallest model (it is planned only for short runs) or when the budget allows few
  passes, default otherwise;
- learning rate: each candidate's own peak (the 128-wide decoder learned faster with a higher one);
- the border weight map on for object-id (instances) masks: it separates touching objects.
Options the user sets are kept as they are; the plan fills in the rest.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from .cache import format_bytes
from .errors import UsageError
from .fingerprint import Fingerprint
from .modelmeta import default_tile_size
from .options import TrainOptions

DEFAULT_BUDGET = 15 * 60.0  # seconds: the run planned when no --time-limit is given
MIN_BUDGET = 60.0
EPOCHS_TARGET = 12
FEW_CROPS = 1500  # 256-px crops: under this many, heavy augmentation slows learning: light
WIDE_DECODER_CROPS = 2500  # 256-px crops: under this many the narrow decoder learned faster (docs/decisions.md)
ENOUGH_CROPS = 4000  # 256-px crops: on membrane more did not buy quality (shipped model: 75 min, same error)
CLOCK_HEADROOM = 2  # with --time-limit, planned epochs x this: the learning rate follows the clock there
VALIDATION_SHARE = 0.15  # at most this share of the budget goes to validation
PIXELS_PER_STEP = 8 * 256 * 256  # the batch every rule here was measured with: 8 crops of 256 px
SHORT_RUN_PIXELS_PER_STEP = 4 * 256 * 256  # the smallest model on a CPU: as fast per crop, twice the steps
STEP_MEMORY_SHARE = 0.5  # of the memory free when planning, at most this for a training step (the rest: data, OS)
GROWTH_GAIN = 1.5  # on a GPU the batch doubles while crops/s rises at least this much with it (steps/s >= 0.75x)
MAX_BATCH = 64
PROBE_STEPS = 3  # timed steps per candidate (after one warm-up); the fastest one counts (docs/decisions.md)
PLANNED = ("encoder", "decoder_width", "crop", "batch_size", "samples_per_epoch", "epochs", "augment", "lr")


def wanted(options: TrainOptions) -> bool:
    """Plan unless --no-plan, a resumed run (it keeps its options) or every planned option set by the user."""
    return options.plan and not options.resume and not set(PLANNED) <= options.set_by_user


@dataclass(frozen=True)
class Candidate:
    encoder: str
    decoder_width: int
    min_crops: int  # 256-px crops the budget must train on for this model to be chosen (docs/decisions.md)
    lr: float = TrainOptions.lr  # peak learning rate

    @property
    def name(self) -> str:
        return f"{self.encoder}, decoder {self.decoder_width}"


# largest first; resnet34 only where more crops stop paying, resnet18 / 256 once the run is past its first few
# passes (the 128-wide decoder gained nothing on membrane at 10 min with 2800 crops), the smallest else, with 6x
# the usual peak learning rate (better on membrane at 2 and 5 min; resnet18 / 256 was worse with 4x on RGB)
CANDIDATES = (Candidate("resnet34", 256, ENOUGH_CROPS), Candidate("resnet18", 256, WIDE_DECODER_CROPS),
              Candidate("resnet18", 128, 0, lr=6e-3))
SMALLEST = CANDIDATES[-1]


def plan_crop(fp: Fingerprint) -> tuple[int, str]:
    largest = max(128, -(-fp.smallest_side // 32) * 32)
    if fp.object_diameter is None:
        return min(256, largest), "no objects found in the masks: the usual 256"
    crop = int(np.clip(round(3 * fp.object_diameter / 32) * 32, 128, 512))
    crop = min(crop, largest)
    return crop, f"objects about {fp.object_diameter:.0f} px across: about three per crop side"


@dataclass
class Plan:
    """The chosen options, each with its reason, and what the run is expected to take."""

    choices: dict
    reasons: dict
    budget: float
    expected_seconds: float
    throughput: dict  # candidate name -> crops per second measured here
    fingerprint: Fingerprint
    device: str
    precision: str

    @property
    def tile(self) -> int:
        """predict's default tile size for the trained model: it follows the crop."""
        return default_tile_size(self.choices["crop"])

    def apply(self, options: TrainOptions) -> TrainOptions:
        """The options with the plan filled in wherever the user did not set a value."""
        return dataclasses.replace(options, **{k: v for k, v in self.choices.items() if k not in options.set_by_user})

    def to_dict(self) -> dict:
        return {"choices": self.choices, "reasons": self.reasons, "budget_seconds": round(self.budget, 1),
                "expected_seconds": round(self.expected_seconds, 1),
                "throughput": {k: round(v, 3) for k, v in self.throughput.items()},
                "fingerprint": dataclasses.asdict(self.fingerprint), "device": self.device, "precision": self.precision,
                "predict_tile": self.tile}


def plan_batch(crop: int, pixels: int = PIXELS_PER_STEP) -> tuple[int, str]:
    """About `pixels` per step (by default those of 8 crops of 256 px), 2 to 8 crops: larger crops, fewer of them (as
    nnU-Net's batch of 2 large patches), so that a step's memory and the number of steps in a budget stay as measured."""
    batch = max(2, min(8, round(pixels / crop ** 2)))
    if batch == 8:
        return batch, "8 crops per step"
    return batch, f"{batch} crops of {crop} px per step: about the pixels of {pixels // 256 ** 2} of 256 px, in memory and time"


def short_run_batch(crop: int, batch: int, reason: str) -> tuple[int, str]:
    """The smallest model's batch on a CPU: the pixels of 4 crops of 256 px, not 8. It is planned for short runs,
    where the number of steps limits learning, and a CPU trains as many crops per second in steps of 4 as of 8
    (docs/decisions.md); a batch already cut to fit in memory stays cut."""
    short, _ = plan_batch(crop, SHORT_RUN_PIXELS_PER_STEP)
    if short >= batch:
        return batch, reason
    return short, (f"{short} crops of {crop} px per step: a short run, so more steps for the same crops "
                   "(a CPU trains as many crops per second in smaller steps)")


@dataclass(frozen=True)
class Probe:
    """What a candidate's timed training steps measured."""

    rate: float  # crops per second
    peak_bytes: int | None = None  # memory the model, its optimiser and a step added at their peak; None: unknown

    def fits(self, memory: float) -> bool:
        return self.peak_bytes is None or self.peak_bytes <= memory


def time_steps(candidate: Candidate, *, crop: int, batch: int, channels: int, out_channels: int, device,
               precision, steps: int = PROBE_STEPS) -> Probe:
    """Crops per second of the fastest of `steps` timed training steps (after one untimed) of `candidate` on this
    device, and the memory they took. Timed at the planned batch: on CPU, batches of 2 ran up to 1.7x slower per
    crop than batches of 8 at 160-px crops."""
    import torch

    from .model import build_model
    from .runtime import PeakMemory

    with PeakMemory(device) as memory:
        torch.manual_seed(0)
        model = build_model(candidate.encoder, channels, out_channels, decoder_width=candidate.decoder_width)
        rate = training_rate(model, crop=crop, batch=batch, channels=channels, out_channels=out_channels,
                             device=device, precision=precision, steps=steps)
    return Probe(rate, memory.peak)


def training_rate(model, *, crop: int, batch: int, channels: int, out_channels: int, device, precision,
                  steps: int) -> float:
    """Crops per second of the fastest of `steps` timed AdamW training steps of `model` (after one untimed) on
    random crops. The fastest, not the mean: the first steps of a fresh model run slower while the kernels and the
    allocator warm up, and a moment of load elsewhere on the machine only ever slows a step down."""
    import torch

    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, crop, crop, device=device).contiguous(memory_format=memory_format)
    y = torch.rand(batch, out_channels, crop, crop, device=device)

    def step():
        with precision.autocast(device):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed() -> float:
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()
    return batch / min(timed() for _ in range(steps))


def _candidates(options: TrainOptions) -> list[Candidate]:
    """The table's candidates that agree with the encoder / decoder width the user set (or that one model)."""
    fixed = options.set_by_user
    keep = [c for c in CANDIDATES if ("encoder" not in fixed or c.encoder == options.encoder)
            and ("decoder_width" not in fixed or c.decoder_width == options.decoder_width)]
    return keep or [Candidate(options.encoder, options.decoder_width, 0)]


@dataclass(frozen=True)
class Schedule:
    """How a budget is spent with one candidate."""

    epochs: int
    samples_per_epoch: int
    crops: int  # crops trained on in all
    seconds: float  # expected duration: training, validation and saves
    validation_seconds: float  # per epoch


def schedule(fp: Fingerprint, options: TrainOptions, *, rate: float, crop: int, batch: int, budget: float) -> Schedule:
    """Epochs and samples per epoch that fill `budget` at `rate` crops per second, with validation (a forward
    pass costs about a third of a training step per pixel) held to VALIDATION_SHARE of the budget."""
    fixed = options.set_by_user
    validation = fp.val_pixels / (3 * rate * crop * crop) + 1.0  # + a model-last/model-best save
    epochs = options.epochs if "epochs" in fixed else max(2, min(EPOCHS_TARGET, int(VALIDATION_SHARE * budget / validation)))
    crops = max(batch, int(rate * (budget - epochs * validation)))
    if "samples_per_epoch" in fixed:
        per_epoch = options.samples_per_epoch
        if "epochs" not in fixed:
            epochs = max(1, crops // per_epoch)
    else:
        per_epoch = max(fp.pairs, batch, crops // epochs // batch * batch)
    total = per_epoch * epochs
    return Schedule(epochs, per_epoch, total, total / rate + epochs * validation, validation)


def equivalent_crops(schedule_: Schedule, crop: int) -> float:
    return schedule_.crops * (crop / 256) ** 2


def enough(candidate: Candidate, schedule_: Schedule, crop: int) -> bool:
    return equivalent_crops(schedule_, crop) >= candidate.min_crops


def choose(rates: dict[Candidate, float], schedules: dict[Candidate, Schedule], crop: int, *, alone: bool = False,
           too_large: str = "") -> tuple[Candidate, str]:
    """The largest candidate timed that trains on its min_crops (in 256-px crop equivalents), else the fastest;
    with the reason's wording (the crop count is filled in once the final schedule is known). `alone`: the user's
    options leave one candidate; `too_large`: why the next larger one was left out for memory."""
    fine = [c for c in CANDIDATES if c in rates and c.min_crops and enough(c, schedules[c], crop)]
    if fine:
        return fine[0], (f"{{rate:.1f}} crops/s here: {{crops}} crops in the budget, enough for it (it needs "
                         f"{fine[0].min_crops} of 256 px){too_large}")
    best = max(rates, key=lambda c: schedules[c].crops)
    if alone:
        return best, "{rate:.1f} crops/s here: {crops} crops in the budget; the one model that fits what you set"
    if too_large:
        return best, "{rate:.1f} crops/s here: {crops} crops in the budget" + too_large
    return best, "{rate:.1f} crops/s here: {crops} crops in the budget, too few for a larger model: the fastest"


@dataclass
class Probed:
    """What timing the candidates found."""

    rates: dict  # Candidate -> crops per second here
    schedules: dict  # Candidate -> Schedule of the budget left after its probe
    batch: int
    batch_reason: str | None = None  # why the batch was cut to fit in memory
    too_large: str = ""  # the next larger candidate, left out: its step did not fit in memory


def _probe_models(fp: Fingerprint, options: TrainOptions, measure, *, crop: int, batch: int, budget: float,
                  started: float, free: int, grow: bool = False) -> Probed:
    """Time the candidates from the smallest up, stopping at the first short of its minimum of crops (a larger one
    would be slower still and need more), or too large for memory, or short of its minimum even at the rate of
    the one before it (a larger model is never faster: no need to time it); the smallest's probe also fits the
    batch (and with `grow`, on a GPU, grows it)."""
    memory = STEP_MEMORY_SHARE * free
    probed = Probed({}, {}, batch)
    for candidate in reversed(_candidates(options)):
        if probed.schedules and not enough(candidate, list(probed.schedules.values())[-1], crop):
            break  # short of its minimum even at the smaller one's rate: a larger model is never faster
        if probed.rates or "batch_size" in options.set_by_user:
            probe = measure(candidate, probed.batch)
        else:
            probe, probed.batch, probed.batch_reason = _fit_batch(measure, candidate, batch, memory, free)
            if grow and probed.batch_reason is None:
                probe, probed.batch, probed.batch_reason = _grow_batch(measure, candidate, probe, batch, memory)
        if probed.rates and not probe.fits(memory):
            probed.too_large = f"; {candidate.name} needed {_over_memory(probe, free)}"
            break
        probed.rates[candidate] = probe.rate
        left = budget - (time.monotonic() - started)
        probed.schedules[candidate] = schedule(fp, options, rate=probe.rate, crop=crop, batch=probed.batch, budget=left)
        if not enough(candidate, probed.schedules[candidate], crop):
            break
    return probed


def _over_memory(probe: Probe, free: int) -> str:
    return f"{format_bytes(probe.peak_bytes)} at a step's peak, more than half of the {format_bytes(free)} free here"


def _fit_batch(measure, candidate: Candidate, batch: int, memory: float, free: int) -> tuple[Probe, int, str | None]:
    """The candidate's probe at `batch`, or at the batch halved (and timed again) until a step fits in `memory`,
    and why it was cut. Halved rather than scaled: the model and its optimiser take a part that no batch shrinks
    (about 0.7 GB of resnet34's 1.2 GB at 8 crops of 256 px, benchmarks/results/batch.json)."""
    first = probe = measure(candidate, batch)
    fitted = batch
    while not probe.fits(memory) and fitted > 1:
        fitted //= 2
        probe = measure(candidate, fitted)
    if fitted == batch:
        return probe, batch, None
    reason = f"{fitted} crop{'s' * (fitted > 1)} per step: {batch} needed {_over_memory(first, free)}"
    if not probe.fits(memory):
        reason += f"; even 1 needs {format_bytes(probe.peak_bytes)}: a smaller --crop would fit"
    return probe, fitted, reason


def _grow_batch(measure, candidate: Candidate, probe: Probe, batch: int, memory: float) -> tuple[Probe, int, str | None]:
    """The batch doubled (and timed) while a step fits in `memory` and the doubling trains at least GROWTH_GAIN x
    the crops per second, up to MAX_BATCH; why it grew. A GPU trained 8 crops of 256 px at 23 Mpx/s and 32 of
    512 px at 100 (H200, benchmarks/results/gpu_h200_train_*.json): small batches leave most of it idle."""
    first, grown = probe, batch
    while grown * 2 <= MAX_BATCH:
        bigger = measure(candidate, grown * 2)
        if not bigger.fits(memory) or bigger.rate < GROWTH_GAIN * probe.rate:
            break
        probe, grown = bigger, grown * 2
    if grown == batch:
        return probe, batch, None
    return probe, grown, (f"{grown} crops per step: this GPU trained {probe.rate:.0f} crops/s with {grown}, "
                          f"{first.rate:.0f} with {batch}")


def make_plan(fp: Fingerprint, options: TrainOptions, *, device, precision, out_channels: int, timer=time_steps) -> Plan:
    """Fill in what the user left out: crop from the objects, the model from timed steps, the schedule from the budget."""
    from .runtime import free_memory

    budget = options.time_limit or DEFAULT_BUDGET
    if budget < MIN_BUDGET:
        raise UsageError(f"--time-limit {budget:.0f}s is too short to plan a run; give at least {MIN_BUDGET:.0f}s "
                         "(e.g. 5m), or set --no-plan and the options yourself")
    fixed = options.set_by_user
    started = time.monotonic()
    crop, crop_reason = (options.crop, "set by you") if "crop" in fixed else plan_crop(fp)
    batch, batch_reason = (options.batch_size, "set by you") if "batch_size" in fixed else plan_batch(crop)

    def measure(candidate: Candidate, batch_: int) -> Probe:
        return timer(candidate, crop=crop, batch=batch_, channels=fp.channels, out_channels=out_channels,
                     device=device, precision=precision)

    probed = _probe_models(fp, options, measure, crop=crop, batch=batch, budget=budget, started=started,
                           free=free_memory(device), grow=device.type == "cuda")
    batch, batch_reason = probed.batch, probed.batch_reason or batch_reason
    rates, schedules = probed.rates, probed.schedules
    model, model_wording = choose(rates, schedules, crop, alone=len(_candidates(options)) == 1,
                                  too_large=probed.too_large)
    if model == SMALLEST and device.type == "cpu" and "batch_size" not in fixed:
        batch, batch_reason = short_run_batch(crop, batch, batch_reason)
    left = budget - (time.monotonic() - started)  # after every probe
    plan_schedule = schedule(fp, options, rate=rates[model], crop=crop, batch=batch, budget=left)
    model_reason = model_wording.format(rate=rates[model], crops=plan_schedule.crops)
    few = equivalent_crops(plan_schedule, crop) < FEW_CROPS
    light = few or model == SMALLEST
    choices = {"encoder": model.encoder, "decoder_width": model.decoder_width, "crop": crop, "batch_size": batch,
               "epochs": plan_schedule.epochs, "samples_per_epoch": plan_schedule.samples_per_epoch,
               "augment": "light" if light else "default", "lr": model.lr}
    per_epoch = (plan_schedule.seconds / plan_schedule.epochs)
    reasons = {"encoder": model_reason, "decoder_width": model_reason, "crop": crop_reason,
               "batch_size": batch_reason,
               "epochs": f"about {per_epoch:.0f} s each, validation {plan_schedule.validation_seconds:.0f} s of it",
               "samples_per_epoch": f"{plan_schedule.crops} crops in all over the epochs",
               "augment": ("few passes over the data: light" if few else "a short run of the smallest model: light"
                           if light else "enough passes for the default augmentation"),
               "lr": ("the narrow decoder learns faster with a higher peak" if model.lr > TrainOptions.lr
                      else "the usual peak for this model")}
    if fp.instances:
        choices["border_weight"] = True
        reasons["border_weight"] = ("object-id masks: touching pairs came apart 144/144 with the weight map, 95/144 "
                                    "without (docs/decisions.md)")
    if options.time_limit and "epochs" not in fixed:  # the clock ends the run, so a device faster than timed
        choices["epochs"] = CLOCK_HEADROOM * plan_schedule.epochs  # (or a busy probe) still uses the whole budget
        reasons["epochs"] = (f"about {plan_schedule.epochs} fit, about {per_epoch:.0f} s each: up to "
                             f"{choices['epochs']} so that --time-limit, not a count, ends the run")
    for name in fixed & set(choices):
        choices[name], reasons[name] = getattr(options, name), "set by you"
    return Plan(choices, reasons, budget, time.monotonic() - started + plan_schedule.seconds,
                {c.name: r for c, r in rates.items()}, fp, str(device), precision.name)
