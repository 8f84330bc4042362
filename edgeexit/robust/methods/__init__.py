"""Training methods for multi-exit models (one file per method); they register on import."""

from edgeexit.robust.methods import ctxadv as _ctxadv  # noqa: F401  (registers "ctxadv")
from edgeexit.robust.methods import ima as _ima  # noqa: F401  (registers "ima")
from edgeexit.robust.methods import neokd as _neokd  # noqa: F401  (registers "neokd")
from edgeexit.robust.methods import onmanifold as _onmanifold  # noqa: F401  (registers "onmanifold")
from edgeexit.robust.methods import rdi as _rdi  # noqa: F401  (registers "rdi")
from edgeexit.robust.methods import standard as _standard  # noqa: F401  (registers "standard")
from edgeexit.robust.methods.base import (
    Batch,
    MethodConfig,
    TrainContext,
    TrainingMethod,
    check_method_name,
    create_method,
    list_methods,
    make_method_config,
    method_config_class,
    register_method,
)

__all__ = [
    "Batch",
    "MethodConfig",
    "TrainContext",
    "TrainingMethod",
    "check_method_name",
    "create_method",
    "list_methods",
    "make_method_config",
    "method_config_class",
    "register_method",
]
