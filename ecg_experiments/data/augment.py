"""Signal augmentations for beat batches [batch, channels, length], applied in training only.

Every step works on the whole batch as tensors (on the batch's device). Noise steps scale
their noise to a signal-to-noise ratio drawn per beat from `snr_db` = [low, high], where the
signal power is the beat's variance (its AC power: the zero padding and offset of the
Kaggle-format beats do not count as signal):  SNR = 10 log10(var(beat) / mean(noise^2)).
A beat that is not the signal itself (a template-relative beat: the beat minus its record's
median beat) is given its reference power instead (`signal_power`: the variance of the beat
before the subtraction); the noise is still added to the beat as it is, which equals adding
it before the subtraction (the subtraction is linear).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ecg_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def _uniform(low_high: Sequence[float], n: int, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    low, high = float(low_high[0]), float(low_high[-1])
    return low + (high - low) * torch.rand(n, 1, 1, generator=generator, device=device)


def _power(signal: torch.Tensor, signal_power: torch.Tensor | float | None) -> torch.Tensor:
    """The reference power per beat [n, 1, 1]: `signal_power` (one value, or one per beat)
    when given, else each beat's variance."""
    if signal_power is None:
        return signal.var(dim=(1, 2), keepdim=True, unbiased=False)
    power = torch.as_tensor(signal_power, dtype=signal.dtype, device=signal.device)
    return power.reshape(-1, 1, 1).expand(signal.shape[0], 1, 1)


def scale_to_snr(signal: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor,
                 signal_power: torch.Tensor | float | None = None) -> torch.Tensor:
    """`noise` rescaled per beat so that P / mean(noise^2) is `snr_db` [n, 1, 1], where P is
    `signal_power` (one value or one per beat) or else var(signal)."""
    signal_power = _power(signal, signal_power)
    noise_power = noise.pow(2).mean(dim=(1, 2), keepdim=True).clamp_min(1e-20)
    return noise * torch.sqrt(signal_power / noise_power / 10 ** (snr_db / 10))


def snr_db(signal: torch.Tensor, noisy: torch.Tensor,
           signal_power: torch.Tensor | float | None = None) -> torch.Tensor:
    """The SNR per beat [n] of `noisy` against the clean `signal`, as defined above (against
    `signal_power` when given)."""
    noise_power = (noisy - signal).pow(2).mean(dim=(1, 2))
    return 10 * torch.log10(_power(signal, signal_power).flatten() / noise_power)


def _recipe_option(recipe: Any, name: str, default: Any = None) -> Any:
    if isinstance(recipe, Mapping):
        return recipe.get(name, default)
    return getattr(recipe, name, default)


def reference_power(recipe: Any) -> float | None:
    """The power that noise SNRs are set against for beats cut by `recipe` (a recipe object
    or its config; None: no recipe), when it is not each beat's own variance.

    None unless the recipe subtracts its record's median beat (subtract_template); then the
    variance of the beat before the subtraction, which z-scoring makes 1 for every beat (a
    constant window, left at zero, aside). With another normalisation that power is lost
    once the template is subtracted: a ConfigError says so.
    """
    if recipe is None or not _recipe_option(recipe, "subtract_template", False):
        return None
    normalize = _recipe_option(recipe, "normalize", "zscore")
    if normalize != "zscore":
        raise ConfigError(
            f"data.recipe.subtract_template=true with data.recipe.normalize={normalize}: the "
            "power of a beat before its record's median beat was subtracted is unknown (only "
            "z-scored beats have a known power, 1), so no SNR can be set on it")
    return 1.0


def load_noise_records(paths: Sequence[str], rate: float) -> list[torch.Tensor]:
    """Noise records (MIT-BIH Noise Stress Test format: 'bw', 'em', 'ma') resampled to
    `rate` Hz; every channel becomes one noise source."""
    import wfdb
    from scipy.signal import resample_poly

    from ecg_experiments.data.record_checks import check_header

    sources = []
    for path in paths:
        base = Path(path).with_suffix("") if Path(path).suffix in (".hea", ".dat") else Path(path)
        if not base.with_name(base.name + ".hea").is_file():
            raise DataError(f"{path}: no WFDB noise record (expected {base}.hea and .dat, e.g. "
                            "the NSTDB 'bw', 'em' or 'ma' record)")
        try:
            check_header(wfdb.rdheader(str(base)), base.with_name(base.name + ".hea"))
            record = wfdb.rdrecord(str(base))
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{path}: cannot read the noise record with wfdb ({err}); expected "
                            "a WFDB record (.hea and .dat)") from err
        up, down = int(round(rate * 1000)), int(round(record.fs * 1000))
        divisor = math.gcd(up, down)
        for channel in record.p_signal.T:
            resampled = resample_poly(channel - channel.mean(), up // divisor, down // divisor)
            sources.append(torch.as_tensor(resampled, dtype=torch.float32))
        log.info("noise record %s: %d channel(s), %.0f s", base.name, record.n_sig,
                 record.sig_len / record.fs)
    return sources


@dataclass
class SignalAugment:
    """Random training-time corruptions of beat batches; each step has a probability p.

    gaussian: white noise at `gaussian_snr_db`; baseline: a sinusoid of `baseline_hz`
    (baseline wander) at `baseline_snr_db`; powerline: `powerline_hz` mains hum at
    `powerline_snr_db`; scale: amplitude x `scale_range`; shift: a circular shift of up to
    `max_shift` samples; records: segments of real noise records (`noise_records`, NSTDB
    format) at `records_snr_db`. `rate` is the beats' sampling rate.
    """

    rate: float = 125.0
    gaussian_p: float = 0.0
    gaussian_snr_db: Sequence[float] = (12.0, 24.0)
    baseline_p: float = 0.0
    baseline_snr_db: Sequence[float] = (6.0, 18.0)
    baseline_hz: Sequence[float] = (0.1, 0.5)
    powerline_p: float = 0.0
    powerline_snr_db: Sequence[float] = (12.0, 24.0)
    powerline_hz: float = 50.0
    scale_p: float = 0.0
    scale_range: Sequence[float] = (0.8, 1.2)
    shift_p: float = 0.0
    max_shift: int = 5
    records_p: float = 0.0
    records_snr_db: Sequence[float] = (6.0, 18.0)
    noise_records: Sequence[str] = ()
    seed: int | None = None
    _sources: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("gaussian_p", "baseline_p", "powerline_p", "scale_p", "shift_p", "records_p"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"data.augment.{name}={value}: expected a probability in [0, 1]")
        if self.powerline_hz >= self.rate / 2:
            raise ConfigError(f"data.augment.powerline_hz={self.powerline_hz}: above the Nyquist "
                              f"frequency of {self.rate / 2:g} Hz at rate {self.rate:g}")
        if self.records_p > 0 and not self.noise_records:
            raise ConfigError("data.augment.records_p > 0 needs data.augment.noise_records "
                              "(paths of NSTDB-format noise records, e.g. .../nstdb/ma)")
        self.generator = None
        if self.seed is not None:
            self.generator = torch.Generator().manual_seed(int(self.seed))

    def _chosen(self, p: float, n: int, device: torch.device) -> torch.Tensor:
        return (torch.rand(n, 1, 1, generator=self.generator) < p).to(device)

    def _add(self, x: torch.Tensor, noise: torch.Tensor, p: float, snr: Sequence[float],
             power: torch.Tensor | None) -> torch.Tensor:
        n = x.shape[0]
        target = _uniform(snr, n, self.generator, torch.device("cpu")).to(x.device)
        scaled = scale_to_snr(x, noise, target, power)
        return x + scaled * self._chosen(p, n, x.device)

    def _time(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arange(x.shape[-1], device=x.device, dtype=x.dtype) / self.rate

    def __call__(self, x: torch.Tensor,
                 signal_power: torch.Tensor | float | None = None) -> torch.Tensor:
        """The batch `x` with the steps applied. Noise SNRs are set against each beat's
        variance, or against `signal_power` (one value or one per beat: the power of the
        beat before a template subtraction), which scaling scales with the beat."""
        n, _, length = x.shape
        device = x.device
        cpu = torch.device("cpu")
        power = None if signal_power is None else _power(x, signal_power).clone()
        if self.scale_p > 0:
            factor = _uniform(self.scale_range, n, self.generator, cpu).to(device)
            chosen = self._chosen(self.scale_p, n, device)
            x = torch.where(chosen, x * factor, x)
            if power is not None:
                power = torch.where(chosen, power * factor ** 2, power)
        if self.shift_p > 0 and self.max_shift > 0:
            shift = torch.randint(-self.max_shift, self.max_shift + 1, (n, 1, 1),
                                  generator=self.generator).to(device)
            shift = shift * self._chosen(self.shift_p, n, device)
            index = (torch.arange(length, device=device).view(1, 1, -1) - shift) % length
            x = torch.gather(x, 2, index.expand_as(x))
        if self.gaussian_p > 0:
            noise = torch.randn(x.shape, generator=self.generator).to(device)
            x = self._add(x, noise, self.gaussian_p, self.gaussian_snr_db, power)
        if self.baseline_p > 0:
            hz = _uniform(self.baseline_hz, n, self.generator, cpu).to(device)
            phase = (2 * math.pi * torch.rand(n, 1, 1, generator=self.generator)).to(device)
            noise = torch.sin(2 * math.pi * hz * self._time(x) + phase).expand_as(x)
            x = self._add(x, noise, self.baseline_p, self.baseline_snr_db, power)
        if self.powerline_p > 0:
            phase = (2 * math.pi * torch.rand(n, 1, 1, generator=self.generator)).to(device)
            noise = torch.sin(2 * math.pi * self.powerline_hz * self._time(x) + phase)
            x = self._add(x, noise.expand_as(x), self.powerline_p, self.powerline_snr_db,
                          power)
        if self.records_p > 0:
            x = self._add(x, self.record_noise(x.shape).to(device), self.records_p,
                          self.records_snr_db, power)
        return x

    def record_noise(self, shape: torch.Size) -> torch.Tensor:
        """Random segments of the noise records, shaped like the batch."""
        if not self._sources:
            self._sources = load_noise_records(self.noise_records, self.rate)
        n, channels, length = shape
        pick = torch.randint(len(self._sources), (n,), generator=self.generator)
        out = torch.empty(n, channels, length)
        for k, source in enumerate(self._sources):  # a loop over sources, not over beats
            rows = torch.nonzero(pick == k).flatten()
            if len(rows) == 0:
                continue
            if len(source) < length:
                raise DataError(f"noise record {k}: shorter than one beat ({length} samples)")
            start = torch.randint(len(source) - length + 1, (len(rows),), generator=self.generator)
            index = start.view(-1, 1) + torch.arange(length).view(1, -1)
            out[rows] = source[index].unsqueeze(1).expand(-1, channels, -1)
        return out


def add_noise_at_snr(x: torch.Tensor, snr: float, kind: str = "gaussian",
                     noise_records: Sequence[str] = (), rate: float = 125.0,
                     seed: int = 0,
                     signal_power: torch.Tensor | float | None = None) -> torch.Tensor:
    """`x` with one kind of noise (gaussian | baseline | powerline | records) added at exactly
    `snr` dB to every beat (for robustness evaluation; seeded), against each beat's variance
    or `signal_power` (one value or one per beat)."""
    fixed = [float(snr), float(snr)]
    options = {"gaussian": {"gaussian_p": 1.0, "gaussian_snr_db": fixed},
               "baseline": {"baseline_p": 1.0, "baseline_snr_db": fixed},
               "powerline": {"powerline_p": 1.0, "powerline_snr_db": fixed},
               "records": {"records_p": 1.0, "records_snr_db": fixed,
                           "noise_records": list(noise_records)}}
    if kind not in options:
        raise ConfigError(f"noise kind {kind!r}: expected one of {', '.join(options)}")
    return SignalAugment(rate=rate, seed=seed, **options[kind])(x, signal_power)

