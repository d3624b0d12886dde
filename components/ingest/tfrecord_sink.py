"""Gzipped TFRecord files for Beam, written faster than Beam's own TFRecord sink.

Beam's `WriteToTFRecord` compresses at gzip level 6 and computes TFRecord's CRC32C with crcmod in
pure Python; this sink writes the same format (any TFRecord reader with GZIP compression reads it)
with ISA-L's deflate (the `isal` package: zlib's API and format at about a third of zlib's CPU) and the
hardware CRC32C, and compresses records on every core: each record is deflated on its own (ISA-L's level 1
matches within a record) and ends on a sync flush, so the pieces, written in order by one thread, join
into one gzip stream as pigz joins its blocks. ISA-L releases the GIL while it deflates and checksums
(python-isal 1.2.0 and later, its CHANGELOG), so compressing overlaps the decoding of the next slices. Ingest
deflates each record on the decode thread that built it (`deflate_record`) and hands the sink a `DeflatedRecord`;
other records are compressed on the sink's own pool of threads.
"""
from __future__ import annotations

import concurrent.futures
import os
import queue
import struct
import threading
from typing import NamedTuple

import google_crc32c
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes
from isal import isal_zlib

from ctseg.cpu_kernels import usable_cores

# ISA-L's level 1: on CT slice examples a third of the CPU of zlib's level 1 with run-length matching (the sink's
# setting before) and files 6% smaller (docs/BENCHMARKS.md, "Ingest").
GZIP_LEVEL = 1
# What zlib writes for level 1 with wbits 31: magic, deflate, no flags, no time, XFL 4 (fastest), OS 3 (Unix).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\x03"
_QUEUED_RECORDS = 32  # records compressing or waiting to be written (about 7 MB of 256 px slice examples)
_pool: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _compressing_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that deflate records: one per core this process may use, made once per process."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():  # a forked worker makes its own
            _pool = (os.getpid(), concurrent.futures.ThreadPoolExecutor(usable_cores(),
                                                                        thread_name_prefix="gzip-tfrecord"))
        return _pool[1]


class DeflatedRecord(NamedTuple):
    """A record's TFRecord framing and its deflate piece (`deflate_record`), made on the thread that built the record
    so that the sink only writes it: half the thread hand-offs, and 0.1-0.2 ms of CPU a slice pair less than sending
    each record to the compressing pool (docs/BENCHMARKS.md, "The component taken apart at the margin")."""
    pieces: tuple[bytes, ...]
    deflated: bytes


def framed(record: bytes) -> tuple[bytes, bytes, bytes]:
    """TFRecord's framing of one record: length and its masked CRC32C, the data, the data's masked CRC32C."""
    length = struct.pack("<Q", len(record))
    return length + _masked_crc32c(length), record, _masked_crc32c(record)


def deflate_record(record: bytes) -> DeflatedRecord:
    pieces = framed(record)
    return DeflatedRecord(pieces, _deflated(pieces))


def _deflated(pieces: tuple[bytes, ...]) -> bytes:
    """One record as raw deflate ending on a sync flush (byte-aligned, not final): pieces of this kind joined
    in order are one deflate stream."""
    compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
    return b"".join([*map(compressor.compress, pieces), compressor.flush(isal_zlib.Z_SYNC_FLUSH)])


class _BackgroundGzipFile:
    """A write-only gzip stream: records are deflated on the compressing threads and written in order by a thread
    of its own with the gzip header, CRC-32 and length; close() waits for it and raises what the threads met (a
    full disk, a lost object store) in the caller."""

    def __init__(self, raw):
        self._raw = raw
        self._crc, self._size = 0, 0
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUED_RECORDS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_all, name="gzip-tfrecord-writer", daemon=True)
        self._thread.start()

    def _write_all(self) -> None:
        try:
            self._raw.write(_GZIP_HEADER)
        except BaseException as e:
            self._error = e
        while (item := self._queue.get()) is not None:
            pieces, deflated = item
            if self._error is None:
                try:
                    self._raw.write(deflated if isinstance(deflated, bytes) else deflated.result())
                    for piece in pieces:
                        self._crc = isal_zlib.crc32(piece, self._crc)
                        self._size += len(piece)
                except BaseException as e:  # kept for close(); later records are drained, not written
                    self._error = e

    def write(self, *pieces: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((pieces, _compressing_pool().submit(_deflated, pieces)))

    def write_deflated(self, record: DeflatedRecord) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(record)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            final = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
            self._raw.write(final.flush() + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        finally:
            self._raw.close()


class GzipTFRecordSink(filebasedsink.FileBasedSink):
    """Beam's TFRecord sink with fast gzip settings (Beam hard-codes level 6); same format, TF reads any level."""

    def __init__(self, file_path_prefix: str):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=".gz",
                         compression_type=CompressionTypes.UNCOMPRESSED, mime_type="application/octet-stream")

    def open(self, temp_path):
        return _BackgroundGzipFile(super().open(temp_path))

    def write_record(self, file_handle, value):
        """A `DeflatedRecord` is written as it is; anything else is encoded by the coder and compressed here."""
        if isinstance(value, DeflatedRecord):
            file_handle.write_deflated(value)
        else:
            super().write_record(file_handle, value)

    def write_encoded_record(self, file_handle, encoded_value):
        file_handle.write(*framed(encoded_value))


def _masked_crc32c(data: bytes) -> bytes:
    """TFRecord's checksum, with the hardware CRC32C (Beam falls back to crcmod, several times slower)."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
