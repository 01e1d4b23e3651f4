"""What a model takes as input: one description, stored with the model, read everywhere.

Training writes an `InputSpec` into every checkpoint (and the MLflow model's metadata);
evaluate, predict, export and the robustness report read it instead of guessing from config
keys. For beats it names the signal length, sampling rate and the per-beat features
appended after the samples (e.g. R-R intervals); for images the size, channels and
normalisation. Classes are named too: data meets a model by class name (`match_classes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import default_collate

from ecg_experiments.errors import ConfigError

KINDS = ("signal", "image")


@dataclass(frozen=True)
class InputSpec:
    """A model's input: kind, class names and the per-kind shape facts.

    signal: `signal_length` samples at `rate` Hz, then `features` (named values per beat,
    e.g. R-R intervals) appended on every channel: shape [channels, signal_length +
    features], one channel per lead of `leads` (one unnamed channel when empty).
    image: `channels` x `image_size` x `image_size`, normalised with `mean` / `std`.
    """

    kind: str
    class_names: tuple[str, ...]
    signal_length: int | None = None
    rate: float | None = None
    features: tuple[str, ...] = ()
    image_size: int | None = None
    channels: int | None = None
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())
    # signal: the lead of each channel as configured (`data.channels`); () = one lead
    leads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"input kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        for name in ("class_names", "features", "mean", "std", "leads"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def signal_channels(self) -> int:
        """Channels of a beat: one per lead of `leads`, else one."""
        return max(1, len(self.leads))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one input sample (without the batch dimension)."""
        if self.kind == "signal":
            return (self.signal_channels, int(self.signal_length or 0) + self.num_features)
        return (int(self.channels or 3), int(self.image_size or 0), int(self.image_size or 0))

    def describe(self) -> str:
        """A short human description, e.g. '187 samples at 125 Hz + 7 R-R features'."""
        if self.kind == "signal":
            text = f"{self.signal_length}-sample beats"
            if self.leads:
                text += f" of leads {'+'.join(self.leads)}"
            if self.rate:
                text += f" at {self.rate:g} Hz"
            if self.features:
                text += f" + {self.num_features} features ({', '.join(self.features)})"
            return text
        return f"{self.channels}x{self.image_size}x{self.image_size} images"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def check_data(self, data: InputSpec, data_option: str) -> None:
        """Stop before any work when `data` does not give what this model takes."""
        problems = []
        if data.kind != self.kind:
            problems.append(f"{data.kind} input instead of {self.kind} input")
        elif self.kind == "signal":
            if data.signal_length != self.signal_length:
                problems.append(f"{data.signal_length}-sample beats, not {self.signal_length}")
            if self.rate and data.rate and abs(float(data.rate) - float(self.rate)) > 1e-6:
                problems.append(f"beats at {data.rate:g} Hz, not {self.rate:g} Hz")
            if data.leads != self.leads:
                problems.append(f"leads [{', '.join(data.leads) or 'one lead'}] instead of "
                                f"[{', '.join(self.leads) or 'one lead'}]")
            if data.features != self.features:
                problems.append(f"features [{', '.join(data.features)}] instead of "
                                f"[{', '.join(self.features)}]")
        else:
            if data.image_size != self.image_size or data.channels != self.channels:
                problems.append(f"{data.describe()} instead of {self.describe()}")
        if problems:
            raise ConfigError(
                f"{data_option} does not fit the model: it gives {'; '.join(problems)} (the "
                f"model takes {self.describe()}); choose data made the way the model's were"
            )


def split_features(x: torch.Tensor, num_features: int) -> tuple[torch.Tensor,
                                                                 torch.Tensor | None]:
    """Beats [batch, channels, length + num_features] → (signal [batch, channels, length],
    features [batch, num_features] or None). One tensor keeps export, predict and MLflow
    signatures simple; everything that treats the signal as a waveform splits the features
    off first. Every channel carries the same features; those of the first are read."""
    if num_features == 0:
        return x, None
    return x[..., :-num_features], x[:, 0, -num_features:]


def on_signal(x: torch.Tensor, num_features: int,
              transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a waveform `transform` (noise, shift, scaling) to the samples only; appended
    features pass through unchanged."""
    signal, features = split_features(x, num_features)
    out = transform(signal)
    if features is None:
        return out
    copies = features.unsqueeze(1).expand(-1, out.shape[1], -1)
    return torch.cat([out, copies.to(out.dtype)], dim=-1)


def match_classes(
    model_classes: Sequence[str], data_classes: Sequence[str],
    class_map: Mapping[str, str] | None = None, data_option: str = "the data",
) -> list[int]:
    """For each data class (in the data's label order) the index of the model output with the
    same name: classes meet by name, never by position.

    `class_map` renames data classes to model classes on purpose ({data name: model name}).
    A data class the model does not know stops the run with both lists; model classes the
    data lacks are fine (they get no support).
    """
    class_map = dict(class_map or {})
    unknown_keys = sorted(set(class_map) - set(data_classes))
    if unknown_keys:
        raise ConfigError(f"class_map names {', '.join(unknown_keys)}, which {data_option} does "
                          f"not have (its classes: {', '.join(data_classes)})")
    names = [class_map.get(name, name) for name in data_classes]
    index = {name: k for k, name in enumerate(model_classes)}
    missing = [name for name in names if name not in index]
    if missing:
        raise ConfigError(
            f"{data_option} has classes the model does not know: {', '.join(missing)}. "
            f"Model classes: [{', '.join(model_classes)}]; data classes: "
            f"[{', '.join(data_classes)}]. Classes are matched by name; for a deliberate "
            "rename give class_map={data name: model name}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"class_map maps two data classes to one model class: {names}")
    return [index[name] for name in names]


class RemapLabels:
    """A collate function that turns the data's labels into the model's (by `match_classes`);
    a class, not a closure, so loader workers can pickle it."""

    def __init__(self, lookup: Sequence[int], collate: Callable | None = None) -> None:
        self.lookup = torch.as_tensor(list(lookup), dtype=torch.long)
        self.collate = collate

    def __call__(self, batch: Any) -> Any:
        x, y = (self.collate or default_collate)(batch)
        return x, self.lookup[y]
