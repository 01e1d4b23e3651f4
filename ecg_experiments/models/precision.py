"""Numeric precision and memory format a network trains and infers in.

`trainer.precision` is Lightning's (32-true, bf16-mixed, 16-mixed, ...) plus `auto`: bf16-mixed
on a CPU with native bfloat16 kernels and on a GPU that has them (16-mixed on an older GPU),
32-true otherwise; for every model (measured faster on this CPU for image and signal models
alike: docs/training.md). A request the machine cannot honour falls back with one log
line: bf16 on a CPU without bfloat16 kernels to 32-true (emulated bf16 is slower than float32),
bf16 on a GPU without it to 16-mixed. `model.channels_last` stores 2D models' weights and
inputs channels-last (NHWC), which oneDNN and cuDNN convolutions run faster.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from ecg_experiments.errors import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
FULL = "32-true"
HALF_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16-true", "16-true", "bf16", "16")


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 in native oneDNN kernels (AVX512-BF16, AMX or AVX512
    core). Written here because torch offers the check only as a private operator; an older
    torch without it counts as no."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_gpu(accelerator: str) -> bool:
    accelerator = str(accelerator)
    return accelerator in ("gpu", "cuda") or (accelerator == "auto"
                                                and torch.cuda.is_available())


def resolve_precision(requested: str | int, accelerator: str) -> str:
    """The precision to give Lightning for `requested` on this machine (module docstring)."""
    requested = str(requested)
    gpu = uses_gpu(accelerator)
    if requested == AUTO:
        if gpu:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "bf16-mixed" if cpu_has_bf16() else FULL
    if requested.startswith("bf16"):
        if gpu and not torch.cuda.is_bf16_supported():
            log.warning("trainer.precision=%s: this GPU has no bfloat16; using 16-mixed",
                        requested)
            return "16-mixed"
        if not gpu and not cpu_has_bf16():
            log.warning("trainer.precision=%s: this CPU has no bfloat16 kernels; using "
                        "32-true", requested)
            return FULL
    if requested.startswith("16") and not gpu:  # float16 autocast is a GPU's
        if not cpu_has_bf16():
            log.warning("trainer.precision=%s: float16 needs a GPU and this CPU has no "
                        "bfloat16 kernels; using 32-true", requested)
            return FULL
        log.warning("trainer.precision=%s: float16 needs a GPU; using bf16-mixed on this "
                    "CPU", requested)
        return "bf16-mixed"
    return requested


def check_channels_last(channels_last: bool, input_kind: str | None, model: str) -> None:
    """Channels-last is a layout of 4D tensors: 2D (image) models only."""
    if channels_last and input_kind != "image":
        raise ConfigError(
            f"model.channels_last=true: {model} takes {input_kind or 'non-image'} input "
            "([batch, channels, samples]); channels-last applies to 2D image models only")


def to_channels_last(net: nn.Module) -> nn.Module:
    return net.to(memory_format=torch.channels_last)


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    """A 4D batch in channels-last layout (anything else as it is)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Mixed precision outside Lightning (predict): autocast for *-mixed, nothing else."""
    precision = str(precision)
    device_type = torch.device(device).type
    if precision.endswith("-mixed") and precision != FULL:
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        with torch.autocast(device_type, dtype=dtype):
            yield
    else:
        yield
