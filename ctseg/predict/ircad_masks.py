"""The prediction as IRCAD-style mask slices (`MASKS_DICOM/liver/image_N`, 0/255), which ingest reads back."""
from __future__ import annotations

import re

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ctseg.predict.series import ORGAN, Series, copy_header

MASK_FOREGROUND = 255  # IRCAD stores mask foreground as 255


def mask_names(series: Series) -> list[str]:
    """IRCAD file names for the masks: the source's own `image_N` names when it has them, so ingest
    pairs each mask with its slice; else `image_<position index>`."""
    names = [s.name for s in series.slices]
    if all(re.fullmatch(r"image_\d+", n) for n in names):
        return names
    return [f"image_{i}" for i in range(len(names))]


def mask_dataset(source: pydicom.Dataset, mask: np.ndarray, series_uid: str) -> pydicom.Dataset:
    """An IRCAD-style mask slice: the source slice's header and geometry, 8-bit pixels 0/255."""
    ds = copy_header(source)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
                    "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = f"MASKS_DICOM/{ORGAN} (ctseg prediction)"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.where(np.asarray(mask) != 0, MASK_FOREGROUND, 0).astype(np.uint8).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds
