"""Image/mask slice folders: pairing by file name, case ids, splits and reading.

A dataset is a folder of 2D slices with a partner mask for each image, paired by
file stem (``10001_169.png`` <-> ``10001_169.png``). Two layouts:

* ``splits``: ``<root>/<split>/{images,masks}`` (the original HOCMvalves layout);
* ``flat``: ``<root>/{images,masks}``, split by patient with explicit case lists,
  the case id being parsed from the stem with ``case_pattern``.

Masks become ``uint8`` class indices (H, W) on reading; see :class:`MaskDecoder`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segexp.core.errors import DataError
from segexp.data.io.problems import Problem, Problems, report
from segexp.data.io.rgb_map import Colours, MaskColourError, colour_table, decode_rgb_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class SlicePair:
    """One image and its mask; ``name`` is the shared file stem, ``case`` the patient id."""

    name: str
    image: Path
    mask: Path
    case: str


def image_files(folder: Path, problems: Problems | None = None) -> dict[str, Path]:
    """Image files of ``folder`` by stem (hidden files and other suffixes ignored).

    A missing folder or two files with one stem are problems (:mod:`segexp.data.io.problems`):
    raised as :class:`DataError`, or recorded in ``problems`` and skipped.
    """
    if not folder.is_dir():
        report(problems, Problem(str(folder), "folder does not exist"))
        return {}
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in files:
            report(
                problems, Problem(str(path), f"two files share the name {path.stem!r} (also {files[path.stem].name})")
            )
            continue
        files[path.stem] = path
    return files


def case_id(name: str, case_pattern: str, strict: bool = True) -> str:
    """Patient id of a slice: the ``case`` group of ``case_pattern`` matched on the stem.

    A stem that does not match is an error when ``strict``, else its own case.
    """
    match = re.match(case_pattern, name)
    if match is None or "case" not in match.groupdict():
        if not strict:
            return name
        raise DataError(
            f"file {name!r}: does not match dataset.case_pattern {case_pattern!r} "
            "(it needs a named group 'case', e.g. '^(?P<case>.+)_(?P<slice>\\d+)$')"
        )
    return match.group("case")


def find_pairs(
    images_dir: Path, masks_dir: Path, case_pattern: str, strict: bool = True, problems: Problems | None = None
) -> list[SlicePair]:
    """Pair images and masks by file stem, sorted; ``strict``: every stem must match ``case_pattern``.

    Problems (a missing folder, a file without partner, no image, a name outside the
    pattern) raise :class:`DataError`, or are recorded in ``problems`` and the file skipped.
    """
    images, masks = image_files(images_dir, problems), image_files(masks_dir, problems)
    if not (images_dir.is_dir() and masks_dir.is_dir()):
        return []  # the missing folder is the problem, not each file of the other one
    _report_unpaired(images, masks, images_dir, masks_dir, problems)
    if not images:
        report(problems, Problem(str(images_dir), f"no images ({', '.join(IMAGE_SUFFIXES)})"))
    pairs = []
    for stem in sorted(set(images) & set(masks)):
        try:
            case = case_id(stem, case_pattern, strict)
        except DataError as err:
            report(
                problems,
                Problem(str(images[stem]), f"name does not match dataset.case_pattern {case_pattern!r}"),
                str(err),
            )
            continue
        pairs.append(SlicePair(stem, images[stem], masks[stem], case))
    return pairs


def _report_unpaired(
    images: Mapping[str, Path], masks: Mapping[str, Path], images_dir: Path, masks_dir: Path, problems: Problems | None
) -> None:
    """One problem per file without partner; strict, one error listing them all."""
    no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    found = [Problem(str(images[s]), f"image without a mask (no {s}.* in {masks_dir})") for s in no_mask]
    found += [Problem(str(masks[s]), f"mask without an image (no {s}.* in {images_dir})") for s in no_image]
    lines = [f"images without a mask in {masks_dir}: {_shorten(no_mask)}"] if no_mask else []
    lines += [f"masks without an image in {images_dir}: {_shorten(no_image)}"] if no_image else []
    report(problems, found, "unpaired files:\n  " + "\n  ".join(lines))


def _shorten(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def split_pairs(
    root: Path,
    split: str,
    *,
    layout: str,
    splits: Mapping[str, str],
    cases: Mapping[str, Sequence[str]],
    case_pattern: str,
    images_dir: str = "images",
    masks_dir: str = "masks",
    problems: Problems | None = None,
) -> list[SlicePair]:
    """Slice pairs of one split (``train``, ``valid`` or ``test``) of a dataset folder.

    Layout ``splits``: the pairs of ``<root>/<split folder>``; ``flat``: the pairs of
    ``root`` whose case is listed in ``cases[split]`` (a listed case without slices is a problem).
    Layout ``splits`` with ``cases`` (cross-validation folds, :mod:`segexp.data.runtime.folds`): the pairs of
    every split folder whose case is listed in ``cases[split]``.
    """
    pooled = layout == "splits" and any(cases.get(s) for s in cases)
    if layout == "splits" and not pooled:
        base = root / splits[split]
        return find_pairs(base / images_dir, base / masks_dir, case_pattern, strict=False, problems=problems)
    wanted = {str(c) for c in cases.get(split) or []}
    if not wanted:
        return []
    if pooled:
        folders = [f for f in dict.fromkeys(root / str(name) for name in splits.values()) if (f / images_dir).is_dir()]
        pairs = [
            pair
            for f in folders
            for pair in find_pairs(f / images_dir, f / masks_dir, case_pattern, strict=False, problems=problems)
        ]
    else:
        pairs = find_pairs(root / images_dir, root / masks_dir, case_pattern, problems=problems)
    selected = [p for p in pairs if p.case in wanted]
    missing = sorted(wanted - {p.case for p in selected})
    found = sorted({p.case for p in pairs})
    report(
        problems,
        [Problem(f"dataset.cases.{split}", f"no slices of case {case!r} in {root}") for case in missing],
        f"dataset.cases.{split}: no slices of case(s) {missing} in {root}; cases found: {found}",
    )
    return selected


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its CRC: the last 8 bytes of a complete PNG
JPEG_SIGNATURE = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"  # end-of-image marker
_JPEG_TAIL = 1024  # the end marker is looked for in the last KiB (some writers pad after it)


def read_image_file(path: Path, flags: int, what: str = "image") -> np.ndarray:
    """Read and decode an image file with ``cv2.imdecode(flags)``; every failure is a :class:`DataError`.

    The causes are told apart: missing file, empty file (0 bytes), not an image
    file (unknown signature), truncated PNG (no ``IEND`` chunk) or JPEG (no
    end-of-image marker in its last KiB), a 16-bit PNG (OpenCV would silently keep
    only its high byte), undecodable data. No OpenCV exception leaves this function.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise DataError(f"{path}: cannot read {what} (file does not exist)") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read {what} ({err.strerror or err})") from err
    if not data:
        raise DataError(f"{path}: cannot read {what} (empty file, 0 bytes)")
    if data.startswith(PNG_SIGNATURE):
        if data.rfind(PNG_END) < 0:
            raise DataError(f"{path}: cannot read {what} (truncated PNG: {len(data)} bytes, no IEND chunk at the end)")
        if len(data) > 24 and data[24] == 16:  # IHDR bit depth
            raise DataError(
                f"{path}: 16-bit PNG; segexp reads 8-bit {what}s (map the intensities to 0..255 first, "
                "e.g. with segexp-prepare's windowing)"
            )
    elif data.startswith(JPEG_SIGNATURE):
        if data.rfind(JPEG_END, max(0, len(data) - _JPEG_TAIL)) < 0:
            raise DataError(f"{path}: cannot read {what} (truncated JPEG: {len(data)} bytes, no end-of-image marker)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "OpenCV error"
        raise DataError(f"{path}: cannot read {what} (corrupt data: {detail})") from err
    if image is None:
        start = data[:8]
        kind = (
            "corrupt image data"
            if data.startswith((PNG_SIGNATURE, JPEG_SIGNATURE))
            else f"not an image file, starts with {start!r}"
        )
        raise DataError(f"{path}: cannot read {what} ({kind})")
    return image


def same_channels(bgr: np.ndarray) -> bool:
    """Whether the three channels of ``bgr`` are equal (a grey image stored as colour)."""
    return bool(np.array_equal(bgr[..., 0], bgr[..., 1]) and np.array_equal(bgr[..., 1], bgr[..., 2]))


def read_image(path: Path, channels: int) -> np.ndarray:
    """Read an 8-bit image as ``(H, W, channels) uint8`` (grayscale or RGB).

    A grayscale file feeds an RGB dataset (replicated, as ``cv2.IMREAD_COLOR`` does);
    a colour file feeds a grayscale dataset only when its three channels are equal,
    otherwise :class:`DataError` (a colour image in a grayscale dataset).
    """
    image = read_image_file(path, cv2.IMREAD_COLOR, "image")
    if channels == 1:
        if not same_channels(image):
            raise DataError(
                f"{path}: colour image (3 different channels) in a grayscale dataset "
                "(model.image_channels=1); convert it to grayscale or use model.image_channels=3"
            )
        return np.ascontiguousarray(image[..., :1])
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class MaskDecoder:
    """Reads a mask file into ``(H, W) uint8`` class indices.

    ``rgb``: exact colours through the rgb_map (unknown colour -> error naming the file);
    ``index``: the pixel value is the class index (values >= num_classes -> error);
    ``binary``: a grayscale mask, pixel >= threshold is class 1.
    """

    def __init__(
        self,
        mask_format: str,
        num_classes: int,
        colours: Colours | None = None,
        threshold: int = 128,
    ) -> None:
        self.mask_format = mask_format
        self.num_classes = num_classes
        self.colours = None if colours is None else colour_table(colours)
        self.threshold = threshold

    def __call__(self, path: Path) -> np.ndarray:
        raw = read_image_file(path, cv2.IMREAD_COLOR, "mask")
        if self.mask_format == "rgb":
            if self.colours is None:  # as colour_table(None) would fail
                raise TypeError("MaskDecoder: mask_format 'rgb' needs colours (the rgb_map)")
            try:
                return decode_rgb_mask(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB), self.colours, path)
            except MaskColourError as err:
                raise DataError(str(err)) from err
        if not same_channels(raw):
            raise DataError(
                f"{path}: colour mask (3 different channels) but dataset.mask_format is "
                f"{self.mask_format!r}, which needs a single-channel mask (use mask_format rgb with an rgb_map)"
            )
        raw = np.ascontiguousarray(raw[..., 0])
        if self.mask_format == "binary":
            return (raw >= self.threshold).astype(np.uint8)
        if int(raw.max()) >= self.num_classes:
            bad = sorted(int(v) for v in np.unique(raw[raw >= self.num_classes]))[:8]
            raise DataError(f"{path}: class-index mask holds values {bad} but there are {self.num_classes} classes")
        return raw


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, C)`` image to ``(height, width, C)``: area interpolation when shrinking, linear otherwise.

    The one image resize of segexp: training, evaluation and prediction feed the model the same pixels.
    """
    if image.shape[:2] == (height, width):
        return image
    shrink = image.shape[0] > height or image.shape[1] > width
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return resized.reshape(height, width, image.shape[2] if image.ndim == 3 else 1)


def resize_pair(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``(height, width)``: :func:`resize_image` for the image, nearest neighbour for the mask."""
    if image.shape[:2] == (height, width) and mask.shape[:2] == (height, width):
        return image, mask
    return resize_image(image, height, width), cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def load_pair(
    pair: SlicePair, decoder: MaskDecoder, channels: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read, check and resize one pair: ``(H, W, C) uint8`` image and ``(H, W) uint8`` mask."""
    image = read_image(pair.image, channels)
    mask = decoder(pair.mask)
    check_same_size(pair, image, mask)
    return resize_pair(image, mask, height, width)


def check_same_size(pair: SlicePair, image: np.ndarray, mask: np.ndarray) -> None:
    """Raise :class:`DataError` naming both files when image and mask differ in size."""
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{pair.image} is {image.shape[1]}x{image.shape[0]} but its mask {pair.mask} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height)"
        )
