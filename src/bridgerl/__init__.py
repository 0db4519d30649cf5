"""bridgerl: cooperative SFT and RL (BRIDGE, arXiv 2509.06948) with every baseline on one loop.

The Python API (bridgerl.api): `train`, `evaluate`, `compare` and the typed `Config`. User errors
are `UserError`s (ConfigError, TaskError, RewardError, ModelLoadError), never sys.exit.
"""

__version__ = "0.1.0"

from bridgerl.api import CompareResult, TrainResult, compare, evaluate, make_config, train
from bridgerl.config import Config, ConfigError, UserError
from bridgerl.config_load import load_config
from bridgerl.tasks.base import TaskError
from bridgerl.tasks.rewards import RewardError

__all__ = ["Config", "CompareResult", "ConfigError", "ModelLoadError", "RewardError", "TaskError", "TrainResult",
           "UserError", "compare", "evaluate", "load_config", "make_config", "train"]


def __getattr__(name: str):
    if name == "ModelLoadError":  # lives beside the model loader, which imports torch: loaded on first use
        from bridgerl.models.loading import ModelLoadError

        return ModelLoadError
    raise AttributeError(f"module 'bridgerl' has no attribute {name!r}")
