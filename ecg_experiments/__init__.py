"""ecg-experiments: config-driven experiments for ECG arrhythmia classification."""

from ecg_experiments.config import register_resolvers

__version__ = "0.1.0"

register_resolvers()
