"""Seeded synthetic cardiac-CT phantom: the built-in default dataset.

A fresh machine has no downloaded data, so segexp ships a generator of small,
cardiac-CT-like volumes, one concept a module:

* :mod:`~segexp.data.phantom.anatomy`: :func:`make_phantom_volume`, one seeded volume
  ``(hu, labels)`` built from the shapes of :mod:`~segexp.data.phantom.shapes`;
* :mod:`~segexp.data.phantom.classes`: the label classes, their colours and indices;
* :mod:`~segexp.data.phantom.geometry`: axes (LPS), :func:`phantom_spacing`, :func:`phantom_affine`;
* :mod:`~segexp.data.phantom.cases`: case ids and per-case seeds (``phantom001`` is the
  same anatomy in both writers);
* :mod:`~segexp.data.phantom.slices`: :func:`write_phantom_dataset`, the slice-folder layout
  used by the training code (``<root>/<split>/{images,masks}/<case>_<slice>.png``, HU windowed
  with :data:`PHANTOM_WINDOW` by :func:`segexp.data.io.intensity.window_to_uint8`, re-exported
  here) plus a manifest ``phantom.json``;
* :mod:`~segexp.data.phantom.volumes`: :func:`write_phantom_volumes`, 3D NIfTI volumes as
  from a DICOM conversion plus a manifest ``phantom_volumes.json`` -- the input of
  ``segexp-prepare``;
* :mod:`~segexp.data.phantom.cache`: the generic generated-folder cache both writers use:
  they reuse a folder generated with the same parameters, regenerate only their own files
  when the parameters change, refuse a non-empty folder they did not write, and never
  delete files they did not write.
"""

from segexp.data.io.intensity import window_to_uint8
from segexp.data.phantom.anatomy import PHANTOM_VERSION, make_phantom_volume
from segexp.data.phantom.classes import (
    AO,
    BACKGROUND,
    CORONARY,
    LA,
    LV,
    MYOCARDIUM,
    PHANTOM_CLASS_NAMES,
    PHANTOM_CLASSES,
    PHANTOM_COLOURS,
)
from segexp.data.phantom.geometry import phantom_affine, phantom_spacing
from segexp.data.phantom.slices import (
    DEFAULT_PHANTOM_CASES,
    PHANTOM_MANIFEST,
    PHANTOM_WINDOW,
    ensure_phantom_slices,
    write_phantom_dataset,
)
from segexp.data.phantom.volumes import (
    PHANTOM_VOLUMES_MANIFEST,
    ensure_phantom_volumes,
    save_nifti,
    write_phantom_volumes,
)

__all__ = [  # window_to_uint8 is re-exported: it lived here before segexp.data.io.intensity
    "AO",
    "BACKGROUND",
    "CORONARY",
    "DEFAULT_PHANTOM_CASES",
    "LA",
    "LV",
    "MYOCARDIUM",
    "PHANTOM_CLASSES",
    "PHANTOM_CLASS_NAMES",
    "PHANTOM_COLOURS",
    "PHANTOM_MANIFEST",
    "PHANTOM_VERSION",
    "PHANTOM_VOLUMES_MANIFEST",
    "PHANTOM_WINDOW",
    "ensure_phantom_slices",
    "ensure_phantom_volumes",
    "make_phantom_volume",
    "phantom_affine",
    "phantom_spacing",
    "save_nifti",
    "window_to_uint8",
    "write_phantom_dataset",
    "write_phantom_volumes",
]
