"""`predict_series` streams the series: slices read a batch at a time, the model called on chunks that
overlap by a 2.5D model's context, uint8 masks kept. Its masks are those of one model call over the
whole series, and reading does not keep the files' bytes alive."""
from __future__ import annotations

import gc
import sys
import weakref

import numpy as np
import pytest
import tensorflow as tf
from tiny_unet import export_tiny_unet

from ctseg import postprocess
from ctseg import predict as P
from ctseg.profile import count_components
from ctseg.serving import load_model

CONTEXT = 2  # neighbours on either side
CHUNK = 5    # slices per model call: the phantom's 12 slices make chunks of 5, 5 and 2


@pytest.fixture(scope="module")
def model_2_5d(tmp_path_factory):
    return load_model(export_tiny_unet(tmp_path_factory.mktemp("tiny_2_5d") / "1", context_slices=CONTEXT))


@pytest.fixture(scope="module")
def series(small_phantom):
    return P.load_series(small_phantom / "3Dircadb1.1")


def _small_hu(series: P.Series, served) -> np.ndarray:
    """Every slice's HU at the model's size, facing as the model was trained."""
    hu = np.stack([hu.numpy() for hu, _ in P.read_hu(series)])
    if series.flip_axes:
        hu = np.flip(hu, series.flip_axes)
    return tf.image.resize(hu[..., None], served.size, antialias=True)[..., 0].numpy()


def _whole_series_call(series: P.Series, served) -> np.ndarray:
    """Probabilities at the model's size of one call over every slice (nothing chunked)."""
    return np.asarray(served(_small_hu(series, served)))


def test_chunks_overlap_so_each_slice_sees_its_neighbours(series, model_2_5d):
    count = len(series.slices)
    assert count > CHUNK and count % CHUNK, "the chunks must split the series, the last one short"
    whole = _whole_series_call(series, model_2_5d)
    small = _small_hu(series, model_2_5d)
    starts = [start for start, _ in model_2_5d.chunk_probabilities(small, CHUNK)]
    assert starts == list(range(0, count, CHUNK))
    # one call gives the same numbers up to float rounding (the kernels depend on the batch's size)
    np.testing.assert_allclose(model_2_5d.series_probabilities(small, CHUNK), whole, rtol=0, atol=1e-6)
    without_overlap = np.concatenate([np.asarray(model_2_5d(small[i:i + CHUNK])) for i in range(0, count, CHUNK)])
    assert np.abs(without_overlap - whole).max() > 1e-3, "the neighbours made no difference: not a 2.5D model"


@pytest.mark.parametrize("cleanup", [postprocess.Cleanup.off(), postprocess.Cleanup()], ids=str)
def test_streamed_masks_are_those_of_one_call_over_the_series(series, model_2_5d, cleanup):
    """The gating, resizing and clean-up of the stream equal theirs over the whole series at once. The probabilities
    are the chunks' (equal to one call's within float rounding, the test above): a pixel within rounding of the
    threshold may fall either side of it, as one did with the instance-normalised network."""
    small = _small_hu(series, model_2_5d)
    whole = model_2_5d.series_probabilities(small, CHUNK)
    gated = postprocess.gate_probabilities(whole, small, cleanup)
    expected = np.flip(postprocess.clean_volume(postprocess.source_mask(gated, series.shape), cleanup,
                                                hu_at_model_size=small), series.flip_axes)
    streamed = P.predict_series(series, model_2_5d, batch_size=CHUNK, cleanup=cleanup)
    assert streamed.mask.dtype == np.uint8 and streamed.mask.shape == (len(series.slices), *series.shape)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(streamed.mask, expected)
    assert streamed.components_before_cleanup == count_components(postprocess.binarize(whole))
    assert sorted(streamed.windowed) == P.tile_indices(streamed.mask)


def test_reading_keeps_no_reference_to_the_series(small_phantom):
    series = P.load_series(small_phantom / "3Dircadb1.2")
    first = series.slices[0].data
    references = sys.getrefcount(first)
    for _ in P.read_hu(series).batch(4):
        pass
    assert sys.getrefcount(first) == references, "TensorFlow holds a file's bytes after reading"
    gone = weakref.ref(series)
    del series
    gc.collect()
    assert gone() is None, "the reader's functions, which TensorFlow keeps, still hold the files' bytes"


def test_the_dataset_keeps_its_series_while_it_is_read(small_phantom):
    """A series no one else holds (`read_hu(load_series(...))`) is read whole, also through a derived dataset:
    the reader's functions hold it weakly, the dataset strongly."""
    expected = len(P.load_series(small_phantom / "3Dircadb1.2").slices)
    batched = P.read_hu(P.load_series(small_phantom / "3Dircadb1.2")).batch(4)
    gc.collect()
    assert sum(len(code) for _, code in batched) == expected
