"""Readers for medical image files: NIfTI, DICOM series, ``.npy`` and PNG/JPEG.

Every reader turns bad input (missing, truncated or corrupt file, a header nibabel or
pydicom rejects, wrong rank, NaN/Inf voxels) into a :class:`~radjax.data.errors.BadRecordError`
that names the file and, where there is one, the header field, so a broken record never
surfaces as a crash deep inside a model.

Non-finite voxels are an error by default; readers given ``nonfinite="zero"`` (the
``data.nonfinite`` option, see :func:`nonfinite_policy`) set them to 0 instead and report each
repaired file to the innermost :func:`nonfinite_repairs` block.

Volumes follow the NIfTI voxel convention: ``Volume.array[i, j, k]`` with ``i`` the
column index of a slice, ``j`` the row index and ``k`` the slice index (a 4-D NIfTI keeps
its extra axes after ``k``). ``Volume.affine`` maps ``(i, j, k, 1)`` to RAS+ millimetres,
as nibabel does; DICOM's LPS patient coordinates are converted to RAS.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError, SpatialImage
from PIL import Image

from radjax.data.errors import BadRecordError

log = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NONFINITE = ("error", "zero")  # values of data.nonfinite
_REPAIRS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "nonfinite_repairs", default=None
)


@dataclasses.dataclass(frozen=True)
class Volume:
    """A voxel array with its geometry.

    Attributes:
      array: f32 ``(I, J, K, ...)`` voxels, axis order as in the module docstring.
      affine: f64 ``(4, 4)`` voxel index -> RAS+ millimetres.
      spacing: voxel size in mm along ``(i, j, k)``.
      orientation: axis codes of ``(i, j, k)`` in RAS terms, e.g. ``('R', 'A', 'S')``.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    orientation: tuple[str, str, str]


def nonfinite_policy(data_cfg) -> str:
    """``data.nonfinite``: 'error' (default: NaN/Inf voxels make a bad record) or 'zero'."""
    policy = data_cfg.get("nonfinite", "error")
    if policy not in NONFINITE:
        raise ValueError(f"data.nonfinite {policy!r} unknown; use one of {list(NONFINITE)}")
    return policy


@contextlib.contextmanager
def nonfinite_repairs() -> Iterator[list[str]]:
    """Collects, per file, what ``check_finite(..., nonfinite="zero")`` repaired inside the
    block (one message per repaired array, naming the file)."""
    repairs: list[str] = []
    token = _REPAIRS.set(repairs)
    try:
        yield repairs
    finally:
        _REPAIRS.reset(token)


def check_finite(
    array: np.ndarray,
    path: str | os.PathLike[str],
    field: str | None = None,
    nonfinite: str = "error",
) -> np.ndarray:
    """Returns ``array`` unchanged if it holds no NaN or Inf; else raises BadRecordError
    (``nonfinite="error"``) or returns a copy with them set to 0 (``"zero"``, reported to
    :func:`nonfinite_repairs`)."""
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite {nonfinite!r} unknown; use one of {list(NONFINITE)}")
    if np.issubdtype(array.dtype, np.inexact):
        finite = np.isfinite(array)
        bad = np.size(array) - np.count_nonzero(finite)
        if bad:
            message = f"{bad} non-finite values (NaN/Inf) in an array of shape {array.shape}"
            if nonfinite == "error":
                raise BadRecordError(path, field, message)
            repairs = _REPAIRS.get()
            if repairs is not None:
                repairs.append(str(BadRecordError(path, field, message + " set to 0")))
            return np.where(finite, array, np.zeros((), array.dtype))
    return array


@contextlib.contextmanager
def _as_bad_record(path: str | os.PathLike[str], what: str, field: str | None = None):
    """Turns any error but BadRecordError raised in the block into a BadRecordError naming
    ``path`` (and ``field``): ``"<what> (<ErrorType>: <message>)"``. nibabel, pydicom, PIL
    and their decoders raise many kinds of errors."""
    try:
        yield
    except BadRecordError:
        raise
    except Exception as err:
        raise BadRecordError(path, field, f"{what} ({type(err).__name__}: {err})") from err


def check_rank(
    array: np.ndarray,
    ndim: int | Sequence[int] | None,
    path: str | os.PathLike[str],
    field: str | None = None,
) -> np.ndarray:
    """Returns ``array`` unchanged, or raises BadRecordError if its rank is not allowed."""
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and array.ndim not in allowed:
        raise BadRecordError(
            path, field, f"expected rank {' or '.join(map(str, allowed))}, got shape {array.shape}"
        )
    return array


def resolve_path(root: str | os.PathLike[str], relative: str | os.PathLike[str]) -> Path:
    """Joins ``relative`` onto ``root``; raises BadRecordError if the result leaves ``root``.

    Symbolic links and ``..`` are resolved before the check, so neither can reach outside the
    data root. An absolute ``relative`` is accepted only if it lies inside ``root``.
    """
    root_path = Path(root).resolve()
    resolved = (root_path / relative).resolve()
    if not resolved.is_relative_to(root_path):
        raise BadRecordError(
            relative, None, f"path resolves to {resolved}, outside the data root {root_path}"
        )
    return resolved


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise BadRecordError(path, None, "file not found")


def require_files(root: str | os.PathLike[str], names: Sequence[str], what: str) -> None:
    """Checks that the data root exists and holds every file of ``names`` (relative to it).

    Raises:
      FileNotFoundError: naming ``root`` and the first missing file; ``what`` says what the
        root should hold (e.g. "an RP3D-DiagDS copy").
    """
    root = Path(root)
    missing = [n for n in names if not (root / n).is_file()]
    if root.is_dir() and not missing:
        return
    problem = f"lacks {missing[0]}" if root.is_dir() else "does not exist"
    more = f" (and {len(missing) - 1} more files)" if root.is_dir() and len(missing) > 1 else ""
    raise FileNotFoundError(
        f"data.root {root} {problem}{more}; point data.root at {what} (phantoms are "
        "written only with data.phantoms.enabled, into a missing or empty data.root)"
    )


def read_json(path: str | os.PathLike[str]):
    """A JSON file's content; BadRecordError naming the file if it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise BadRecordError(path, None, "file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise BadRecordError(path, None, f"not valid JSON ({err})") from err


def read_npy(
    path: str | os.PathLike[str],
    *,
    ndim: int | Sequence[int] | None = None,
    nonfinite: str = "error",
) -> np.ndarray:
    """Loads a ``.npy`` array without unpickling; checks rank (if given) and finiteness
    (``nonfinite``: see :func:`check_finite`)."""
    path = Path(path)
    _require_file(path)
    with _as_bad_record(path, "not a readable .npy file"):
        array = np.load(path, allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise BadRecordError(path, None, "expected one array, found an .npz archive")
    return check_finite(check_rank(array, ndim, path), path, nonfinite=nonfinite)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a ``.npy`` header."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
        return tuple(shape), dtype, f.tell()


def _bad_header_field(path: Path) -> str | None:
    """The first NIfTI header field that nibabel's own header checks reject, if any
    (e.g. ``datatype`` for an unknown data code)."""
    with contextlib.suppress(Exception), ImageOpener(path) as f:
        block = f.read(nib.Nifti2Header.template_dtype.itemsize)
        for klass in (nib.Nifti2Header, nib.Nifti1Header):
            if klass.may_contain_header(block):
                header = klass(block[: klass.template_dtype.itemsize], check=False)
                for check in klass._get_checks():  # nibabel's per-field header checks
                    _, report = check(header.copy(), fix=False)
                    if report.problem_level >= 30:  # logging.WARNING and above
                        return check.__name__.removeprefix("_chk_")
    return None


def _load_spatial(path: Path) -> SpatialImage:
    """``nib.load`` of a voxel image with an affine (NIfTI-1/2, Analyze, MGH, ...): its
    header is read, its pixels not yet."""
    _require_file(path)
    try:
        image = nib.load(path)
    except Exception as err:
        field = _bad_header_field(path) if isinstance(err, HeaderDataError) else None
        raise BadRecordError(
            path, field, f"not a readable NIfTI file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(image, SpatialImage):  # e.g. a CIFTI-2 file (.dtseries.nii)
        raise BadRecordError(
            path, None, f"a {type(image).__name__}, not a voxel volume with an affine"
        )
    return image


def _check_shape(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int, compressed: bool
) -> tuple[int, ...]:
    """``shape`` if every axis is positive and (uncompressed) the file holds its data."""
    if not shape or min(shape) < 1:
        raise BadRecordError(path, "dim", f"header claims shape {shape}")
    needed = offset + math.prod(shape) * dtype.itemsize
    if not compressed and path.stat().st_size < needed:
        raise BadRecordError(
            path,
            "dim",
            f"header claims shape {shape} of {dtype} ({needed} bytes with the header), "
            f"the file holds {path.stat().st_size}",
        )
    return shape


def array_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The voxel-array shape of a ``.npy`` or NIfTI file from its header alone (no pixels
    read); NIfTI shapes are (I, J, K, ...) in file order. A header that claims a shape the
    (uncompressed) file cannot hold raises BadRecordError naming the file and ``dim``."""
    path = Path(path)
    _require_file(path)
    if path.suffix.lower() == ".npy":
        with _as_bad_record(path, "unreadable .npy header"):
            shape, dtype, offset = _npy_header(path)
        return _check_shape(path, shape, dtype, offset, compressed=False)
    return _image_shape(path, _load_spatial(path))


def _image_shape(path: Path, image: SpatialImage) -> tuple[int, ...]:
    """The checked voxel-array shape (``_check_shape``) of a loaded nibabel image."""
    with _as_bad_record(path, "unreadable array header"):
        header = image.header
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype, offset = header.get_data_dtype(), int(header.get_data_offset())
    return _check_shape(path, shape, dtype, offset, compressed=path.suffix.lower() == ".gz")


def read_nifti(
    path: str | os.PathLike[str],
    *,
    canonical: bool = False,
    ndim: int | Sequence[int] | None = None,
    nonfinite: str = "error",
) -> Volume:
    """Reads a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) with nibabel.

    Args:
      path: the file.
      canonical: reorient to the closest RAS+ voxel order (``nib.as_closest_canonical``).
      ndim: allowed rank(s) of the voxel array, e.g. ``3`` or ``(3, 4)``; None = any.
      nonfinite: 'error' or 'zero' for NaN/Inf voxels (:func:`check_finite`).

    Returns:
      A :class:`Volume` with f32 voxels (header scaling applied) of shape ``(I, J, K, ...)``;
      a 2-D file gets a slice axis of length 1.
    """
    path = Path(path)
    image = _load_spatial(path)
    _image_shape(path, image)
    with _as_bad_record(path, "not a readable NIfTI file"):
        if canonical:
            image = nib.as_closest_canonical(image)
        array = np.asarray(image.get_fdata(dtype=np.float32))
        affine = np.asarray(image.affine, dtype=np.float64)
        zooms = (tuple(float(z) for z in image.header.get_zooms()[:3]) + (1.0, 1.0))[:3]
    array = check_finite(check_rank(array, ndim, path), path, nonfinite=nonfinite)
    if array.ndim == 2:  # a single slice: give it its slice axis
        array = array[..., None]
    return Volume(array, affine, zooms, tuple(nib.aff2axcodes(affine)))


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads a PNG/JPEG (any Pillow format) as ``(H, W)`` grey or ``(H, W, C)`` colour.

    Palette images become RGB(A); the pixel dtype is kept (uint8, or uint16/int32 for
    16-bit PNGs).
    """
    path = Path(path)
    _require_file(path)
    with _as_bad_record(path, "not a readable image"), Image.open(path) as image:
        image.load()
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("L" if image.mode == "1" else "RGB")
        array = np.asarray(image)
    return check_rank(array, (2, 3), path)


def _dicom_files(
    path_or_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> list[Path]:
    """A directory's files (sorted by name), one file, or the given list of files."""
    if isinstance(path_or_files, (str, os.PathLike)):
        path = Path(path_or_files)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise BadRecordError(path, None, "directory holds no DICOM files")
            return files
        return [path]
    files = [Path(p) for p in path_or_files]
    if not files:
        raise BadRecordError("<empty DICOM file list>", None, "no files given")
    return files


def _integer(path: Path, dataset: pydicom.Dataset, keyword: str, default: int) -> int:
    """A positive integer attribute (``default`` when absent or empty), else BadRecordError."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return default
    with _as_bad_record(path, f"not an integer: {value!r:.40}", keyword):
        number = int(value)
    if number < 1:
        raise BadRecordError(path, keyword, f"expected a positive integer, got {value!r:.40}")
    return number


def _read_dicom_file(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """One DICOM file and its pixels as f32 ``(frames, rows, cols)``, rescale not yet applied."""
    _require_file(path)
    with _as_bad_record(path, "not a readable DICOM image"):
        dataset = pydicom.dcmread(path)
    frames = _integer(path, dataset, "NumberOfFrames", 1)
    if _integer(path, dataset, "SamplesPerPixel", 1) != 1:
        raise BadRecordError(path, "SamplesPerPixel", "colour DICOM images are not volumes")
    shape = (frames, _integer(path, dataset, "Rows", 0), _integer(path, dataset, "Columns", 0))
    with _as_bad_record(path, "not a readable DICOM image: pixels not decodable", "PixelData"):
        pixels = np.asarray(dataset.pixel_array, dtype=np.float32)
    if pixels.size != math.prod(shape):
        raise BadRecordError(
            path,
            "PixelData",
            f"holds {pixels.shape} pixels, the header says NumberOfFrames x Rows x Columns "
            f"= {shape}",
        )
    return dataset, pixels.reshape(shape)


def _functional_group(
    dataset: pydicom.Dataset, frame: int, sequence: str
) -> pydicom.Dataset | None:
    """The per-frame (else shared) functional group item ``sequence`` of an enhanced image."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = dataset.get(groups)
        if items is not None and len(items) > index and sequence in items[index]:
            return items[index][sequence][0]
    return None


def _frame_attribute(dataset: pydicom.Dataset, frame: int, sequence: str, keyword: str):
    """An attribute from the top level or from an enhanced image's functional groups.

    Returns None when the attribute is absent or empty.
    """
    if keyword in dataset:
        value = dataset.get(keyword)
    else:
        item = _functional_group(dataset, frame, sequence)
        value = None if item is None else item.get(keyword)
    return None if value is None or value == "" else value


def _field(path: Path, keyword: str, value, length: int) -> np.ndarray:
    """A multi-valued DICOM attribute as ``length`` finite f64 numbers, else BadRecordError."""
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise BadRecordError(path, keyword, f"not numeric: {value!r}") from err
    if array.shape != (length,) or not np.all(np.isfinite(array)):
        raise BadRecordError(path, keyword, f"expected {length} finite numbers, got {value!r}")
    return array


def _number(path: Path, keyword: str, value, default: float) -> float:
    """A numeric attribute as a finite float (``default`` when None), else BadRecordError."""
    if value is None:
        return default
    with _as_bad_record(path, f"not a number: {value!r:.40}", keyword):
        number = float(value)
    if not math.isfinite(number):
        raise BadRecordError(path, keyword, f"not a finite number: {value!r:.40}")
    return number


@dataclasses.dataclass(frozen=True)
class _Slice:
    """One 2-D frame of a series with the geometry needed to stack it."""

    pixels: np.ndarray  # f32 (rows, cols), rescaled
    position: np.ndarray | None  # ImagePositionPatient (LPS mm) or None
    instance: int  # InstanceNumber (or frame order)
    orientation: np.ndarray  # (6,) row and column direction cosines (LPS)
    pixel_spacing: np.ndarray  # (2,) spacing between rows, between columns (mm)
    slice_gap: float  # SpacingBetweenSlices / SliceThickness fallback (mm)


def _slices_of(path: Path, dataset: pydicom.Dataset, frames: np.ndarray) -> list[_Slice]:
    """Splits a (possibly multi-frame) DICOM file into rescaled, geometry-tagged slices."""
    out = []
    for f, pixels in enumerate(frames):
        attr = lambda seq, key, f=f: _frame_attribute(dataset, f, seq, key)
        slope = attr("PixelValueTransformationSequence", "RescaleSlope")
        intercept = attr("PixelValueTransformationSequence", "RescaleIntercept")
        pixels = pixels * np.float32(_number(path, "RescaleSlope", slope, 1.0))
        pixels = pixels + np.float32(_number(path, "RescaleIntercept", intercept, 0.0))
        position = attr("PlanePositionSequence", "ImagePositionPatient")
        orientation = attr("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = attr("PixelMeasuresSequence", "PixelSpacing")
        gap = (
            dataset.get("SpacingBetweenSlices")
            or attr("PixelMeasuresSequence", "SpacingBetweenSlices")
            or attr("PixelMeasuresSequence", "SliceThickness")
            or 1.0
        )
        instance = dataset.get("InstanceNumber") if len(frames) == 1 else f
        out.append(
            _Slice(
                pixels=pixels,
                position=(
                    None if position is None else _field(path, "ImagePositionPatient", position, 3)
                ),
                instance=int(_number(path, "InstanceNumber", instance or 0, 0)),
                orientation=(
                    np.array([1.0, 0, 0, 0, 1, 0])
                    if orientation is None
                    else _field(path, "ImageOrientationPatient", orientation, 6)
                ),
                pixel_spacing=(
                    np.ones(2) if spacing is None else _field(path, "PixelSpacing", spacing, 2)
                ),
                slice_gap=_number(path, "SpacingBetweenSlices/SliceThickness", gap, 1.0),
            )
        )
    return out


def _stack_order(slices: list[_Slice], normal: np.ndarray) -> tuple[list[int], np.ndarray | None]:
    """Slice order along ``normal`` (by position), else by InstanceNumber; and the positions."""
    if all(s.position is not None for s in slices):
        distances = np.array([s.position @ normal for s in slices])
        order = sorted(range(len(slices)), key=lambda n: (distances[n], slices[n].instance))
        return order, distances[order]
    return sorted(range(len(slices)), key=lambda n: slices[n].instance), None


def read_dicom_series(
    path_or_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    nonfinite: str = "error",
) -> Volume:
    """Reads a DICOM series (a directory, a list of files, or one single/multi-frame file).

    Slices are sorted by ``ImagePositionPatient`` projected on the slice normal (the cross
    product of the ``ImageOrientationPatient`` row and column directions), falling back to
    ``InstanceNumber`` when positions are missing. ``RescaleSlope``/``RescaleIntercept``
    are applied (per frame for enhanced multi-frame files). Spacing comes from
    ``PixelSpacing`` and the sorted slice positions (else ``SpacingBetweenSlices``, else
    ``SliceThickness``); missing geometry defaults to 1 mm and identity directions.
    ``nonfinite``: 'error' or 'zero' for NaN/Inf voxels (:func:`check_finite`).

    Returns:
      A :class:`Volume` of f32 ``(cols, rows, slices)`` = ``(I, J, K)`` voxels with a RAS
      affine, like a NIfTI converted from the series.
    """
    slices: list[_Slice] = []
    files = _dicom_files(path_or_files)
    for path in files:
        dataset, frames = _read_dicom_file(path)
        with _as_bad_record(path, "not a readable DICOM image"):
            slices.extend(_slices_of(path, dataset, frames))
    shapes = {s.pixels.shape for s in slices}
    if len(shapes) != 1:
        raise BadRecordError(files[0], "Rows/Columns", f"slices differ in size: {sorted(shapes)}")
    first = slices[0]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    order, distances = _stack_order(slices, normal)
    ordered = [slices[n] for n in order]
    if distances is not None and len(ordered) > 1:
        gaps = np.diff(distances)
        if np.any(gaps == 0):
            raise BadRecordError(files[0], "ImagePositionPatient", "two slices share a position")
        slice_gap = float(np.median(gaps))
        slice_step = (ordered[-1].position - ordered[0].position) / (len(ordered) - 1)
    else:
        slice_gap = first.slice_gap
        slice_step = normal * slice_gap
    row_spacing, col_spacing = (float(v) for v in first.pixel_spacing)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i runs along a row, i.e. across columns
    lps[:3, 1] = col_dir * row_spacing  # j runs down a column, i.e. across rows
    lps[:3, 2] = slice_step
    lps[:3, 3] = ordered[0].position if ordered[0].position is not None else 0.0
    affine = _LPS_TO_RAS @ lps
    array = np.stack([s.pixels.T for s in ordered], axis=-1)
    array = check_finite(array, files[0], nonfinite=nonfinite)
    return Volume(
        array, affine, (col_spacing, row_spacing, abs(slice_gap)), tuple(nib.aff2axcodes(affine))
    )
