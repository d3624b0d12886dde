"""Gzipped TFRecord files for Beam, written faster than Beam's own TFRecord sink.

Beam's `WriteToTFRecord` compresses at gzip level 6 and computes TFRecord's CRC32C with crcmod in
pure Python; this sink writes the same format (any TFRecord reader with GZIP compression reads it)
at level 1 with run-length matching and the hardware CRC32C, and compresses on a thread of its own:
zlib releases the GIL, so the compression of one record overlaps the decoding of the next slices.
"""
from __future__ import annotations

import queue
import struct
import threading
import zlib

import google_crc32c
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes

GZIP_LEVEL = 1  # a third of the CPU of Beam's default level 6, and files under 5% larger on CT slices
# Run-length matching only: on CT slices (noisy int16, 0/1 masks) 40% less CPU than level 1's default
# matcher for files about 6% larger.
GZIP_STRATEGY = zlib.Z_RLE
_GZIP_WBITS = 31  # zlib writes the gzip header and trailer
_QUEUED_RECORDS = 32  # records waiting for the compressing thread (about 7 MB of 256 px slice examples)


class _BackgroundGzipFile:
    """A write-only gzip stream compressed and written by a thread of its own; close() waits for it and
    raises what the thread met (a full disk, a lost object store) in the caller."""

    def __init__(self, raw):
        self._raw = raw
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS, 8, GZIP_STRATEGY)
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUED_RECORDS)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._compress_all, name="gzip-tfrecord", daemon=True)
        self._thread.start()

    def _compress_all(self) -> None:
        while (pieces := self._queue.get()) is not None:
            if self._error is None:
                try:
                    for piece in pieces:
                        self._raw.write(self._compressor.compress(piece))
                except BaseException as e:  # kept for close(); later records are drained, not written
                    self._error = e

    def write(self, *pieces: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(pieces)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            self._raw.write(self._compressor.flush())
        finally:
            self._raw.close()


class GzipTFRecordSink(filebasedsink.FileBasedSink):
    """Beam's TFRecord sink with fast gzip settings (Beam hard-codes level 6); same format, TF reads any level."""

    def __init__(self, file_path_prefix: str):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=".gz",
                         compression_type=CompressionTypes.UNCOMPRESSED, mime_type="application/octet-stream")

    def open(self, temp_path):
        return _BackgroundGzipFile(super().open(temp_path))

    def write_encoded_record(self, file_handle, encoded_value):
        length = struct.pack("<Q", len(encoded_value))
        file_handle.write(length + _masked_crc32c(length), encoded_value, _masked_crc32c(encoded_value))


def _masked_crc32c(data: bytes) -> bytes:
    """TFRecord's checksum, with the hardware CRC32C (Beam falls back to crcmod, several times slower)."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
