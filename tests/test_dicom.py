"""DICOM X-rays: written by pydicom here, read as the 8-bit grayscale of the training PNGs (bone bright)."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from covfast.cli import app
from covfast.data import read_xray
from covfast.errors import CovfastError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid  # noqa: E402

runner = CliRunner()


def write_dicom(path, pixels: np.ndarray | None, photometric="MONOCHROME2", bits_stored=None, syntax=ExplicitVRLittleEndian,
                **elements):
    "A single-frame grayscale DICOM file of `pixels` (uint8 or uint16), or without pixel data (None)."
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "DX", "Synthetic^Test"
    if pixels is not None:
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits_stored or bits, (bits_stored or bits) - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))  # 8 x 16, 0 .. 240


def test_monochrome2_reads_as_stored_and_monochrome1_inverted(tmp_path):
    plain = read_xray(write_dicom(tmp_path / "m2.dcm", RAMP))
    assert plain.dtype == np.uint8 and plain.shape == (8, 16)
    # 8-bit with no window: kept as stored, so it is the very gray a PNG of the same pixels gives (not stretched)
    from PIL import Image
    Image.fromarray(RAMP).save(tmp_path / "m2.png")
    assert (plain == RAMP).all() and (plain == read_xray(tmp_path / "m2.png")).all()
    inverted = read_xray(write_dicom(tmp_path / "m1.dcm", RAMP, photometric="MONOCHROME1"))
    assert (inverted.astype(int) + plain.astype(int) == 255).all()  # low values bright in the file: bone bright here


def test_twelve_bits_with_a_rescale_and_a_window(tmp_path):
    stored = np.tile(np.array([0, 1000, 2000, 3000, 4095], np.uint16), (4, 1))
    # rescaled: stored * 2 - 1024 = -1024, 976, 2976, 4976, 7166; the window 976..4976
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                       WindowCenter=2976, WindowWidth=4000)
    assert read_xray(path)[0].tolist() == [0, 0, 128, 255, 255]  # below the window black, above it white, 2976 halfway
    unwindowed = read_xray(write_dicom(tmp_path / "r.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024))
    assert unwindowed[0].tolist() == [0, 62, 125, 187, 255]  # no window: the rescaled range, 0..255


def test_dicom_without_pixel_data_or_with_an_unread_codec_is_named(tmp_path):
    with pytest.raises(CovfastError, match="without pixel data"):
        read_xray(write_dicom(tmp_path / "empty.dcm", None))
    compressed = write_dicom(tmp_path / "jpeg.dcm", None, syntax=JPEGBaseline8Bit)
    ds = pydicom.dcmread(compressed)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not really a jpeg \xff\xd9"])
    ds["PixelData"].VR = "OB"  # encapsulated pixel data is OB
    ds.save_as(compressed, enforce_file_format=True)
    with pytest.raises(CovfastError, match="JPEG Baseline"):
        read_xray(compressed)


def test_predict_reads_dicom_beside_pngs_and_goes_on_past_bad_ones(synth_root, tmp_path, monkeypatch, fake_run):
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path, synth_root, "r", infection=True)
    folder = tmp_path / "xrays"
    folder.mkdir()
    gray = np.asarray(read_xray(sorted((synth_root / "Infection Segmentation Data" / "Test" / "COVID-19" / "images").iterdir())[0]))
    write_dicom(folder / "chest.dcm", gray)
    write_dicom(folder / "no-image.dcm", None)
    result = runner.invoke(app, ["predict", "r", str(folder), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "no-image.dcm" in result.stderr and "without pixel data" in result.stderr
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert len(table) == 1 and table["mask"][0] == "masks/chest.png" and (tmp_path / "p" / "overlays" / "chest.png").is_file()


def test_an_empty_window_center_falls_back_to_the_image_range(tmp_path):
    "A user's DICOM with Window Center and Width present but empty: read as if it had no window, not a TypeError."
    stored = np.tile(np.array([0, 1000, 2000, 4000], np.uint16), (4, 1))
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, WindowCenter=None, WindowWidth=None)
    assert read_xray(path)[0].tolist() == [0, 64, 128, 255]


def test_a_dicom_cut_short_is_named_damaged_not_compressed(tmp_path):
    "The header promises 8x16 bytes; the file holds half: one line saying so, and no advice to install a decoder."
    path = write_dicom(tmp_path / "short.dcm", RAMP)
    ds = pydicom.dcmread(path)
    ds.PixelData = RAMP.tobytes()[:64]
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(CovfastError, match="promises 128 bytes of pixel data .* holds 64") as e:
        read_xray(path)
    assert "pylibjpeg" not in str(e.value) and "compressed" not in str(e.value)
    cut = tmp_path / "cut.dcm"  # the file itself truncated mid pixel data
    cut.write_bytes(write_dicom(tmp_path / "whole.dcm", RAMP).read_bytes()[:-40])
    with pytest.raises(CovfastError, match="damaged") as e:
        read_xray(cut)
    assert "pylibjpeg" not in str(e.value)


def test_a_corrupt_dicom_is_named_corrupt_and_pydicom_warns_nothing_on_the_terminal(tmp_path, recwarn):
    path = tmp_path / "junk.dcm"
    whole = write_dicom(tmp_path / "good.dcm", RAMP).read_bytes()
    path.write_bytes(whole[:132] + bytes(range(256)) * 4)  # the DICM mark, then noise
    with pytest.raises(CovfastError, match="damaged") as e:
        read_xray(path)
    assert "without pixel data" not in str(e.value)
    assert not [w for w in recwarn if "pydicom" in (w.filename or "") or "pydicom" in str(w.message)]


def test_a_small_compressed_dicom_that_decodes_huge_is_refused_before_decoding(tmp_path):
    "62 KB on disk, 8000x8000 once decoded: refused on its header (the PNG limit), nothing decoded."
    path = write_dicom(tmp_path / "huge.dcm", None, syntax=JPEGBaseline8Bit)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8000, 8000, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + bytes(60000) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(CovfastError, match="8000x8000 pixels, larger than covfast reads \\(50 megapixels at most\\)"):
        read_xray(path)
