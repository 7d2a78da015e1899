"""A label volume as a DICOM Segmentation object (DICOM-SEG) of its source DICOM series, through highdicom.

The optional extra ``segexp[dicom-seg]`` (highdicom); without it :func:`write_dicom_seg` is an error that says
what to install. One segment per foreground class (segment number = class index, label = class name,
algorithm type AUTOMATIC by ``segexp``), frames referencing the source slices in their order along the slice
normal (:attr:`~segexp.data.io.volume_files.VolumeFile.files`), so viewers (3D Slicer, OHIF) place it on the
series. Empty frames are left out, as highdicom does by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from segexp.core.files import atomic_write_path
from segexp.data.io.volume_files import VolumeFile, VolumeFileError

DICOM_SEG_SUFFIX = ".dcm"
SOFTWARE = "segexp"


def write_dicom_seg(labels: np.ndarray, like: VolumeFile, stem: Path, class_names: Sequence[str]) -> Path:
    """Write ``labels`` (class indices ``(x, y, z)`` in ``like``'s file order, ``like`` a DICOM series) as
    DICOM-SEG ``<stem>.dcm``; ``class_names[k]`` names segment ``k`` (index 0, background, is no segment).
    Written whole or not at all."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:
        raise VolumeFileError(like.path, "DICOM-SEG output needs highdicom: pip install 'segexp[dicom-seg]'") from exc
    if like.format != "dicom" or not like.files:
        raise VolumeFileError(like.path, f"DICOM-SEG is written for DICOM inputs only, not {like.format}")
    data = np.asarray(labels, np.uint8).reshape(like.shape[:3])
    if int(data.max(initial=0)) >= len(class_names):
        raise VolumeFileError(like.path, f"label {int(data.max())} has no class name (classes {list(class_names)})")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE, version="1", family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=str(name),
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(class_names)
        if k > 0
    ]
    sources = [pydicom.dcmread(str(p)) for p in like.files]
    try:
        seg = _segmentation(hd, sources, data, segments)
    except (ValueError, AttributeError) as exc:  # highdicom's checks of the source series
        raise VolumeFileError(like.path, f"cannot write DICOM-SEG for this series: {exc}") from exc
    target = Path(f"{stem}{DICOM_SEG_SUFFIX}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(target) as tmp:
        seg.save_as(str(tmp))
    return target


def _segmentation(hd: Any, sources: Sequence[pydicom.Dataset], data: np.ndarray, segments: list[Any]) -> Any:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(data.transpose(2, 1, 0)),  # (frames, rows, columns) = (z, y, x)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=SOFTWARE,
        software_versions=SOFTWARE,
        device_serial_number="0",
        series_description=f"{SOFTWARE} prediction",
    )
