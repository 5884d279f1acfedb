"""Training: configs, the epoch loop, resumable checkpoints, DDP, and the run_training API."""

from export.training.config import DEFAULTS, ConfigError, load_yaml_config, resolve_config
from export.training.run import TrainResult, run_training

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "TrainResult",
    "load_yaml_config",
    "resolve_config",
    "run_training",
]
