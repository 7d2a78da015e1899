"""Layers shared by the networks."""

from __future__ import annotations

from keras import layers

from segexp.models.registry import NORMS


def norm_layer(norm: str, groups: int, name: str) -> layers.Layer | None:
    """The normalisation layer of ``model.norm``, or None for ``none``.

    ``instance``: ``GroupNormalization(groups=-1)`` (one group per channel, i.e. instance
    norm, Ulyanov et al. 2016, as MONAI's and nnU-Net's default); ``group``: ``groups`` groups
    (Wu & He 2018); ``batch``: BatchNormalization (statistics over the batch).
    """
    if norm == "none":
        return None
    if norm == "batch":
        return layers.BatchNormalization(name=name)
    if norm == "instance":
        return layers.GroupNormalization(groups=-1, name=name)
    if norm == "group":
        return layers.GroupNormalization(groups=groups, name=name)
    raise ValueError(f"model.norm: expected one of {list(NORMS)}, got {norm!r}")
