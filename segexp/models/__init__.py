"""Networks, losses and metrics: everything Keras serialises.

The model group (``model=<name>``) is :mod:`segexp.models.registry`; each network module
declares its typed parameters and start-up rules and is registered here.
"""

from __future__ import annotations

from segexp.models.flexunet import FlexUNetParams, build_flexunet, flexunet_rules
from segexp.models.registry import (
    NORMS,
    Network,
    build_model,
    check_model_config,
    networks,
    register_network,
    validate_model_config,
)
from segexp.models.resunet import ResUNetParams, build_resunet, resunet_rules

register_network("flexunet", Network(build_flexunet, FlexUNetParams, flexunet_rules))
register_network("resunet", Network(build_resunet, ResUNetParams, resunet_rules))

__all__ = ["NORMS", "Network", "build_model", "check_model_config", "networks", "register_network",
           "validate_model_config"]
