"""The header values ingest reads, taken straight from the bytes of an uncompressed little-endian DICOM file.

pydicom's parse builds every element of the file and converts each one on first access (`DataElement_from_raw`):
on a 512 px CT slice that is about half of what decoding it costs, more than reading its pixels
(docs/BENCHMARKS.md, "The floor under issue 25's 2x"). Ingest needs twenty values, so `parse` walks the elements,
keeps those twenty and the Pixel Data, and converts them as pydicom would (DS to float, IS and US to int, CS and
UI to stripped text). Anything it does not expect (no file meta, another transfer syntax, a VR or a value
multiplicity other than the standard's, a value that does not convert, an encapsulated or odd-sized Pixel Data,
a truncated file) gives None, and the caller reads the file with pydicom, which decodes it or says why not.
"""
from __future__ import annotations

import struct
from typing import Optional

from ctseg import dicom

_EXPLICIT_VR_LE, _IMPLICIT_VR_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010

# tag: (keyword, VR, value multiplicity; 0 = one or more)
_WANTED = {
    0x00080008: ("ImageType", "CS", 0),
    0x00080016: ("SOPClassUID", "UI", 1),
    0x00080060: ("Modality", "CS", 1),
    0x00180050: ("SliceThickness", "DS", 1),
    0x00200013: ("InstanceNumber", "IS", 1),
    0x00200032: ("ImagePositionPatient", "DS", 3),
    0x00200037: ("ImageOrientationPatient", "DS", 6),
    0x00280002: ("SamplesPerPixel", "US", 1),
    0x00280004: ("PhotometricInterpretation", "CS", 1),
    0x00280008: ("NumberOfFrames", "IS", 1),
    0x00280010: ("Rows", "US", 1),
    0x00280011: ("Columns", "US", 1),
    0x00280030: ("PixelSpacing", "DS", 2),
    0x00280100: ("BitsAllocated", "US", 1),
    0x00280101: ("BitsStored", "US", 1),
    0x00280103: ("PixelRepresentation", "US", 1),
    0x00281052: ("RescaleIntercept", "DS", 1),
    0x00281053: ("RescaleSlope", "DS", 1),
}
_TEXT = {"DS": float, "IS": int, "CS": str, "UI": str}


class _Unexpected(Exception):
    """Something this reader leaves to pydicom."""


class RawHeader:
    """The values `ctseg.dicom`, `ctseg.geometry` and `ctseg.slice_decode` read from a slice, with pydicom's
    Dataset interface for them (`get`, `in`, attributes) and Pixel Data as a read-only view of the file's bytes."""

    is_little_endian = True

    def __init__(self, values: dict, transfer_syntax: str):
        self._values = values
        self.file_meta = {"TransferSyntaxUID": transfer_syntax}

    def get(self, keyword: str, default=None):
        return self._values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self._values

    def __getattr__(self, keyword: str):
        if keyword.startswith("_"):
            raise AttributeError(keyword)
        try:
            return self._values[keyword]
        except KeyError:
            raise AttributeError(keyword) from None


def parse(data: bytes) -> Optional[RawHeader]:
    """The header of `data` if it is a single file of uncompressed little-endian pixels this reader fully
    understands, else None (read it with pydicom)."""
    view = memoryview(data)
    try:
        offset = 132 if view[128:132] == b"DICM" else 0
        transfer_syntax, offset = _file_meta(view, offset)
        if transfer_syntax not in (_EXPLICIT_VR_LE, _IMPLICIT_VR_LE):
            return None
        values = _dataset(view, offset, transfer_syntax == _EXPLICIT_VR_LE)
    except (_Unexpected, struct.error, ValueError, UnicodeDecodeError):
        return None
    header = RawHeader(values, transfer_syntax)
    return header if "PixelData" in values and dicom._raw_pixels(header) is not None else None


def _file_meta(view: memoryview, offset: int) -> tuple[str, int]:
    """The transfer syntax of the file meta group (always explicit VR little endian) and where the dataset starts."""
    transfer_syntax = None
    while offset + 8 <= len(view) and struct.unpack_from("<H", view, offset)[0] == 0x0002:
        tag, vr, length, offset = _element_header(view, offset, explicit=True)
        if length == _UNDEFINED:
            raise _Unexpected
        if tag == 0x00020010:
            transfer_syntax = _text(view[offset:offset + length])
        offset += length
    if transfer_syntax is None:
        raise _Unexpected   # no file meta: pydicom guesses the encoding
    return transfer_syntax, offset


def _element_header(view: memoryview, offset: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    group, element = struct.unpack_from("<HH", view, offset)
    tag = group << 16 | element
    if group == 0xFFFE:     # item and delimitation tags have no VR
        return tag, None, struct.unpack_from("<I", view, offset + 4)[0], offset + 8
    if not explicit:
        return tag, None, struct.unpack_from("<I", view, offset + 4)[0], offset + 8
    vr = bytes(view[offset + 4:offset + 6])
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Unexpected   # not a VR: the dataset is not the explicit VR its file meta says (pydicom copes)
    if vr in _LONG_VRS:
        return tag, vr, struct.unpack_from("<I", view, offset + 8)[0], offset + 12
    return tag, vr, struct.unpack_from("<H", view, offset + 6)[0], offset + 8


def _dataset(view: memoryview, offset: int, explicit: bool) -> dict:
    values: dict = {}
    previous = -1
    while offset < len(view):
        tag, vr, length, offset = _element_header(view, offset, explicit)
        if tag <= previous:
            raise _Unexpected   # out of order or repeated: pydicom decides which one counts
        previous = tag
        if tag == _PIXEL_DATA:
            if length == _UNDEFINED or offset + length > len(view):
                raise _Unexpected   # encapsulated (compressed) or truncated
            values["PixelData"] = view[offset:offset + length]
            return values
        end = _after(view, offset, vr, length, explicit)
        wanted = _WANTED.get(tag)
        if wanted is not None and length != _UNDEFINED:
            values[wanted[0]] = _value(view[offset:end], vr, *wanted[1:])
        offset = end
    return values


def _after(view: memoryview, offset: int, vr: bytes | None, length: int, explicit: bool) -> int:
    """Where the element whose value starts at `offset` ends: past its value, or past its sequence of undefined
    length."""
    if length != _UNDEFINED:
        if offset + length > len(view):
            raise _Unexpected   # truncated
        return offset + length
    if vr not in (None, b"SQ"):
        raise _Unexpected       # UN of undefined length: implicit VR inside explicit
    return _skip_sequence(view, offset, explicit)


def _skip_sequence(view: memoryview, offset: int, explicit: bool) -> int:
    """The offset after a sequence of undefined length whose items start at `offset`."""
    while True:
        tag, _, length, offset = _element_header(view, offset, explicit)
        if tag == _SEQUENCE_END:
            return offset
        if tag != _ITEM:
            raise _Unexpected
        if length != _UNDEFINED:
            offset = _after(view, offset, None, length, explicit)
            continue
        while True:     # an item of undefined length: its elements up to the item delimiter
            tag, vr, length, offset = _element_header(view, offset, explicit)
            if tag == _ITEM_END:
                break
            offset = _after(view, offset, vr, length, explicit)


def _value(raw: memoryview, vr: bytes | None, expected_vr: str, multiplicity: int):
    """A value as pydicom converts it; an empty one as None (ctseg reads an empty value as an absent one)."""
    if vr is not None and vr.decode("ascii") != expected_vr:
        raise _Unexpected
    if expected_vr == "US":
        if len(raw) != 2:
            raise _Unexpected
        return struct.unpack_from("<H", raw)[0]
    text = _text(raw)
    if not text:
        return None
    parts = [_TEXT[expected_vr](p.strip()) for p in text.split("\\")]
    if multiplicity == 0:
        return parts[0] if len(parts) == 1 else parts
    if len(parts) != multiplicity:
        raise _Unexpected
    return parts[0] if multiplicity == 1 else parts


def _text(raw: memoryview) -> str:
    return bytes(raw).decode("ascii").rstrip("\x00 ").lstrip(" ")
