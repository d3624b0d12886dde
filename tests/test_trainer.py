"""The UNET module file as a real TFX Trainer in a LocalDagRunner pipeline, and its exported model
loaded in a fresh process through both signatures of docs/DESIGN.md."""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from ctseg.errors import CtsegError
from ctseg.mlmd.files import split_dirs
from ctseg.models.unet import trainer
from ctseg.pipeline.local_runner import ingest_pipeline

SIZE = 64
MODULE_FILE = str(Path(trainer.__file__).resolve())
CUSTOM = {"image_size": SIZE, "depth": 2, "base_filters": 4, "epochs": 2, "batch_size": 4}


pytestmark = pytest.mark.slow  # every test here runs a TFX pipeline




@pytest.fixture(scope="module")
def pipeline_run(small_phantom, tmp_path_factory):
    """IrcadExampleGen → Trainer(module_file) under LocalDagRunner with ML Metadata in SQLite."""
    root = tmp_path_factory.mktemp("pipeline")
    pipeline, example_gen = ingest_pipeline(data_root=small_phantom, workdir=root, image_size=SIZE)
    pipeline.components.append(tfx.components.Trainer(
        module_file=MODULE_FILE, examples=example_gen.outputs["examples"],
        train_args=tfx.proto.TrainArgs(num_steps=4), eval_args=tfx.proto.EvalArgs(num_steps=2),
        custom_config=CUSTOM))
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return root / "root"


@pytest.fixture(scope="module")
def examples(pipeline_run):
    """The ingested splits: {split: file pattern}."""
    return {split: str(Path(folder) / "*.gz") for examples in pipeline_run.glob("IrcadExampleGen/examples/*")
            for split, folder in split_dirs(examples).items()}


def _one(pattern_dir: Path, glob: str) -> Path:
    found = list(pattern_dir.glob(glob))
    assert len(found) == 1, f"expected one {glob} under {pattern_dir}, found {found}"
    return found[0]


def test_trainer_writes_model_and_tensorboard_logs(pipeline_run):
    serving = _one(pipeline_run / "Trainer" / "model", "*/Format-Serving")
    assert (serving / "saved_model.pb").exists()
    run_dir = _one(pipeline_run / "Trainer" / "model_run", "*")
    assert list(run_dir.rglob("events.out.tfevents.*")), "no TensorBoard logs in the ModelRun artifact"
    assert list((run_dir / "checkpoints").glob("best*")), "no checkpoint written"


def test_trainer_exports_the_training_profile_with_the_model(pipeline_run):
    from ctseg import profile

    serving = _one(pipeline_run / "Trainer" / "model", "*/Format-Serving")
    carried = profile.read_profile(serving / profile.PROFILE_DIR)
    assert carried is not None, "no training profile in the SavedModel's assets.extra"
    assert carried.statistics.datasets[0].num_examples == sum(p["slices"] for p in carried.patients) > 0
    assert carried.eval_predictions and all("components_before_cleanup" in e for e in carried.eval_predictions)


def test_exported_model_serves_both_signatures_in_a_fresh_process(pipeline_run, examples):
    serving = _one(pipeline_run / "Trainer" / "model", "*/Format-Serving")
    script = textwrap.dedent(f"""
        import json, numpy as np, tensorflow as tf
        model = tf.saved_model.load({str(serving)!r})
        records = [r.numpy() for r in tf.data.TFRecordDataset(tf.io.gfile.glob({examples["eval"]!r}), "GZIP")]
        serve, hu_fn = model.signatures["serving_default"], model.signatures["segment_hu"]
        from ctseg.features import decode_example
        hu = np.stack([decode_example(r)["image_hu"] for r in records]).astype(np.float32)
        by_example = serve(examples=tf.constant(records))["probabilities"].numpy()
        by_hu = hu_fn(hu=tf.constant(hu))["probabilities"].numpy()
        print(json.dumps({{
            "signatures": sorted(model.signatures.keys()),
            "inputs": {{k: [str(s.dtype.name), s.shape.as_list()]
                        for k, s in hu_fn.structured_input_signature[1].items()}},
            "example_inputs": {{k: [s.dtype.name, s.shape.as_list()]
                                for k, s in serve.structured_input_signature[1].items()}},
            "outputs": sorted(serve.structured_outputs), "shape": list(by_example.shape),
            "dtype": str(by_example.dtype),
            "range": [float(by_example.min()), float(by_example.max())],
            "max_difference": float(np.abs(by_example - by_hu).max()), "slices": len(records)}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["signatures"] == ["segment_hu", "serving_default"]
    assert got["inputs"] == {"hu": ["float32", [None, SIZE, SIZE]]}
    assert got["example_inputs"] == {"examples": ["string", [None]]}
    assert got["outputs"] == ["probabilities"]
    assert got["slices"] > 0 and got["shape"] == [got["slices"], SIZE, SIZE] and got["dtype"] == "float32"
    assert 0.0 <= got["range"][0] <= got["range"][1] <= 1.0
    assert got["max_difference"] < 1e-5, "the two signatures disagree on the same slices"


def test_run_fn_rejects_examples_of_another_size(examples, tmp_path):
    fn_args = tfx.components.FnArgs(
        train_files=[examples["train"]], eval_files=[examples["eval"]],
        serving_model_dir=str(tmp_path / "serving"), model_run_dir=str(tmp_path / "logs"),
        train_steps=1, eval_steps=1, custom_config={**CUSTOM, "image_size": 32})
    with pytest.raises(CtsegError, match="64x64 but the model's image_size is 32"):
        trainer.run_fn(fn_args)
    assert not tf.io.gfile.exists(fn_args.serving_model_dir)


# The GPU path without a GPU. On a GPU machine `distribution_strategy()` picks
# MirroredStrategy over every logical GPU plus the mixed_float16 policy; here the CPU is split into two
# logical devices and handed to the same function, so strategy, policy, per-replica batching, sync-on-read
# metric variables and the export run exactly that code. Logical devices can only be configured before
# TensorFlow starts, hence the fresh process. FnArgs is a plain attrs record of which run_fn reads these
# fields; the child gets them as a namespace because importing TFX would double its start-up (~15 s).
# The real FnArgs from the real Trainer component is covered by the LocalDagRunner tests above.
GPU_PATH_SCRIPT = """
import json, sys, types
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ctseg.models.unet import trainer
train, eval_, serving, logs, custom = json.loads(sys.argv[1])
fn_args = types.SimpleNamespace(train_files=[train], eval_files=[eval_], serving_model_dir=serving,
                                model_run_dir=logs, train_steps=4, eval_steps=2, custom_config=custom)
trainer.run_fn(fn_args, devices=tf.config.list_logical_devices("CPU"))
"""


def _half_precision_convs(saved_model_dir: Path) -> int:
    """Conv2D nodes computing in float16 anywhere in the SavedModel's functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((saved_model_dir / "saved_model.pb").read_bytes())
    nodes = [n for g in proto.meta_graphs for f in g.graph_def.library.function for n in f.node_def]
    return sum(n.op == "Conv2D" and n.attr["T"].type == tf.float16.as_datatype_enum for n in nodes)


def test_gpu_path_mirrored_mixed_precision_trains_exports_and_serves_float32(examples, tmp_path):
    from ctseg.serving import load_model

    serving = tmp_path / "serving"
    args = [examples["train"], examples["eval"], str(serving), str(tmp_path / "logs"), CUSTOM]
    done = subprocess.run([sys.executable, "-c", GPU_PATH_SCRIPT, json.dumps(args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout + done.stderr
    assert "device:CPU:0, /job:localhost/replica:0/task:0/device:CPU:1 with MirroredStrategy: 2 replica(s), " \
           "global batch 8 (4 per replica), policy mixed_float16, jit_compile off" in out, out[-3000:]
    rates = re.findall(r"epoch (\d): ([\d.]+) training slices/s \(16 slices in", out)
    assert [epoch for epoch, _ in rates] == ["1", "2"] and all(float(r) > 0 for _, r in rates), out[-3000:]
    assert _half_precision_convs(serving) > 0, "the exported model does not compute in float16: mixed precision was off"

    model = load_model(serving)  # this process's policy is float32, as in serving
    hu = np.random.default_rng(0).uniform(-1000, 1000, (3, SIZE, SIZE)).astype(np.float32)
    probabilities = model.fn(hu=tf.constant(hu))["probabilities"]
    assert probabilities.dtype == tf.float32 and probabilities.shape == (3, SIZE, SIZE)
    assert 0.0 <= float(tf.reduce_min(probabilities)) <= float(tf.reduce_max(probabilities)) <= 1.0
    loaded = tf.saved_model.load(str(serving))
    records = [r.numpy() for r in tf.data.TFRecordDataset(tf.io.gfile.glob(examples["eval"]), "GZIP").take(2)]
    by_example = loaded.signatures["serving_default"](examples=tf.constant(records))["probabilities"]
    assert by_example.dtype == tf.float32 and by_example.shape == (2, SIZE, SIZE)


def test_a_few_patients_train_for_min_epoch_steps_an_epoch():
    """A pass over a few patients' balanced slices is a few batches; such epochs are lengthened to
    min_epoch_steps, longer ones kept, and a fixed `train_steps` from the pipeline wins."""
    from ctseg.models.unet.config import UnetConfig

    config = UnetConfig.from_custom_config({"epochs": 25})
    assert config.min_epoch_steps == 40
    assert trainer.training_schedule(config, None, lambda: 15) == (25, 40)
    assert trainer.training_schedule(config, None, lambda: 60) == (25, 60)
    one_pass_only = UnetConfig.from_custom_config({"epochs": 25, "min_epoch_steps": 0})
    assert trainer.training_schedule(one_pass_only, None, lambda: 15) == (25, 15)
    assert trainer.training_schedule(config, 7, lambda: pytest.fail("the data need not be read")) == (7, 1)
    assert trainer.training_schedule(config, 100, lambda: 15) == (25, 4)
    # the default phantom's 27 batches a pass: 18 epochs of 40, 720 steps (docs/BENCHMARKS.md, "18 epochs")
    assert trainer.training_schedule(UnetConfig.from_custom_config({}), None, lambda: 27) == (18, 40)
    with pytest.raises(CtsegError, match="min_epoch_steps"):
        UnetConfig.from_custom_config({"min_epoch_steps": -1})


def test_weight_average_is_the_mean_of_the_epochs_it_keeps():
    """Epochs 0-3 on a one-weight regression: the trained weights become the mean of epochs 2 and 3's."""
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss="mse")
    seen = []
    record = tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(model.get_weights()))
    x = np.linspace(-1, 1, 32, dtype=np.float32)[:, None]
    model.fit(x, 3 * x + 1, epochs=4, batch_size=8, verbose=0, shuffle=False,
              callbacks=[record, trainer.WeightAverage(first_epoch=2)])
    for got, *epochs in zip(model.get_weights(), *seen):
        np.testing.assert_allclose(got, (epochs[2] + epochs[3]) / 2, rtol=1e-6)
        assert not np.allclose(got, epochs[3])
    assert trainer.UnetConfig.from_custom_config({"average_weights_from": 0.5}).average_weights_from == 0.5
    with pytest.raises(CtsegError, match="average_weights_from"):
        trainer.UnetConfig.from_custom_config({"average_weights_from": 1.0})
