"""Ingest's own encoding of the slice example (`features.serialized_slice_example`) against TensorFlow's protobuf:
the same message, and the same tensors through the Trainer's parse."""
import numpy as np
import pytest
import tensorflow as tf

from ctseg import features


def _fields(rng, size=32, source=(48, 40), **overrides):
    fields = dict(hu=rng.normal(0, 400, (size, size)).astype(np.float32), mask=rng.random((size, size)) > 0.6,
                  patient_id="3Dircadb1.17", slice_index=int(rng.integers(0, 300)),
                  spacing_mm=float(rng.uniform(0.5, 1.0)), thickness_mm=float(rng.uniform(0.7, 5.0)),
                  source_shape=source, mask_distinct_values=2, source_mask=rng.random(source) > 0.5)
    return {**fields, **overrides}


@pytest.mark.parametrize("overrides", [{}, {"patient_id": "é-patient ünïcode"}, {"slice_index": 0},
                                       {"slice_index": -3}, {"mask_distinct_values": 1},
                                       {"hu": np.full((32, 32), 40000.0)}, {"spacing_mm": 1e-30},
                                       {"mask": np.zeros((32, 32), bool)}])
def test_the_encoding_is_the_protobuf_message(overrides):
    fields = _fields(np.random.default_rng(len(str(overrides))), **overrides)
    serialized = features.serialized_slice_example(**fields)
    assert tf.train.Example.FromString(serialized) == features.slice_example(**fields)


def test_big_slices_and_the_trainer_parse_read_the_same_tensors():
    rng = np.random.default_rng(7)
    fields = _fields(rng, size=256, source=(512, 512))        # payloads over 2^14 and 2^16 bytes: 3-byte varints
    serialized = features.serialized_slice_example(**fields)
    reference = features.slice_example(**fields).SerializeToString()
    assert len(serialized) == len(reference) > 2 ** 17
    ours, theirs = (features.parse_slices(tf.constant([s]), 256) for s in (serialized, reference))
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    decoded = features.decode_example(serialized)
    assert decoded["patient_id"] == "3Dircadb1.17" and decoded["slice_index"] == fields["slice_index"]


def test_hu_statistics_of_int16_slices_are_the_exact_moments():
    """Ingest's int16 slices get their statistics from integer sums: equal to float64's to rounding."""
    rng = np.random.default_rng(3)
    hu = np.clip(rng.normal(40, 600, (64, 48)), -1024, 3071).astype(np.int16)
    stats = features.hu_statistics(hu)
    exact = hu.astype(np.float64)
    assert stats == pytest.approx({"hu_min": exact.min(), "hu_max": exact.max(), "hu_mean": exact.mean(),
                                   "hu_std": exact.std()}, rel=1e-12)
    assert features.hu_statistics(np.full((4, 4), -1024, np.int16))["hu_std"] == 0.0
    assert features.hu_statistics(hu.astype(np.float32)) == pytest.approx(stats, rel=1e-5)
