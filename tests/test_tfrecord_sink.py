"""Ingest's gzip TFRecord sink writes files TensorFlow reads back, checksums verified."""
import gzip
import os

import pytest
import tensorflow as tf

from ctseg.components.ingest.tfrecord_sink import GZIP_LEVEL, GzipTFRecordSink


def test_records_read_back_by_tensorflow_with_their_checksums(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 300]
    sink = GzipTFRecordSink(str(tmp_path / "data_tfrecord"))
    path = str(tmp_path / "part.gz")
    handle = sink.open(path)
    for record in records:
        sink.write_encoded_record(handle, record)
    handle.close()

    with open(path, "rb") as f:
        header = f.read(10)
    assert header[:2] == b"\x1f\x8b" and header[8] == 4  # gzip magic; XFL 4 = fastest, i.e. level 1
    assert GZIP_LEVEL == 1
    read = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    assert read == records

    corrupt = bytearray(gzip.decompress(open(path, "rb").read()))
    corrupt[-1] ^= 0xFF  # the last record's data checksum
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(bytes(corrupt)))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(bad), compression_type="GZIP"))


def test_a_failed_write_reaches_the_caller(tmp_path):
    """The compressing thread's error (here a full disk) is raised by the next write or by close, never lost."""
    sink = GzipTFRecordSink(str(tmp_path / "data_tfrecord"))
    handle = sink.open("/dev/full")
    with pytest.raises(OSError, match="No space left"):
        try:
            for _ in range(8):
                sink.write_encoded_record(handle, os.urandom(1 << 20))
        finally:
            handle.close()
