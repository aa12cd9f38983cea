"""Readers on real files shipped in installed packages, and on broken copies of them."""

import copy
import gzip
import os
import pickle
import shutil
from pathlib import Path

import ml_collections
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radjax.data.errors import BadRecordError
from radjax.data.readers import (
    array_shape,
    check_finite,
    nonfinite_policy,
    nonfinite_repairs,
    read_dicom_series,
    read_image,
    read_nifti,
    read_npy,
    require_files,
    resolve_path,
)

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
MNI152 = (
    Path(pytest.importorskip("nilearn").__file__).parent
    / "datasets"
    / "data"
    / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
)
MPL_DATA = Path(pytest.importorskip("matplotlib").get_data_path()) / "sample_data"


def _raises(call, *parts):
    """Runs ``call`` expecting BadRecordError whose message contains every string in parts."""
    with pytest.raises(BadRecordError) as info:
        call()
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    return info.value


# ---- errors ----------------------------------------------------------------------------


def test_bad_record_error_reads_file_field_message_and_pickles():
    err = BadRecordError("case.json", "Samples[0].image_data_path", "missing")
    assert str(err) == "case.json: Samples[0].image_data_path: missing"
    assert str(BadRecordError("x.npy", None, "file not found")) == "x.npy: file not found"
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.field, back.message) == (err.path, err.field, err.message)


# ---- NIfTI -----------------------------------------------------------------------------


def test_read_nifti_real_anatomical_t1():
    path = NIB_DATA / "anatomical.nii"
    vol = read_nifti(path)
    ref = nib.load(path)
    assert vol.array.shape == (33, 41, 25) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, ref.get_fdata().astype(np.float32))
    assert vol.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(vol.affine, ref.affine)
    assert vol.orientation == nib.aff2axcodes(ref.affine) == ("L", "A", "S")


def test_read_nifti_canonical_reorients_4d_to_ras():
    path = NIB_DATA / "example4d.nii.gz"
    raw = read_nifti(path)
    ras = read_nifti(path, canonical=True)
    assert raw.orientation == ("L", "A", "S") and ras.orientation == ("R", "A", "S")
    assert ras.array.shape == (128, 96, 24, 2)
    np.testing.assert_array_equal(ras.array, raw.array[::-1])  # L->R flips axis i
    np.testing.assert_allclose(ras.spacing, (2.0, 2.0, 2.2), atol=1e-5)
    _raises(lambda: read_nifti(path, ndim=3), "example4d.nii.gz", "rank 3", "(128, 96, 24, 2)")


def test_read_nifti_truncated_gz_names_file(tmp_path):
    data = (NIB_DATA / "example4d.nii.gz").read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    _raises(lambda: read_nifti(bad), str(bad), "not a readable NIfTI")


def test_read_nifti_truncated_uncompressed_and_garbage(tmp_path):
    data = (NIB_DATA / "anatomical.nii").read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(data[: len(data) - 1000])
    _raises(lambda: read_nifti(cut), "cut.nii: dim:", "(33, 41, 25)", "the file holds")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header" * 30))
    _raises(lambda: read_nifti(junk), "junk.nii.gz", "not a readable NIfTI")
    _raises(lambda: read_nifti(tmp_path / "absent.nii"), "absent.nii", "file not found")


def _with_header(source: Path, out: Path, **fields) -> Path:
    """``source`` (a real NIfTI-1 file) written to ``out`` uncompressed, with header
    ``fields`` overwritten and the voxel data kept."""
    raw = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(raw))
    for name, value in fields.items():
        header[name] = value
    out.write_bytes(header.binaryblock + raw[len(header.binaryblock) :])
    return out


def _nifti_damage(tmp_path):
    """(file, field or None, message part) for each kind of NIfTI input nibabel rejects."""
    dim = list(nib.load(NIB_DATA / "anatomical.nii").header["dim"])
    dim[3] *= 4  # 4x the slices the file holds
    return [
        (_with_header(MNI152, tmp_path / "dtype.nii", datatype=9999), "datatype", "data code"),
        (_with_header(NIB_DATA / "anatomical.nii", tmp_path / "deep.nii", dim=dim), "dim", "holds"),
        (NIB_DATA / "row_major.dconn.nii", None, "Cifti2Image"),  # CIFTI-2: no affine
        (tmp_path / "noise.nii", None, "ImageFileError"),
    ]


@pytest.mark.parametrize("read", [read_nifti, array_shape], ids=["read_nifti", "array_shape"])
def test_nibabel_errors_name_file_and_header_field(tmp_path, read):
    (tmp_path / "noise.nii").write_bytes(np.random.default_rng(0).bytes(400))
    for path, field, part in _nifti_damage(tmp_path):
        err = _raises(lambda path=path: read(path), str(path), part)
        assert err.field == field, (path, str(err))


def test_array_shape_reads_headers_only_and_checks_npy_size(tmp_path):
    assert array_shape(MNI152) == (197, 233, 189)
    np.save(tmp_path / "vol.npy", np.zeros((3, 8, 8, 5), np.float32))
    assert array_shape(tmp_path / "vol.npy") == (3, 8, 8, 5)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "vol.npy").read_bytes()[:500])
    err = _raises(lambda: array_shape(tmp_path / "cut.npy"), "cut.npy", "(3, 8, 8, 5)", "holds")
    assert err.field == "dim"


def _dicom_damage(name: str, tmp_path: Path) -> list[tuple[Path, str]]:
    """(file, field) for broken copies of pydicom's real file ``name``."""
    source = get_testdata_file(name)
    cases = {
        "PixelData": lambda ds: delattr(ds, "PixelData"),
        "PixelData ": lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]),
        "PixelData  ": lambda ds: setattr(ds, "Rows", ds.Rows // 3),  # pixels do not fit
        "RescaleSlope": lambda ds: ds.add_new(0x00281053, "LO", "1,5"),
        "NumberOfFrames": lambda ds: ds.add_new(0x00280008, "LO", "ten"),
    }
    out = []
    for n, (field, damage) in enumerate(cases.items()):
        dataset = pydicom.dcmread(source)
        damage(dataset)
        out.append((tmp_path / f"{n}_{name}", field.strip()))
        dataset.save_as(out[-1][0])
    return out


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm"])
def test_dicom_errors_name_file_and_field(tmp_path, name):
    for path, field in _dicom_damage(name, tmp_path):
        err = _raises(lambda path=path: read_dicom_series(path), str(path), field)
        assert err.field == field, str(err)


def test_nonfinite_voxels_zeroed_on_request_and_reported(tmp_path):
    path = NIB_DATA / "resampled_anat_moved.nii"  # real file, NaN outside the brain
    raw = nib.load(path).get_fdata(dtype=np.float32)
    with nonfinite_repairs() as repairs:
        fixed = read_nifti(path, nonfinite="zero").array
        assert read_nifti(NIB_DATA / "anatomical.nii", nonfinite="zero").array.size
    assert np.isfinite(fixed).all() and (fixed[~np.isfinite(raw)] == 0).all()
    np.testing.assert_array_equal(fixed[np.isfinite(raw)], raw[np.isfinite(raw)])
    assert len(repairs) == 1 and "resampled_anat_moved.nii" in repairs[0]
    values = np.ones((4, 4, 2), np.float32)
    values[0, 0, 0] = -np.inf
    np.save(tmp_path / "inf.npy", values)
    _raises(lambda: read_npy(tmp_path / "inf.npy"), "inf.npy", "1 non-finite")
    assert read_npy(tmp_path / "inf.npy", nonfinite="zero")[0, 0, 0] == 0  # outside any block
    assert nonfinite_policy(ml_collections.ConfigDict()) == "error"
    with pytest.raises(ValueError, match="data.nonfinite 'zeros'"):
        nonfinite_policy(ml_collections.ConfigDict(dict(nonfinite="zeros")))


def test_require_files_names_root_and_missing_file(tmp_path):
    (tmp_path / "train.json").write_text("{}")
    require_files(tmp_path, ["train.json"], "a copy")
    with pytest.raises(FileNotFoundError, match=r"lacks test\.json \(and 1 more files\)"):
        require_files(tmp_path, ["train.json", "test.json", "labels.json"], "a copy")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'typo'} does not exist"):
        require_files(tmp_path / "typo", ["train.json"], "a copy")


def test_read_nifti_real_file_with_nans_is_rejected():
    # nibabel ships a resampled anatomical image whose outside voxels are NaN.
    _raises(
        lambda: read_nifti(NIB_DATA / "resampled_anat_moved.nii"),
        "resampled_anat_moved.nii",
        "non-finite",
        "(17, 21, 3)",
    )


# ---- DICOM -----------------------------------------------------------------------------


def test_read_dicom_ct_slice_applies_rescale_and_geometry():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = read_dicom_series(path)
    assert vol.array.shape == (128, 128, 1)
    expected = ds.pixel_array.T.astype(np.float32) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept
    )
    np.testing.assert_array_equal(vol.array[..., 0], expected)
    assert vol.array.min() == ds.pixel_array.min() - 1024
    np.testing.assert_allclose(vol.spacing, (0.661468, 0.661468, 5.0))
    # LPS position (-158.1, -179.0, -75.7) -> RAS (158.1, 179.0, -75.7); axes i=-x, j=-y.
    np.testing.assert_allclose(vol.affine[:3, 3], (158.135803, 179.035797, -75.699997))
    np.testing.assert_allclose(np.diag(vol.affine)[:3], (-0.661468, -0.661468, 5.0))
    assert vol.orientation == ("L", "P", "S")


def test_read_dicom_mr_slice_without_rescale():
    path = get_testdata_file("MR_small.dcm")
    vol = read_dicom_series([path])
    np.testing.assert_array_equal(vol.array[..., 0], pydicom.dcmread(path).pixel_array.T)
    np.testing.assert_allclose(vol.spacing, (0.3125, 0.3125, 0.8))


def test_read_dicom_enhanced_multiframe_without_positions():
    path = get_testdata_file("emri_small.dcm")  # pydicom-data: 10 frames, no plane positions
    frames = pydicom.dcmread(path).pixel_array
    vol = read_dicom_series(path)
    assert vol.array.shape == (64, 64, 10)
    np.testing.assert_array_equal(vol.array, np.transpose(frames, (2, 1, 0)))
    assert vol.spacing == (1.0, 1.0, 1.2)  # SpacingBetweenSlices; no PixelSpacing


def test_read_dicom_enhanced_ct_sorts_frames_by_position():
    path = get_testdata_file("eCT_Supplemental.dcm")  # 2 frames stored in reverse z order
    frames = pydicom.dcmread(path).pixel_array.astype(np.float32)
    vol = read_dicom_series(path)
    # Frame 1 (z=-149) comes first along the normal (0, 0, -1); intercept -1024 per frame.
    np.testing.assert_array_equal(vol.array[..., 0], frames[1].T - 1024)
    np.testing.assert_array_equal(vol.array[..., 1], frames[0].T - 1024)
    np.testing.assert_allclose(vol.spacing, (0.388672, 0.388672, 10.0))
    np.testing.assert_allclose(vol.affine[:3, 3], (-99.5, 301.5, -149.0))
    np.testing.assert_allclose(vol.affine[:3, 2], (0.0, 0.0, -10.0))


def test_read_dicom_real_two_slice_series_in_any_order(tmp_path):
    files = [NIB_DATA / "1.dcm", NIB_DATA / "0.dcm"]
    first = pydicom.dcmread(NIB_DATA / "0.dcm").pixel_array
    vol = read_dicom_series(files)
    np.testing.assert_array_equal(vol.array[..., 0], first.T)
    # Positions differ by 3 mm in z; the slice normal is tilted by 0.3 degrees.
    np.testing.assert_allclose(vol.spacing[2], 3.0 * 0.999986, rtol=1e-6)
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    np.testing.assert_array_equal(read_dicom_series(tmp_path).array, vol.array)


def test_read_dicom_falls_back_to_instance_number(tmp_path):
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    paths = []
    for instance in (3, 1, 2):
        ds = copy.deepcopy(src)
        del ds.ImagePositionPatient
        ds.InstanceNumber = instance
        ds.PixelData = (src.pixel_array + instance * 10).astype(src.pixel_array.dtype).tobytes()
        paths.append(tmp_path / f"slice{instance}.dcm")
        ds.save_as(paths[-1])
    vol = read_dicom_series(paths)
    offsets = [float((vol.array[..., k] - vol.array[..., 0]).mean()) for k in range(3)]
    assert offsets == [0.0, 10.0, 20.0]
    assert vol.spacing[2] == 5.0  # SpacingBetweenSlices


def test_read_dicom_truncated_and_not_dicom(tmp_path):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 5000])
    _raises(lambda: read_dicom_series(cut), "cut.dcm", "not a readable DICOM")
    text = tmp_path / "notes.dcm"
    text.write_text("hello")
    _raises(lambda: read_dicom_series([text]), "notes.dcm", "not a readable DICOM")


def test_read_dicom_series_of_different_sizes_is_rejected():
    files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    _raises(lambda: read_dicom_series(files), "CT_small.dcm", "Rows/Columns", "differ")


# ---- npy -------------------------------------------------------------------------------


def test_read_npy_roundtrip_and_rank(tmp_path):
    path = tmp_path / "vol.npy"
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(path, array)
    np.testing.assert_array_equal(read_npy(path, ndim=3), array)
    _raises(lambda: read_npy(path, ndim=(2,)), "vol.npy", "rank 2", "(2, 3, 4)")


def test_read_npy_corrupt_truncated_pickled_nonfinite(tmp_path):
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x00\x01 definitely not numpy")
    _raises(lambda: read_npy(garbage), "garbage.npy", "not a readable .npy")
    full = tmp_path / "full.npy"
    np.save(full, np.ones((64, 64, 8), np.float32))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(full.read_bytes()[:5000])
    _raises(lambda: read_npy(cut), "cut.npy", "not a readable .npy")
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _raises(lambda: read_npy(pickled), "obj.npy", "not a readable .npy")
    nan = tmp_path / "nan.npy"
    values = np.zeros((4, 4, 2), np.float32)
    values[1, 2, 0], values[3, 3, 1] = np.nan, np.inf
    np.save(nan, values)
    _raises(lambda: read_npy(nan), "nan.npy", "2 non-finite")


def test_check_finite_passes_integers_and_names_field():
    ints = np.arange(5)
    assert check_finite(ints, "a.npy") is ints
    _raises(lambda: check_finite(np.array([1.0, np.nan]), "a.npy", "key"), "a.npy: key:")


# ---- PNG / JPEG ------------------------------------------------------------------------


def test_read_image_real_jpeg_and_png():
    photo = read_image(MPL_DATA / "grace_hopper.jpg")
    assert photo.shape == (600, 512, 3) and photo.dtype == np.uint8
    logo = read_image(MPL_DATA / "logo2.png")
    assert logo.shape == (130, 542, 4)


def test_read_image_grey_16bit_and_truncated(tmp_path):
    grey = (np.arange(40 * 30) % 251).astype(np.uint8).reshape(40, 30)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), grey)
    deep = (np.arange(20 * 10) * 300).astype(np.uint16).reshape(20, 10)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), deep)
    data = (MPL_DATA / "grace_hopper.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    _raises(lambda: read_image(tmp_path / "cut.jpg"), "cut.jpg", "not a readable image")


# ---- paths -----------------------------------------------------------------------------


def test_resolve_path_stays_inside_root(tmp_path):
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    assert resolve_path(root, "data/a.npy") == (root / "data" / "a.npy").resolve()
    assert resolve_path(root, root / "data" / "b.npy") == (root / "data" / "b.npy").resolve()
    _raises(lambda: resolve_path(root, "../secret.npy"), "../secret.npy", "outside the data root")
    _raises(lambda: resolve_path(root, "/etc/passwd"), "/etc/passwd", "outside the data root")
    os.symlink(tmp_path, root / "escape")
    _raises(lambda: resolve_path(root, "escape/x.npy"), "escape/x.npy", "outside the data root")
