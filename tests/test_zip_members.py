"""Zip members are read in one piece (one read, one inflate, the CRC-32 checked) and exactly as zipfile reads
them; anything unusual or damaged goes through zipfile, so the same bytes or the same error come back."""
import io
import zipfile

import pytest

from ctseg import datatree, ircad
from ctseg.zip_limits import MemberError

CONTENT = {"PATIENT_DICOM/image_0": bytes(range(256)) * 700, "PATIENT_DICOM/image_1": b"\0" * 50_000,
           "PATIENT_DICOM/imagé_2": b"utf-8 name", "PATIENT_DICOM/empty": b""}


def _archive(compression: int, seekable: bool = True) -> bytes:
    buf = io.BytesIO()
    target = buf if seekable else _Unseekable(buf)  # an unseekable target makes zipfile write data descriptors
    with zipfile.ZipFile(target, "w", compression) as z:
        for name, data in CONTENT.items():
            z.writestr(name, data)
    return buf.getvalue()


class _Unseekable(io.RawIOBase):
    def __init__(self, buf):
        self._buf = buf

    def writable(self):
        return True

    def write(self, b):
        return self._buf.write(b)

    def tell(self):
        return self._buf.tell()

    def flush(self):
        pass


def _tree(data: bytes) -> datatree.ZipTree:
    return datatree.ZipTree(zipfile.ZipFile(io.BytesIO(data)), "test.zip")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("seekable", [True, False])
def test_members_come_back_in_one_piece_as_zipfile_reads_them(compression, seekable):
    data = _archive(compression, seekable)
    tree = _tree(data)
    reference = zipfile.ZipFile(io.BytesIO(data))
    assert any(i.flag_bits & 0x08 for i in reference.infolist()) == (not seekable)
    for name, content in CONTENT.items():
        info = reference.getinfo(name)
        assert tree._read_whole(info) == content  # the one-piece read, not zipfile's fallback
        assert tree.read(name) == content == reference.read(name)


def _damaged(data: bytes, name: str, at: int) -> bytes:
    """`data` with one byte of `name`'s stored bytes flipped (`at` counts from the end of its local header)."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    start = info.header_offset + 30 + len(info.orig_filename.encode()) + len(info.extra)
    damaged = bytearray(data)
    damaged[start + at] ^= 0x55
    return bytes(damaged)


@pytest.mark.parametrize("compression, at", [(zipfile.ZIP_STORED, 10), (zipfile.ZIP_DEFLATED, 5),
                                             (zipfile.ZIP_DEFLATED, 200)])
def test_a_damaged_member_is_named_with_zipfiles_own_reason(compression, at):
    name = "PATIENT_DICOM/image_0"
    data = _damaged(_archive(compression), name, at)
    with pytest.raises(Exception) as expected:
        zipfile.ZipFile(io.BytesIO(data)).read(name)
    tree = _tree(data)
    assert tree._read_whole(tree._zip.getinfo(name)) is None
    with pytest.raises(MemberError) as got:
        tree.read(name)
    assert got.value.reason == f"damaged zip member ({expected.value})"
    assert got.value.source == f"test.zip!{name}"


def test_a_local_header_that_disagrees_with_the_directory_is_refused_as_zipfile_refuses_it():
    data = _archive(zipfile.ZIP_DEFLATED)
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("PATIENT_DICOM/image_1")
    damaged = bytearray(data)
    damaged[info.header_offset + 30 + len("PATIENT_DICOM/image_")] = ord("9")  # the local header's name only
    tree = _tree(bytes(damaged))
    with pytest.raises(MemberError, match=r"damaged zip member \(File name in directory .* and header .* differ"):
        tree.read("PATIENT_DICOM/image_1")


def test_a_member_that_inflates_past_its_declared_size_is_refused_without_inflating_it():
    """A zip bomb that declares a small size (so that no size or ratio limit stops it) is read no further than
    the size it declares, in both readers, and named as damaged by the CRC check."""
    import struct
    import tracemalloc

    name = "PATIENT_DICOM/image_0"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, b"\0" * (64 << 20))            # deflates to about 64 KiB
    data = bytearray(buf.getvalue())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(name)
    struct.pack_into("<I", data, info.header_offset + 22, 50_000)                      # the local header's size
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 50_000)                                 # the directory's size
    tree = _tree(bytes(data))
    tracemalloc.start()
    try:
        assert tree._read_whole(tree._zip.getinfo(name)) is None
        with pytest.raises(MemberError, match=r"image_0: damaged zip member \(Bad CRC-32"):
            tree.read(name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak >> 20} MiB held while refusing a member of 48 KiB declared"


class _FailingReads(io.BytesIO):
    """A file whose reads fail once `failing` is set (a lost disk or object store under an open archive)."""
    failing = False

    def read(self, *args):
        if self.failing:
            raise OSError(5, "Input/output error")
        return super().read(*args)


def test_a_read_that_fails_is_a_member_error_as_before():
    f = _FailingReads(_archive(zipfile.ZIP_DEFLATED))
    tree = datatree.ZipTree(zipfile.ZipFile(f), "test.zip")
    f.failing = True
    with pytest.raises(MemberError, match=r"image_0: damaged zip member \(\[Errno 5\] Input/output error\)"):
        tree.read("PATIENT_DICOM/image_0")


def test_each_inner_zip_is_read_from_the_outer_zip_once(small_phantom_zip, monkeypatch):
    """A patient's PATIENT_DICOM.zip and MASKS_DICOM.zip are each inflated into memory once and every slice is
    read from that copy: the outer zip is never re-read per slice."""
    reads = []
    read = datatree.ZipTree.read

    def counted(self, path):
        reads.append(self.location(path))
        return read(self, path)

    monkeypatch.setattr(datatree.ZipTree, "read", counted)
    [ref, *_] = ircad.find_patients(str(small_phantom_zip))
    with ircad.open_patient(ref, "liver") as patient:
        for name in patient.image_files:
            patient.images.read(name)
            patient.masks.read(name)
    inner = [where for where in reads if where.endswith(".zip")]
    assert sorted(inner) == [f"{small_phantom_zip}!3Dircadb1/{ref.patient_id}/{part}.zip"
                             for part in ("MASKS_DICOM", "PATIENT_DICOM")]
    assert len(reads) == 2 + 2 * len(patient.image_files)
