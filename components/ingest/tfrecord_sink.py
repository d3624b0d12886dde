"""Gzipped TFRecord files for Beam, written faster than Beam's own TFRecord sink.

Beam's `WriteToTFRecord` compresses at gzip level 6 and computes TFRecord's CRC32C with crcmod in
pure Python; this sink writes the same format (any TFRecord reader with GZIP compression reads it)
at level 1 with the hardware CRC32C.
"""
from __future__ import annotations

import gzip
import struct

import google_crc32c
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes

GZIP_LEVEL = 1  # a third of the CPU of Beam's default level 6, and files under 5% larger on CT slices


class _ClosingGzipFile(gzip.GzipFile):
    """A GzipFile that also closes the file it wraps, as Beam's sink expects of what `open` returns."""

    def close(self):
        raw = self.fileobj
        super().close()
        if raw is not None:
            raw.close()


class GzipTFRecordSink(filebasedsink.FileBasedSink):
    """Beam's TFRecord sink with a fast gzip level (Beam hard-codes level 6); same format, TF reads any level."""

    def __init__(self, file_path_prefix: str):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=".gz",
                         compression_type=CompressionTypes.UNCOMPRESSED, mime_type="application/octet-stream")

    def open(self, temp_path):
        return _ClosingGzipFile(fileobj=super().open(temp_path), mode="wb", compresslevel=GZIP_LEVEL, mtime=0)

    def write_encoded_record(self, file_handle, encoded_value):
        length = struct.pack("<Q", len(encoded_value))
        file_handle.write(length + _masked_crc32c(length))
        file_handle.write(encoded_value)
        file_handle.write(_masked_crc32c(encoded_value))


def _masked_crc32c(data: bytes) -> bytes:
    """TFRecord's checksum, with the hardware CRC32C (Beam falls back to crcmod, several times slower)."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
