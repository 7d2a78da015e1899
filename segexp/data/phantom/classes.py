"""The phantom's label classes: names, mask colours and indices (index = position in the table)."""

from __future__ import annotations

__all__ = [
    "AO",
    "BACKGROUND",
    "CORONARY",
    "LA",
    "LV",
    "MYOCARDIUM",
    "PHANTOM_CLASSES",
    "PHANTOM_CLASS_NAMES",
    "PHANTOM_COLOURS",
]

PHANTOM_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("background", (0, 0, 0)),
    ("LV", (255, 255, 0)),
    ("Myocardium", (255, 0, 0)),
    ("LA", (0, 255, 0)),
    ("AO", (0, 0, 255)),
    ("Coronary", (255, 0, 255)),
)
"""``(name, (r, g, b))`` per class; the class index is the position."""

PHANTOM_CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in PHANTOM_CLASSES)
PHANTOM_COLOURS: tuple[tuple[int, int, int], ...] = tuple(rgb for _, rgb in PHANTOM_CLASSES)

BACKGROUND, LV, MYOCARDIUM, LA, AO, CORONARY = range(len(PHANTOM_CLASSES))
