"""Image/mask slice folders: pairing by file name, case ids, splits and reading.

A dataset is a folder of 2D slices with a partner mask for each image, paired by
file stem (``10001_169.png`` <-> ``10001_169.png``). Two layouts:

* ``splits``: ``<root>/<split>/{images,masks}`` (the original HOCMvalves layout);
* ``flat``: ``<root>/{images,masks}``, split by patient with explicit case lists,
  the case id being parsed from the stem with ``case_pattern``.

Masks become ``uint8`` class indices (H, W) on reading; see :class:`MaskDecoder`.

Images are 8-bit PNG/JPG (or BMP, TIFF) as today; slices that carry more than 8 bits or other than one or
three channels (segexp-prepare's z-scores and stacked windows) are stored losslessly as 16-bit PNG (one or
three channels) or ``.npy`` ``(H, W, C)`` uint8/uint16 (:func:`write_image`), and :func:`read_image` reads
them all, as stored: what the values mean is the dataset's :class:`~segexp.data.io.intensity.InputEncoding`.
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

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
#: A slice array, any channels, uint8 or uint16 (:func:`write_image`).
NPY_SUFFIX = ".npy"


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


def read_image_file(path: Path, flags: int, what: str = "image", *, deep: bool = False) -> np.ndarray:
    """Read and decode an image file with ``cv2.imdecode(flags)``; every failure is a :class:`DataError`.

    The causes are told apart: missing file, empty file (0 bytes), not an image
    file (unknown signature), truncated PNG (no ``IEND`` chunk) or JPEG (no
    end-of-image marker in its last KiB), a 16-bit PNG (OpenCV would silently keep
    only its high byte; with ``deep`` it is decoded as stored, ``cv2.IMREAD_UNCHANGED``),
    undecodable data. No OpenCV exception leaves this function.
    """
    data = _read_bytes(path, what)
    if data.startswith(PNG_SIGNATURE):
        if data.rfind(PNG_END) < 0:
            raise DataError(f"{path}: cannot read {what} (truncated PNG: {len(data)} bytes, no IEND chunk at the end)")
        if png_bit_depth(data) == 16:
            if not deep:
                raise DataError(
                    f"{path}: 16-bit PNG; segexp reads 8-bit {what}s here (map the intensities to 0..255 first, "
                    "e.g. with segexp-prepare's windowing, or prepare 16-bit slices with window=ct_zscore / zscore, "
                    "whose dataset.json says so)"
                )
            flags = cv2.IMREAD_UNCHANGED
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


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as err:
        raise DataError(f"{path}: cannot read {what} (file does not exist)") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read {what} ({err.strerror or err})") from err
    if not data:
        raise DataError(f"{path}: cannot read {what} (empty file, 0 bytes)")
    return data


def png_bit_depth(data: bytes) -> int:
    """The bit depth of a PNG's IHDR chunk (byte 24 of the file); 0 when too short to tell."""
    return data[24] if len(data) > 24 else 0


def same_channels(bgr: np.ndarray) -> bool:
    """Whether the three channels of ``bgr`` are equal (a grey image stored as colour)."""
    return bool(np.array_equal(bgr[..., 0], bgr[..., 1]) and np.array_equal(bgr[..., 1], bgr[..., 2]))


#: The stored dtypes a slice image may have.
STORED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def read_image(path: Path, channels: int, dtype: np.dtype | type | str = np.uint8) -> np.ndarray:
    """Read a slice image as stored: ``(H, W, channels)`` of ``dtype`` (uint8, or uint16 for 16-bit slices).

    PNG/JPG (8-bit, or 16-bit PNG): a grayscale file feeds an RGB dataset (replicated, as
    ``cv2.IMREAD_COLOR`` does); a colour file feeds a grayscale dataset only when its three channels
    are equal, otherwise :class:`DataError` (a colour image in a grayscale dataset). ``.npy``
    (:func:`write_image`): ``(H, W)`` or ``(H, W, C)``, exactly ``channels`` channels. A file of another
    depth than ``dtype`` (the dataset's, :class:`~segexp.data.io.intensity.InputEncoding`) is a
    :class:`DataError` naming both.
    """
    want = np.dtype(dtype)
    if Path(path).suffix.lower() == NPY_SUFFIX:
        image = _read_npy(Path(path), channels)
    else:
        image = read_image_file(path, cv2.IMREAD_COLOR, "image", deep=want != np.uint8)
        image = _as_channels(path, image if image.ndim == 3 else image[..., None], channels)
    if image.dtype != want:
        raise DataError(
            f"{path}: {image.dtype.itemsize * 8}-bit image in a dataset of {want.itemsize * 8}-bit slices "
            "(the stored depth of dataset.json's storage, or of the model's input)"
        )
    return image


def _as_channels(path: Path, image: np.ndarray, channels: int) -> np.ndarray:
    """A decoded ``(H, W, 1 | 3 | 4)`` PNG/JPG (OpenCV's BGR order) as ``(H, W, channels)`` (RGB order)."""
    if image.shape[2] == 4:
        image = image[..., :3]  # an alpha channel is no image content
    if image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, channels, axis=2)) if channels != 1 else image
    if channels == 1:
        if not same_channels(image):
            raise DataError(
                f"{path}: colour image (3 different channels) in a grayscale dataset "
                "(model.image_channels=1); convert it to grayscale or use model.image_channels=3"
            )
        return np.ascontiguousarray(image[..., :1])
    if channels != 3:
        raise DataError(f"{path}: a 3-channel image in a dataset of {channels}-channel slices (model.image_channels)")
    return np.ascontiguousarray(image[..., ::-1])  # BGR -> RGB (cv2.cvtColor's result, for 8 and 16 bits)


def _read_npy(path: Path, channels: int) -> np.ndarray:
    """A ``.npy`` slice: ``(H, W)`` or ``(H, W, C)`` uint8/uint16, C = ``channels``, no pickled objects."""
    _read_bytes(path, "image")  # the same messages for a missing or empty file
    try:
        image = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read image (not a .npy array, or truncated: {err})") from err
    image = image[..., None] if image.ndim == 2 else image
    if image.ndim != 3 or image.dtype not in STORED_DTYPES:
        raise DataError(f"{path}: a slice .npy must be (H, W[, C]) uint8 or uint16, got {image.shape} {image.dtype}")
    if image.shape[2] != channels:
        raise DataError(
            f"{path}: {image.shape[2]}-channel slice in a dataset of {channels}-channel slices (model.image_channels)"
        )
    return np.ascontiguousarray(image)


def image_suffix(channels: int) -> str:
    """The file ending :func:`write_image` uses for ``channels``: ``.png`` for 1 or 3, else ``.npy``."""
    return ".png" if channels in (1, 3) else NPY_SUFFIX


def write_image(path: Path, image: np.ndarray) -> None:
    """Write a slice ``(H, W)`` or ``(H, W, C)`` uint8/uint16 losslessly, as :func:`read_image` reads it back:
    PNG (8 or 16 bit; three channels in RGB order) for one or three channels, ``.npy`` otherwise
    (``path``'s ending must be :func:`image_suffix`'s)."""
    image = np.ascontiguousarray(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if Path(path).suffix.lower() != image_suffix(channels):
        raise ValueError(f"{path}: a {channels}-channel slice is written as {image_suffix(channels)}")
    if image.dtype not in STORED_DTYPES:
        raise ValueError(f"{path}: slices are stored as uint8 or uint16, got {image.dtype}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if Path(path).suffix.lower() == NPY_SUFFIX:
        np.save(path, image, allow_pickle=False)
        return
    pixels = image[..., 0] if channels == 1 and image.ndim == 3 else image
    if channels == 3:
        pixels = np.ascontiguousarray(pixels[..., ::-1])  # RGB -> OpenCV's BGR
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"{path}: could not write PNG")


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
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    channels = image.shape[2] if image.ndim == 3 else 1
    if channels > _CV_CHANNELS:  # OpenCV's area resize takes at most 4 channels: groups of 4
        groups = [image[..., c : c + _CV_CHANNELS] for c in range(0, channels, _CV_CHANNELS)]
        parts = [resize_image(np.ascontiguousarray(g), height, width) for g in groups]
        return np.concatenate(parts, axis=2)
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return resized.reshape(height, width, channels)


_CV_CHANNELS = 4


def resize_pair(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``(height, width)``: :func:`resize_image` for the image, nearest neighbour for the mask."""
    if image.shape[:2] == (height, width) and mask.shape[:2] == (height, width):
        return image, mask
    return resize_image(image, height, width), cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def load_pair(
    pair: SlicePair,
    decoder: MaskDecoder,
    channels: int,
    height: int,
    width: int,
    dtype: np.dtype | type | str = np.uint8,
) -> tuple[np.ndarray, np.ndarray]:
    """Read, check and resize one pair: ``(H, W, C)`` image as stored (``dtype``) and ``(H, W) uint8`` mask."""
    image = read_image(pair.image, channels, dtype)
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
