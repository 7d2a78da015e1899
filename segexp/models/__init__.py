"""Networks, losses and metrics: everything Keras serialises.

The model group (``model=<name>``) is :mod:`segexp.models.registry`; each network module
declares its typed parameters and start-up rules and is registered here.
"""

from __future__ import annotations

from segexp.models.attention_unet import (
    AttentionUNetParams,
    attention_unet_rules,
    build_attention_unet,
)
from segexp.models.deeplabv3plus import (
    DeepLabV3PlusParams,
    build_deeplabv3plus,
    deeplabv3plus_rules,
)
from segexp.models.efficient_unet import (
    EfficientUNetParams,
    build_efficient_unet,
    efficient_unet_rules,
)
from segexp.models.flexunet import FlexUNetParams, build_flexunet, flexunet_rules
from segexp.models.multiresunet import (
    MultiResUNetParams,
    build_multiresunet,
    multiresunet_rules,
)
from segexp.models.registry import (
    Network,
    build_model,
    check_model_config,
    networks,
    register_network,
    validate_model_config,
)
from segexp.models.resunet import ResUNetParams, build_resunet, resunet_rules
from segexp.models.swin_unet import SwinUNetParams, build_swin_unet, swin_unet_rules
from segexp.models.unet3plus import UNet3PlusParams, build_unet3plus, unet3plus_rules

register_network("flexunet", Network(build_flexunet, FlexUNetParams, flexunet_rules))
register_network("resunet", Network(build_resunet, ResUNetParams, resunet_rules))
register_network("attention_unet", Network(build_attention_unet, AttentionUNetParams, attention_unet_rules))
register_network("multiresunet", Network(build_multiresunet, MultiResUNetParams, multiresunet_rules))
register_network("efficient_unet", Network(build_efficient_unet, EfficientUNetParams, efficient_unet_rules))
register_network("deeplabv3plus", Network(build_deeplabv3plus, DeepLabV3PlusParams, deeplabv3plus_rules))
register_network("unet3plus", Network(build_unet3plus, UNet3PlusParams, unet3plus_rules))
register_network("swin_unet", Network(build_swin_unet, SwinUNetParams, swin_unet_rules))

__all__ = [
    "Network",
    "build_model",
    "check_model_config",
    "networks",
    "register_network",
    "validate_model_config",
]
