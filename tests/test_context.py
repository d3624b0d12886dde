"""2.5D input: each slice with its k neighbours as channels, in training (from the patient's ordered
slices) and in the served model (from the stack of consecutive HU slices a user has)."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from ctseg import features, ircad
from ctseg.components.ingest.executor import ingest_patient
from ctseg.models.unet import data, trainer
from ctseg.models.unet.config import UnetConfig
from ctseg.models.unet.model import ContextStack, context_indices

SIZE = 64
CUSTOM = {"image_size": SIZE, "depth": 2, "base_filters": 4, "epochs": 2, "batch_size": 4, "context_slices": 1}


def test_context_indices_clamp_at_the_ends():
    assert context_indices(4, 1).numpy().tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert context_indices(1, 2).numpy().tolist() == [[0, 0, 0, 0, 0]]
    hu = tf.reshape(tf.range(3 * 2 * 2, dtype=tf.float32), [3, 2, 2])
    stacked = ContextStack(1)(hu).numpy()
    assert stacked.shape == (3, 2, 2, 3)
    assert stacked[1, 0, 0].tolist() == [0.0, 4.0, 8.0]   # below, the slice, above
    assert stacked[0, 0, 0].tolist() == [0.0, 0.0, 4.0]


def test_neighbour_table_stays_inside_each_patient():
    patients = np.array([b"a", b"a", b"a", b"b", b"b"])
    assert data.neighbour_table(patients, 1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]
    assert data.neighbour_table(patients, 0).tolist() == [[0], [1], [2], [3], [4]]


def test_context_slices_is_checked():
    from ctseg.errors import CtsegError
    with pytest.raises(CtsegError, match="context_slices"):
        UnetConfig.from_custom_config({"context_slices": -1})
    assert UnetConfig.from_custom_config({"context_slices": 2}).channels == 5


def _write_examples(phantom, path, patients):
    """Ingest's own examples of `patients`, in shuffled order (as Beam's shards give them)."""
    records = []
    for ref in ircad.find_patients(str(phantom)):
        if ref.patient_id in patients:
            records += [out[1] for out in ingest_patient(ref, "train", "liver", SIZE) if isinstance(out, tuple)]
    np.random.default_rng(0).shuffle(records)
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for r in records:
            w.write(r)
    return str(path), records


@pytest.fixture(scope="module")
def trained(small_phantom, tmp_path_factory):
    base = tmp_path_factory.mktemp("context")
    train, _ = _write_examples(small_phantom, base / "train.gz", {"3Dircadb1.1", "3Dircadb1.2"})
    evaluation, records = _write_examples(small_phantom, base / "eval.gz", {"3Dircadb1.3"})
    trainer.run_fn(tfx.components.FnArgs(
        train_files=[train], eval_files=[evaluation], serving_model_dir=str(base / "serving"),
        model_run_dir=str(base / "logs"), train_steps=4, eval_steps=None, custom_config=CUSTOM))
    return {"serving": base / "serving", "train": train, "records": records}


@pytest.mark.slow  # trains a model
def test_training_stacks_come_from_the_patients_ordered_slices(trained):
    config = UnetConfig.from_custom_config(CUSTOM)
    hu, mask, patients = data.read_patients(trained["train"], SIZE)
    assert list(patients) == sorted(patients)
    stacks = list(data.slice_dataset(trained["train"], config).take(len(hu)))
    for row, (stack, m) in enumerate(stacks):
        assert stack.shape == (SIZE, SIZE, 3)
        neighbours = data.neighbour_table(patients, 1)[row]
        np.testing.assert_array_equal(stack.numpy()[..., 1], hu[row])
        np.testing.assert_array_equal(stack.numpy()[..., 0], hu[neighbours[0]])
        np.testing.assert_array_equal(stack.numpy()[..., 2], hu[neighbours[2]])
        np.testing.assert_array_equal(m.numpy(), mask[row])
    batch_hu, batch_mask = next(iter(data._input_fn(trained["train"], config, 4, training=True)))
    assert batch_hu.shape == (4, SIZE, SIZE, 3) and batch_mask.shape == (4, SIZE, SIZE)


@pytest.mark.slow  # trains a model
def test_served_2_5d_model_takes_a_stack_of_hu_slices(trained):
    from ctseg.serving import load_model

    served = load_model(trained["serving"])
    assert served.context_slices == 1 and served.size == (SIZE, SIZE)
    decoded = sorted((features.decode_example(r) for r in trained["records"]), key=lambda e: e[features.SLICE_KEY])
    hu = np.stack([e[features.IMAGE_KEY] for e in decoded]).astype(np.float32)
    whole = np.asarray(served(hu))
    chunked = served.series_probabilities(hu, batch_size=3)   # chunks overlap by k: same neighbours
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    naive = np.concatenate([np.asarray(served(hu[i:i + 3])) for i in range(0, len(hu), 3)])
    assert np.abs(naive - whole).max() > 1e-4, "the neighbours made no difference: not a 2.5D model"

    loaded = tf.saved_model.load(str(served.path))
    by_examples = loaded.signatures["serving_default"](examples=tf.constant(trained["records"]))["probabilities"]
    shuffled_index = [e[features.SLICE_KEY] for e in map(features.decode_example, trained["records"])]
    in_slice_order = by_examples.numpy()[np.argsort(shuffled_index)]
    np.testing.assert_allclose(in_slice_order, whole, atol=1e-5)


@pytest.mark.slow  # trains a model
def test_served_2_5d_examples_signature_refuses_two_patients(trained, small_phantom, tmp_path):
    _, other = _write_examples(small_phantom, tmp_path / "other.gz", {"3Dircadb1.1"})
    loaded = tf.saved_model.load(str(trained["serving"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one patient"):
        loaded.signatures["serving_default"](examples=tf.constant(trained["records"][:2] + other[:2]))


def test_2d_config_is_unchanged():
    config = dataclasses.replace(UnetConfig(image_size=SIZE, depth=2), context_slices=0)
    from ctseg.models.unet.model import build_unet, serving_model
    model = build_unet(config)
    assert model.input_shape == (None, SIZE, SIZE)
    assert serving_model(model, config).input_shape == (None, SIZE, SIZE)
