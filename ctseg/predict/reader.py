"""The `tf.data` reader of a series' Hounsfield units.

Which reader decodes which file (decided from the header by `choose_reader`, recorded per slice):

- tensorflow-io (`tfio.image.decode_dicom_image`, DCMTK inside) for single-frame MONOCHROME2 images
  of at most 16 bits in an uncompressed, deflated, RLE, lossless-JPEG, JPEG-LS or JPEG 2000 transfer
  syntax, with RescaleSlope >= 1 and no Modality LUT Sequence: the CT series this project sees.
  DCMTK does not return stored values: it renders the modality-LUT range of every storable value
  (from BitsStored and PixelRepresentation) linearly onto the output range, so `scale='preserve'`
  gives 2x the stored value for a 12-bit slice and saturates at 65535 for signed 16-bit CT. We ask
  for `float32, scale='auto'` (that range onto [0, 1]) and invert it exactly with the header's
  BitsStored and PixelRepresentation, then apply RescaleSlope/Intercept ourselves.
- pydicom (`ctseg.dicom.hu_from_dataset`, as ingest uses) for everything else: RescaleSlope < 1
  (DCMTK's rendering then has fewer levels than the stored values), lossy JPEG (the two JPEG
  libraries differ by +-1), MONOCHROME1 (DCMTK inverts it), a Modality LUT Sequence, more than 16
  bits; and as a fallback for any file tfio returns no pixels for, or pixels of the wrong shape.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np
import pydicom

from ctseg.dicom import hu_from_dataset, read_dataset, rescale
from ctseg.predict.series import Series

READERS = ("tfio", "pydicom", "pydicom-fallback")  # index = the reader code `read_hu` yields per slice
TFIO_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",  # raw, deflated
    "1.2.840.10008.1.2.5",                                                                        # RLE
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",                                           # lossless JPEG
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",                                           # JPEG-LS
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",                                           # JPEG 2000
})


def choose_reader(header: pydicom.Dataset) -> str:
    """'tfio' where DCMTK's rendering can be inverted exactly (see the module docstring), else 'pydicom'."""
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    slope, _ = rescale(header)
    ok = (syntax in TFIO_TRANSFER_SYNTAXES
          and str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME2"
          and int(header.get("BitsAllocated", 16)) <= 16
          and slope >= 1.0
          and "ModalityLUTSequence" not in header)
    return "tfio" if ok else "pydicom"


def _stored_range(header: pydicom.Dataset) -> tuple[float, float]:
    """Lowest storable value and the number of steps above it, from BitsStored and PixelRepresentation."""
    bits = int(header.get("BitsStored", header.get("BitsAllocated", 16)))
    signed = int(header.get("PixelRepresentation", 0)) == 1
    return (-(2.0 ** (bits - 1)) if signed else 0.0), 2.0 ** bits - 1


def read_hu(series: Series, indices: Sequence[int] | None = None):
    """A `tf.data.Dataset` of (hu float32 [rows, cols], reader code int32) per slice, in series order, of the
    slices at `indices` (default: all).

    The reader code indexes READERS: tfio, pydicom by choice, or pydicom after tfio returned nothing. Each
    file's bytes are handed to the decoder as its slice is read, not gathered into one tensor of the series.
    """
    import tensorflow as tf
    import tensorflow_io as tfio

    rows, cols = series.shape
    names = [s.name for s in series.slices]
    chosen = np.arange(len(series.slices)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    source = weakref.ref(series)  # TensorFlow keeps the functions below after the reading: not the files' bytes

    def file_bytes(index):  # bytes as they are: TensorFlow keeps a reference to an object array it is given
        return source().slices[int(index)].data

    def pydicom_hu(index):
        i = int(index)
        return hu_from_dataset(read_dataset(source().slices[i].data, names[i]), names[i]).astype(np.float32)

    def via_pydicom(index, code):
        hu = tf.numpy_function(pydicom_hu, [index], tf.float32, stateful=False)
        return tf.reshape(hu, [rows, cols]), tf.constant(code, tf.int32)

    def decode(index, use_tfio, low, steps, slope, intercept):
        def via_tfio():
            contents = tf.reshape(tf.numpy_function(file_bytes, [index], tf.string, stateful=False), [])
            x = tfio.image.decode_dicom_image(contents, dtype=tf.float32, scale="auto", on_error="lossy")
            decoded = tf.equal(tf.size(x), rows * cols)

            def invert():
                stored = tf.round(tf.reshape(x, [rows, cols]) * steps) + low
                return stored * slope + intercept, tf.constant(0, tf.int32)

            return tf.cond(decoded, invert, lambda: via_pydicom(index, 2))

        return tf.cond(use_tfio, via_tfio, lambda: via_pydicom(index, 1))

    headers = [series.slices[i].header for i in chosen]
    ranges = np.array([_stored_range(h) for h in headers], np.float32).reshape(-1, 2)
    slope_intercept = np.array([rescale(h) for h in headers], np.float32).reshape(-1, 2)
    columns = (chosen, np.array([choose_reader(h) == "tfio" for h in headers], bool),
               ranges[:, 0], ranges[:, 1], slope_intercept[:, 0], slope_intercept[:, 1])
    dataset = tf.data.Dataset.from_tensor_slices(columns).map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                                              deterministic=True)
    dataset._ctseg_series = series  # the series lives as long as the dataset (and those made from it), not longer
    return dataset
