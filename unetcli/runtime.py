"""Where the work runs: device, precision, memory, the torchrun environment, and stop signals.

`UNETCLI_PRECISION` (fp32 | bf16 | fp16) sets what `--precision auto` resolves to, for a whole process: e.g.
`UNETCLI_PRECISION=fp32 python -m pytest` runs the suite as a CPU without native bf16 would.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Self

import torch

from .errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_VARIABLE = "UNETCLI_PRECISION"


@dataclass(frozen=True)
class TorchrunEnv:
    """The process's place under torchrun (world 1, rank 0 without it). Read from the environment once per call."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def read(cls) -> TorchrunEnv:
        return cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str = "auto") -> torch.device:
    """auto: the GPU of this torchrun rank (LOCAL_RANK) or the first GPU, else Apple MPS, else the CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", TorchrunEnv.read().local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"--device {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is visible; use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    channels_last: bool

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def check_precision(requested: str) -> str:
    if requested not in PRECISIONS:
        raise UsageError(f"--precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    return requested


def _auto_precision(device: torch.device) -> str:
    forced = os.environ.get(PRECISION_VARIABLE, "").strip()
    if forced:
        if forced not in PRECISIONS[1:]:
            raise UsageError(f"{PRECISION_VARIABLE}={forced!r}: use one of {', '.join(PRECISIONS[1:])} (or unset it)")
        return forced
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def pick_precision(requested: str, device: torch.device) -> Precision:
    """auto: bf16 on CPUs with native bf16 and on GPUs that support it, fp16 on older GPUs, else fp32
    (or what UNETCLI_PRECISION says)."""
    requested = check_precision(requested)
    if requested == "auto":
        requested = _auto_precision(device)
    if requested == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 is for GPUs; on CPU use bf16 (fast on CPUs with AMX/AVX512-BF16) or fp32")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
    # channels_last is what makes bf16 fast on CPU (oneDNN); on GPUs it helps tensor cores too. On CPU it
    # speeds up fp32 as well (resnet34 U-Net, 2 cores: inference 1.5x, a training step 1.35x; with oneDNN
    # limited to AVX2, as on most laptops, 1.24x and 1.15x). fp32 on GPUs keeps the default layout.
    return Precision(requested, dtype, channels_last=dtype is not None or device.type == "cpu")


def _return_free_heap() -> None:
    """Hand the memory the C allocator holds free back to the system (glibc's malloc_trim), so that a block's
    allocations raise the resident set again instead of reusing pages an earlier block left: without it one
    planner probe in six read a batch of 4 crops as under 32 MB, a batch of 8 having read 397 MB just before."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """The memory a block of work adds at its peak, in bytes (None where it cannot be measured): CUDA's allocator
    statistics on a GPU; on Linux the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
    after the C allocator's free memory is handed back; what other allocators keep cached it misses, so it can
    still read low."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.peak = device, None, None

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "cpu":
            from .cache import proc_bytes

            _return_free_heap()
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
                    clear.write("5")
                self.start = proc_bytes("/proc/self/status", "VmRSS")
        return self

    def __exit__(self, *_) -> None:
        if self.start is None:
            return
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            from .cache import proc_bytes

            high = proc_bytes("/proc/self/status", "VmHWM")
            self.peak = None if high is None else max(0, high - self.start)


def free_memory(device: torch.device) -> int:
    """Memory work on `device` may still fill: the GPU's free memory, else the machine's (cache.available_memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    from .cache import available_memory

    return available_memory()


class Distributed:
    """torchrun support: with WORLD_SIZE > 1, one process per rank (gloo on CPU, nccl on GPU). Only rank 0
    validates and writes files; decisions that end the loop are agreed on by all ranks."""

    def __init__(self, device: torch.device):
        env = TorchrunEnv.read()
        self.world, self.rank, self.device = env.world, env.rank, device
        if self.world > 1 and not torch.distributed.is_initialized():
            if device.type == "cuda":
                self.device = torch.device("cuda", env.local_rank)
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sampler(self, dataset, seed: int):
        if self.world == 1:
            return None
        return torch.utils.data.DistributedSampler(dataset, self.world, self.rank, shuffle=True, seed=seed)

    def _tensor(self, value, dtype=None) -> torch.Tensor:
        return torch.tensor([value], dtype=dtype, device=self.device if self.device.type == "cuda" else "cpu")

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on some rank."""
        if self.world == 1:
            return flag
        value = self._tensor(int(flag))
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, value: float) -> float:
        """The mean of `value` over ranks."""
        if self.world == 1:
            return value
        tensor = self._tensor(value, torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def from_main(self, flag: bool) -> bool:
        """Rank 0's value of `flag`, on every rank."""
        if self.world == 1:
            return flag
        value = self._tensor(int(flag))
        torch.distributed.broadcast(value, src=0)
        return bool(value.item())

    def share(self, value):
        """Rank 0's `value` (an object of our own making, pickled between our own processes), on every rank."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class StopRequest:
    """While active, SIGINT/SIGTERM set a flag; the loop finishes its step, saves model-last/ and stops cleanly.
    A second signal stops at once. The previous handlers come back with `restore`."""

    def __init__(self):
        self.requested: str | None = None
        self.previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop at once
            self.restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
