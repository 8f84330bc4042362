"""Multi-exit models: the contract, the registry, and the built-in 1-D families.

Families register themselves on import; ``list_models()`` shows them.
"""

from edgeexit.models import mobilenet1d as _mobilenet1d  # noqa: F401  (registers its families)
from edgeexit.models import resnet1d as _resnet1d  # noqa: F401
from edgeexit.models.base import InputNorm, ModelConfig, MultiExitNet
from edgeexit.models.profile import ExitCost, profile_model
from edgeexit.models.registry import check_model_name, create_model, list_models, register_model

__all__ = [
    "ExitCost",
    "InputNorm",
    "ModelConfig",
    "MultiExitNet",
    "check_model_name",
    "create_model",
    "list_models",
    "profile_model",
    "register_model",
]
