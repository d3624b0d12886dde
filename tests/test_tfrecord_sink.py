"""Ingest's gzip TFRecord sink writes files TensorFlow reads back, checksums verified."""
import gzip
import os

import pytest
import tensorflow as tf

from ctseg.components.ingest.tfrecord_sink import GZIP_LEVEL, GzipTFRecordSink


def _written(tmp_path, records) -> str:
    """`records` written through the sink into one gzip file; its path."""
    sink = GzipTFRecordSink(str(tmp_path / "data_tfrecord"))
    path = str(tmp_path / "part.gz")
    handle = sink.open(path)
    for record in records:
        sink.write_encoded_record(handle, record)
    handle.close()
    return path


def test_records_read_back_by_tensorflow_with_their_checksums(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 300]
    path = _written(tmp_path, records)

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


def test_records_deflated_apart_join_into_one_gzip_member_in_order(tmp_path):
    """Records are compressed on several threads and written in order: one gzip member whose content is each
    record's TFRecord framing, in the order written (large random records finish compressing after the small
    ones queued behind them)."""
    import random
    import struct
    import zlib

    from ctseg.components.ingest.tfrecord_sink import _masked_crc32c

    rng = random.Random(0)
    records = [rng.randbytes(rng.choice([0, 1, 100, 300_000])) if k % 3 else bytes(k % 7) * 50_000
               for k in range(200)]
    path = _written(tmp_path, records)

    data = open(path, "rb").read()
    inflater = zlib.decompressobj(31)
    content = inflater.decompress(data)
    assert inflater.eof and not inflater.unused_data  # one gzip member, its CRC-32 and length checked by zlib
    framing = b"".join(struct.pack("<Q", len(r)) + _masked_crc32c(struct.pack("<Q", len(r))) + r + _masked_crc32c(r)
                       for r in records)
    assert content == framing
    assert [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")] == records


def test_an_empty_file_is_an_empty_gzip_stream(tmp_path):
    sink = GzipTFRecordSink(str(tmp_path / "data_tfrecord"))
    path = str(tmp_path / "part.gz")
    sink.open(path).close()
    assert gzip.decompress(open(path, "rb").read()) == b""
    assert list(tf.data.TFRecordDataset(path, compression_type="GZIP")) == []


def test_records_deflated_where_they_were_made_are_written_as_they_are(tmp_path):
    """Ingest hands the sink `DeflatedRecord`s (deflated on its decode threads) between plain records: one gzip
    stream, every record read back in order with its checksums."""
    from ctseg.components.ingest.tfrecord_sink import DeflatedRecord, deflate_record

    records = [bytes(range(256)) * (k + 1) for k in range(6)]
    sink = GzipTFRecordSink(str(tmp_path / "data_tfrecord"))
    path = str(tmp_path / "part.gz")
    handle = sink.open(path)
    for k, record in enumerate(records):
        sink.write_record(handle, deflate_record(record) if k % 2 else record)
    handle.close()
    assert isinstance(deflate_record(b"x"), DeflatedRecord)
    assert [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")] == records
