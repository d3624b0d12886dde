"""SegmentationEvaluator: metrics in numpy, the picture, and real LocalDagRunner pipelines with Pusher.

The pipelines import fixed-rule SavedModels (the two signatures of docs/DESIGN.md): a "good" rule
(liver HU window on the patient's right side) and a "worse" one (the same rule blind to the posterior
half of the image, which no clean-up restores). On the phantom the good rule's volumetric Dice before
the evaluator's 3D clean-up is about 0.68 (0.50-0.78 per patient), no better than a threshold does on
real CT; the test recomputes it in numpy. The HU window alone, fooled by spleen, kidneys, heart and
bowel, shows what the clean-up is for.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from ctseg.components.evaluation import format_evaluation, load_evaluation, metrics
from ctseg.components.evaluation.figures import GridRow, write_grid
from ctseg.errors import CtsegError
from ctseg.pipeline.pipeline import serving_pusher

SIZE = 64


# ---------------------------------------------------------------- metrics

def test_dice_and_iou_of_known_masks():
    pred = np.zeros((4, 4), bool)
    true = np.zeros((4, 4), bool)
    pred[:2, :2] = True          # 4 voxels
    true[:2, :] = True           # 8 voxels, 4 shared
    assert metrics.dice(pred, true) == pytest.approx(2 * 4 / 12)
    assert metrics.iou(pred, true) == pytest.approx(4 / 8)
    assert metrics.dice(pred, pred) == 1.0
    assert metrics.dice(pred, ~pred) == 0.0


def test_both_empty_counts_as_perfect_and_is_reported():
    prob = np.zeros((2, 3, 3), np.float32)
    truth = np.zeros((2, 3, 3), np.uint8)
    prob[0, 0, 0] = 0.9
    truth[0, 0, 0] = 1
    overlap = metrics.slice_overlap(prob, truth)
    summary = metrics.summarize(["a", "a"], overlap)
    assert summary["mean_slice_dice"] == 1.0
    assert summary["empty_slices"] == 1
    assert metrics.dice(np.zeros(3), np.zeros(3)) == 1.0


def test_probability_threshold_is_half():
    overlap = metrics.slice_overlap(np.array([[0.5, 0.49]]), np.array([[1, 1]]))
    assert overlap.predicted.tolist() == [1]
    assert overlap.intersection.tolist() == [1]


def test_volumetric_dice_pools_slices_unlike_slice_mean():
    """Patient p: a big slice predicted perfectly and a one-voxel slice missed."""
    truth = np.zeros((2, 10, 10), np.uint8)
    truth[0, :5] = 1             # 50 voxels
    truth[1, 0, 0] = 1           # 1 voxel
    prob = np.zeros((2, 10, 10), np.float32)
    prob[0, :5] = 1.0
    summary = metrics.summarize(["p", "p"], metrics.slice_overlap(prob, truth), voxel_ml=[0.5, 0.5])
    (patient,) = summary["patients"]
    assert patient["dice"] == pytest.approx(2 * 50 / 101)
    assert summary["mean_slice_dice"] == pytest.approx(0.5)
    assert patient["true_volume_ml"] == pytest.approx(25.5)
    assert patient["predicted_volume_ml"] == pytest.approx(25.0)


def test_summary_means_over_patients_not_slices():
    truth = np.ones((3, 2, 2), np.uint8)
    prob = np.stack([np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2))])
    summary = metrics.summarize(["a", "a", "b"], metrics.slice_overlap(prob, truth))
    assert [p["dice"] for p in summary["patients"]] == [1.0, 0.0]
    assert summary["mean_patient_dice"] == 0.5
    assert summary["mean_slice_dice"] == pytest.approx(2 / 3)


def test_best_median_worst():
    rows = [{"patient_id": f"p{k}", "dice": d} for k, d in enumerate([0.7, 0.9, 0.8, 0.6, 0.95])]
    picks = metrics.best_median_worst(rows)
    assert [(label, r["patient_id"]) for label, r in picks] == [("best", "p4"), ("median", "p2"), ("worst", "p3")]
    assert [label for label, _ in metrics.best_median_worst(rows[:1])] == ["best"]


@pytest.mark.parametrize("mean, baseline, blessed, words", [
    (0.95, None, True, "threshold alone"),
    (0.85, None, False, "below the threshold"),
    (0.85, 0.80, False, "below the threshold"),
    (0.95, 0.955, True, "within the tolerance"),
    (0.94, 0.95, True, "within the tolerance"),       # exactly at the tolerance
    (0.93, 0.95, False, "serving baseline model's 0.9500"),
])
def test_blessing_rule(mean, baseline, blessed, words):
    ok, reason = metrics.blessing_decision(mean, threshold=0.90, tolerance=0.01, baseline_mean_dice=baseline)
    assert ok is blessed
    assert reason.startswith("blessed" if blessed else "not blessed")
    assert words in reason


def test_the_model_serving_is_not_blessed_again():
    ok, reason = metrics.blessing_decision(0.95, threshold=0.90, tolerance=0.01, already_serving=True)
    assert ok is False and "already the one serving" in reason
    ok, reason = metrics.blessing_decision(0.85, threshold=0.90, tolerance=0.01, already_serving=True)
    assert ok is False and "below the threshold" in reason


def test_grid_png(tmp_path):
    hu = np.full((SIZE, SIZE), -100.0, np.float32)
    truth = np.zeros((SIZE, SIZE), np.uint8)
    truth[10:30, 10:30] = 1
    rows = [GridRow(f"row {k}", hu, truth, truth * 0.9) for k in range(3)]
    path = write_grid(rows, tmp_path / "g.png", title="t")
    from matplotlib.image import imread
    img = imread(path)
    assert img.shape[0] > img.shape[1] * 0.8 and img.shape[2] in (3, 4)
    with pytest.raises(ValueError):
        write_grid([], tmp_path / "empty.png")


def test_load_evaluation_errors_name_the_folder(tmp_path):
    with pytest.raises(CtsegError, match=str(tmp_path)):
        load_evaluation(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(CtsegError, match="metrics.json"):
        load_evaluation(tmp_path)


def test_component_rejects_bad_parameters():
    from tfx.types import channel_utils, standard_artifacts

    from ctseg.components.evaluation import SegmentationEvaluator
    examples = channel_utils.as_channel([standard_artifacts.Examples()])
    model = channel_utils.as_channel([standard_artifacts.Model()])
    with pytest.raises(CtsegError, match="dice_threshold must be between 0 and 1, got 1.5"):
        SegmentationEvaluator(examples=examples, model=model, dice_threshold=1.5)
    with pytest.raises(CtsegError, match="dice_tolerance must be between 0 and 1"):
        SegmentationEvaluator(examples=examples, model=model, dice_tolerance=-0.1)
    with pytest.raises(CtsegError, match="cleanup: clean-up 'sometimes'"):
        SegmentationEvaluator(examples=examples, model=model, cleanup="sometimes")


# ---------------------------------------------------------------- real pipelines

def window_rule_model(path, *, right_side_only: bool, anterior_only: bool = False):
    """Exports a fixed-rule SavedModel with `segment_hu` and `serving_default` (docs/DESIGN.md)."""
    import tensorflow as tf

    from ctseg import features

    columns = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    side = (columns < 0.0) if right_side_only else np.ones(SIZE, bool)
    side = side[None, :] & ((np.arange(SIZE) < SIZE // 2) if anterior_only else np.ones(SIZE, bool))[:, None]

    class WindowRule(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE], tf.float32, name="hu")])
        def segment_hu(self, hu):
            smooth = tf.nn.avg_pool2d(hu[..., None], 3, 1, "SAME")[..., 0]
            inside = tf.sigmoid(smooth - 40.0) * tf.sigmoid(130.0 - smooth)
            return {"probabilities": inside * tf.constant(side, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serving_default(self, examples):
            parsed = tf.io.parse_example(examples, {features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
            hu = tf.io.decode_raw(parsed[features.IMAGE_KEY], tf.int16, little_endian=True)
            return self.segment_hu(tf.cast(tf.reshape(hu, [-1, SIZE, SIZE]), tf.float32))

    module = WindowRule()
    tf.saved_model.save(module, os.path.join(path, "Format-Serving"),
                        signatures={"segment_hu": module.segment_hu, "serving_default": module.serving_default})
    return str(path)


def window_rule_dice(phantom_root: Path, *, right_side_only: bool) -> dict[str, float]:
    """Volumetric Dice per patient of window_rule_model's rule, in numpy on the DICOM files."""
    from ctseg import ircad
    from ctseg.dicom import hu_from_dataset, mask_from_dataset, read_dataset

    columns = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    side = (columns < 0.0) if right_side_only else np.ones(SIZE, bool)
    out = {}
    for ref in ircad.find_patients(str(phantom_root)):
        folder = Path(phantom_root) / ref.patient_id
        hit = predicted = true = 0
        for image in (folder / "PATIENT_DICOM").iterdir():
            hu = hu_from_dataset(read_dataset(image)).astype(np.float64)
            truth = mask_from_dataset(read_dataset(folder / "MASKS_DICOM/liver" / image.name)).astype(bool)
            # 3x3 mean over the pixels inside the image, as avg_pool2d with SAME padding takes it
            padded, ones = np.pad(hu, 1), np.pad(np.ones_like(hu), 1)
            shifts = [(r, c) for r in range(3) for c in range(3)]
            smooth = (sum(padded[r:r + SIZE, c:c + SIZE] for r, c in shifts)
                      / sum(ones[r:r + SIZE, c:c + SIZE] for r, c in shifts))
            prob = 1 / (1 + np.exp(-(smooth - 40.0))) / (1 + np.exp(-(130.0 - smooth))) * side
            pred = prob >= 0.5
            hit, predicted, true = hit + int((pred & truth).sum()), predicted + int(pred.sum()), true + int(truth.sum())
        out[ref.patient_id] = 1.0 if predicted + true == 0 else 2 * hit / (predicted + true)
    return out


def write_eval_examples(phantom_root: Path, out_file: Path):
    """Ingest's own per-patient examples (`ingest_patient`), written to one plain TFRecord file."""
    import tensorflow as tf

    from ctseg import ircad
    from ctseg.components.ingest.executor import ingest_patient

    out_file.parent.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(out_file)) as writer:
        for ref in ircad.find_patients(str(phantom_root)):
            for output in ingest_patient(ref, "eval", "liver", SIZE):
                if isinstance(output, tuple):  # (split, serialized example); the rest are tagged reports
                    writer.write(output[1])


def eval_pipeline(name: str, root: Path, examples_dir: Path, model_dir: str, serving_dir: Path,
                  dice_threshold: float, dice_tolerance: float = 0.01):
    from tfx import v1 as tfx

    from ctseg.components.evaluation import SegmentationEvaluator
    example_gen = tfx.components.ImportExampleGen(
        input_base=str(examples_dir),
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="eval", pattern="eval/*")]),
        output_config=tfx.proto.Output(split_config=tfx.proto.SplitConfig(
            splits=[tfx.proto.SplitConfig.Split(name="eval", hash_buckets=1)])))
    model = tfx.dsl.Importer(source_uri=model_dir, artifact_type=tfx.types.standard_artifacts.Model).with_id("model")
    evaluator = SegmentationEvaluator(
        examples=example_gen.outputs["examples"], model=model.outputs["result"], serving_dir=str(serving_dir),
        metadata=f"sqlite:{root / 'metadata.sqlite'}", dice_threshold=dice_threshold,
        dice_tolerance=dice_tolerance)
    pusher = serving_pusher(model.outputs["result"], evaluator.outputs["blessing"], str(serving_dir))
    return tfx.dsl.Pipeline(
        pipeline_name=name, pipeline_root=str(root / "pipeline"),
        components=[example_gen, model, evaluator, pusher],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(root / "metadata.sqlite")))


def run_and_collect(pipeline, root: Path) -> dict:
    """Runs the pipeline; returns the newest ModelBlessing, ModelEvaluation and PushedModel from MLMD."""
    from ml_metadata import metadata_store
    from tfx import v1 as tfx
    from tfx.orchestration import metadata

    tfx.orchestration.LocalDagRunner().run(pipeline)
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(str(root / "metadata.sqlite")))
    return {t: max(store.get_artifacts_by_type(t), key=lambda a: a.id)
            for t in ("ModelBlessing", "ModelEvaluation", "PushedModel", "Model")}


def custom(artifact, key):
    value = artifact.custom_properties[key]
    return getattr(value, value.WhichOneof("value"))


def versions(serving_dir: Path) -> list[str]:
    return sorted(os.listdir(serving_dir)) if serving_dir.exists() else []




@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from ctseg.phantom import write_phantom
    base = tmp_path_factory.mktemp("evaluation")
    phantom = write_phantom(base / "ircad", patients=4, slices=10, size=SIZE, seed=3)
    write_eval_examples(phantom, base / "examples" / "eval" / "slices.tfrecord")
    return {"base": base, "examples": base / "examples", "phantom": phantom,
            "good": window_rule_model(base / "good_model", right_side_only=True),
            "worse": window_rule_model(base / "worse_model", right_side_only=True, anterior_only=True),
            "window_alone": window_rule_model(base / "window_model", right_side_only=False)}


@pytest.fixture(scope="module")
def history(workspace):
    """One pipeline, two runs: a good model (blessed, pushed), then a worse one against it (the model serving)
    as baseline."""
    root, serving = workspace["base"] / "history", workspace["base"] / "serving"
    first = run_and_collect(eval_pipeline("ctseg-eval-history", root, workspace["examples"], workspace["good"],
                                          serving, dice_threshold=0.5), root)
    pushed_after_first = versions(serving)
    second = run_and_collect(eval_pipeline("ctseg-eval-history", root, workspace["examples"], workspace["worse"],
                                           serving, dice_threshold=0.5), root)
    # The good model again, with another tolerance so the evaluator runs rather than coming from the cache.
    third = run_and_collect(eval_pipeline("ctseg-eval-history", root, workspace["examples"], workspace["good"],
                                          serving, dice_threshold=0.5, dice_tolerance=0.02), root)
    return {"first": first, "second": second, "third": third, "serving": serving,
            "pushed_after_first": pushed_after_first, "phantom": workspace["phantom"]}


@pytest.mark.slow
def test_good_model_is_blessed_and_pushed(history):
    blessing, evaluation, pushed = (history["first"][k] for k in ("ModelBlessing", "ModelEvaluation", "PushedModel"))
    assert custom(blessing, "blessed") == 1
    assert os.path.exists(os.path.join(blessing.uri, "BLESSED"))
    assert custom(blessing, "current_model_id") == history["first"]["Model"].id
    assert "baseline_model_id" not in blessing.custom_properties
    assert custom(pushed, "pushed") == 1
    (version,) = history["pushed_after_first"]
    assert (history["serving"] / version / "saved_model.pb").exists()

    result = load_evaluation(evaluation.uri)
    assert result["blessed"] is True and "threshold alone" in result["reason"]
    assert result["mean_patient_dice"] == pytest.approx(custom(evaluation, "mean_patient_dice"))
    # the evaluator's Dice against the same rule computed here in numpy, patient by patient
    expected = window_rule_dice(history["phantom"], right_side_only=True)
    assert sorted(p["patient_id"] for p in result["patients"]) == sorted(expected)
    for p in result["patients"]:
        assert p["dice_before_cleanup"] == pytest.approx(expected[p["patient_id"]], abs=0.01)
        assert p["true_volume_ml"] > 0
    assert result["mean_patient_dice_before_cleanup"] == pytest.approx(np.mean(list(expected.values())), abs=0.01)
    assert result["mean_patient_dice"] > 0.5
    source = result["source_resolution"]
    assert source["mean_patient_dice"] == pytest.approx(custom(evaluation, "source_mean_patient_dice"))
    assert source["mean_patient_assd_mm"] > 0 and source["patients_without_assd"] == 0
    assert all(p["source_dice"] > 0.3 and p["assd_mm"] > 0 for p in result["patients"])
    assert result["cleanup"] == "parenchyma_hu,largest_component,foreign_ends,fill_holes"
    assert result["slices"] == sum(p["slices"] for p in result["patients"])
    assert result["baseline"] is None


@pytest.mark.slow
def test_evaluation_picture_and_summary(history):
    result = load_evaluation(history["first"]["ModelEvaluation"].uri)
    from matplotlib.image import imread
    assert imread(result["grid_png"]).shape[0] > 300   # three rows of slices
    text = format_evaluation(result)
    assert text.startswith("Model blessed: ") and result["grid_png"] in text
    assert all(p["patient_id"] in text for p in result["patients"])
    assert "at the source resolution: mean per-patient Dice" in text and "ASSD" in text


@pytest.mark.slow
def test_worse_model_than_blessed_baseline_is_not_pushed(history):
    first, second = history["first"], history["second"]
    blessing, evaluation, pushed = (second[k] for k in ("ModelBlessing", "ModelEvaluation", "PushedModel"))
    assert custom(blessing, "blessed") == 0
    assert os.path.exists(os.path.join(blessing.uri, "NOT_BLESSED"))
    assert custom(blessing, "baseline_model_id") == first["Model"].id
    assert custom(blessing, "current_model_id") == second["Model"].id != first["Model"].id
    assert custom(pushed, "pushed") == 0
    assert versions(history["serving"]) == history["pushed_after_first"]

    result = load_evaluation(evaluation.uri)
    assert "baseline" in result["reason"] and result["blessed"] is False
    assert result["mean_patient_dice"] >= 0.5      # passed the threshold: the baseline decided
    assert result["baseline"]["mean_patient_dice"] == pytest.approx(
        load_evaluation(first["ModelEvaluation"].uri)["mean_patient_dice"])
    assert result["baseline"]["id"] == first["Model"].id
    (version,) = history["pushed_after_first"]
    assert result["baseline"]["uri"] == str(history["serving"] / version) == custom(blessing, "baseline_model")


@pytest.mark.slow
def test_the_model_serving_is_not_blessed_or_pushed_again(history):
    blessing, evaluation = history["third"]["ModelBlessing"], history["third"]["ModelEvaluation"]
    assert blessing.id != history["first"]["ModelBlessing"].id, "the evaluator ran again"
    assert custom(blessing, "blessed") == 0 and "baseline_model" not in blessing.custom_properties
    result = load_evaluation(evaluation.uri)
    assert "already the one serving" in result["reason"] and result["baseline"] is None
    (version,) = history["pushed_after_first"]
    assert result["serving"] == {"uri": str(history["serving"] / version), "id": history["first"]["Model"].id,
                                 "is_this_model": True}
    assert versions(history["serving"]) == history["pushed_after_first"]


@pytest.mark.slow
def test_cleanup_removes_what_the_window_alone_takes_besides_the_liver(workspace):
    """The HU window alone also takes spleen, kidneys and vessels: keeping the largest 3D component
    (and filling holes) must lift its Dice, at model size and at the source resolution."""
    from ctseg import postprocess
    from ctseg.components.evaluation import scoring
    from ctseg.components.evaluation.executor import Segmenter, read_slices

    files = [str(workspace["examples"] / "eval" / "slices.tfrecord")]
    segmenter = Segmenter(saved_model_of(workspace["window_alone"])).probabilities
    scores = {c: scoring.evaluate(read_slices(files, 16), {"m": segmenter}, postprocess.Cleanup.parse(c))[0]["m"]
              for c in ("on", "off")}
    on, off = scores["on"], scores["off"]
    assert on["mean_patient_dice"] > off["mean_patient_dice"] + 0.05
    assert on["mean_patient_dice_before_cleanup"] == pytest.approx(off["mean_patient_dice"])
    assert on["source_resolution"]["mean_patient_dice"] > off["source_resolution"]["mean_patient_dice"] + 0.05
    assert on["source_resolution"]["mean_patient_assd_mm"] < off["source_resolution"]["mean_patient_assd_mm"]


def model_artifact(uri):
    from tfx.types import standard_artifacts
    model = standard_artifacts.Model()
    model.uri = str(uri)
    return model


def saved_model_of(uri) -> str:
    from ctseg.components.evaluation.executor import model_path
    return model_path(model_artifact(uri))


@pytest.mark.slow
def test_segmenter_adapts_to_the_trained_size(workspace):
    from ctseg.components.evaluation.executor import Segmenter
    segmenter = Segmenter(saved_model_of(workspace["good"]))
    assert segmenter.size == (SIZE, SIZE)
    hu = np.full((2, SIZE // 2, SIZE // 2), 80.0, np.float32)
    prob = segmenter.probabilities(hu)
    assert prob.shape == hu.shape
    assert prob[:, :, : SIZE // 4 - 1].min() > 0.9 and prob[:, :, SIZE // 4 + 1:].max() < 0.1


@pytest.mark.slow
def test_bad_inputs_raise_errors_naming_the_path(workspace, tmp_path):
    import tensorflow as tf
    from tfx.types import standard_artifacts

    from ctseg.components.evaluation.executor import Segmenter, read_slices, split_files
    with pytest.raises(CtsegError, match=str(tmp_path)):
        Segmenter(saved_model_of(tmp_path))
    no_signature = tf.Module()
    no_signature.f = tf.function(lambda x: x, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(no_signature, str(tmp_path / "other" / "Format-Serving"), signatures={"f": no_signature.f})
    with pytest.raises(CtsegError, match="no 'segment_hu' signature"):
        Segmenter(saved_model_of(tmp_path / "other"))

    examples = standard_artifacts.Examples()
    examples.uri, examples.split_names = str(tmp_path / "ex"), '["train"]'
    with pytest.raises(CtsegError, match="no 'eval' split"):
        split_files(examples, "eval")
    broken = tmp_path / "Split-eval" / "data.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"not a gzipped tfrecord")
    with pytest.raises(CtsegError, match="unreadable examples in .*Split-eval"):
        list(read_slices([str(broken)], 8))


@pytest.mark.slow
def test_newest_served_version_and_same_model_digest(workspace, tmp_path):
    import shutil

    from ctseg.components.evaluation.executor import newest_served_model, saved_model_digest
    from ctseg.serving import resolve_model_dir

    assert newest_served_model(str(tmp_path / "none")) is None
    good = saved_model_of(workspace["good"])
    for version in ("9", "10"):
        shutil.copytree(good, tmp_path / "serving" / version)
    (tmp_path / "serving" / "11").mkdir()             # a push under way: no saved_model.pb yet
    shutil.copytree(good, tmp_path / "serving" / "12")  # a push under way: saved_model.pb, not all variables
    for shard in (tmp_path / "serving" / "12" / "variables").glob("variables.data-*"):
        shard.unlink()
    (tmp_path / "serving" / "latest").mkdir()
    assert newest_served_model(str(tmp_path / "serving")) == str(tmp_path / "serving" / "10")
    assert resolve_model_dir(tmp_path / "serving") == tmp_path / "serving" / "10"  # what `ctseg predict` loads
    assert saved_model_digest(str(tmp_path / "serving" / "10")) == saved_model_digest(good)
    assert saved_model_digest(saved_model_of(workspace["worse"])) != saved_model_digest(good)


@pytest.mark.slow
def test_threshold_too_high_blocks_the_first_model(workspace):
    root, serving = workspace["base"] / "strict", workspace["base"] / "serving_strict"
    out = run_and_collect(eval_pipeline("ctseg-eval-strict", root, workspace["examples"], workspace["good"],
                                        serving, dice_threshold=0.99), root)
    assert custom(out["ModelBlessing"], "blessed") == 0
    assert custom(out["PushedModel"], "pushed") == 0
    assert versions(serving) == []
    result = json.loads(Path(out["ModelEvaluation"].uri, "metrics.json").read_text())
    assert "below the threshold 0.9900" in result["reason"]
    assert "not blessed" in custom(out["ModelEvaluation"], "reason")
