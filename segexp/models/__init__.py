"""Networks, losses and metrics: everything Keras serialises.

The model group (``model=<name>``) is :mod:`segexp.models.registry`: each network module declares
its ``NETWORK`` (typed parameters, start-up rules, builder). Importing this package imports every
module of it (:func:`networks`), so each network is known and its Keras layers are registered.
"""

from __future__ import annotations

from segexp.models.registry import (
    RESOLVERS,
    Network,
    build_model,
    check_model_config,
    networks,
    register_network,
    unregister_network,
    validate_model_config,
)

networks()  # import every network module: NETWORK declared, Keras layers registered for loading

__all__ = [
    "RESOLVERS",
    "Network",
    "build_model",
    "check_model_config",
    "networks",
    "register_network",
    "unregister_network",
    "validate_model_config",
]
