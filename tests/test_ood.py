"""`ctseg predict` says when a series is unlike what the model was trained on (ctseg/profile.py,
ctseg/predict/ood.py, schemas/in_distribution.pbtxt).

The training profile is made from the examples ingest's own `ingest_patient` writes for a small phantom
(64 px, one contrast phase, low noise), as the Trainer makes it from its train split. A held-out patient
of the same kind (another seed) gives no finding; the same patient altered gives the finding that names
it: slices twice the thickest, CT stored without its rescale (+1024 HU), MR-like intensities (0-2000),
a model whose prediction is far above the largest training volume, and the chest slices above the liver
of a chest-abdomen scan. Models are the Trainer's UNET: untrained (tests/tiny_unet.py) where only the
input check matters, trained here for seconds where the prediction must be plausible.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from ctseg import profile as P
from ctseg.cli import main as cli_main
from ctseg.phantom import patient_geometries, write_phantom
from ctseg.predict import load_series
from ctseg.predict.ood import Check

SIZE, SLICES, TRAIN_PATIENTS, MODEL_SIZE = 64, 16, 5, 64
KIND = dict(phases=("portal",), noise_hu=(8.0, 10.0), protocols=("abdomen",))


def ingest_examples(root: Path) -> dict[str, list[bytes]]:
    """{patient: serialized examples} as ingest writes them, without the Beam pipeline around it."""
    from ctseg import ircad
    from ctseg.components.ingest.executor import ingest_patient

    return {ref.patient_id: [out[1] for out in ingest_patient(ref, "train", "liver", MODEL_SIZE)
                             if isinstance(out, tuple)] for ref in ircad.find_patients(str(root))}


def held_out_seed(training: list) -> int:
    """The first seed after the training one whose patient lies within the training thickness and spacing:
    another patient of the training kind (a thicker one would be a finding, rightly)."""
    thickness = [g.thickness_mm for g in training]
    spacing = [g.spacing_mm for g in training]
    for seed in range(1, 50):
        g = patient_geometries(1, SLICES, seed, **KIND)[0]
        if min(thickness) <= g.thickness_mm <= max(thickness) and min(spacing) <= g.spacing_mm <= max(spacing):
            return seed
    raise AssertionError("no held-out seed inside the training geometry")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ood")
    train = write_phantom(tmp / "train", patients=TRAIN_PATIENTS, slices=SLICES, size=SIZE, seed=0, **KIND)
    seed = held_out_seed(patient_geometries(TRAIN_PATIENTS, SLICES, 0, **KIND))
    held = write_phantom(tmp / "held", patients=1, slices=SLICES, size=SIZE, seed=seed, **KIND) / "3Dircadb1.1"
    examples = ingest_examples(train)
    patients = sorted(examples)
    return {"tmp": tmp, "held": held, "train_dir": train, "train": [e for p in patients[:-1] for e in examples[p]],
            "eval": examples[patients[-1]]}


@pytest.fixture(scope="module")
def untrained_model(data) -> Path:
    """The tiny UNET (untrained) with the profile of the training patients, as the Trainer writes it."""
    from tiny_unet import export_tiny_unet

    model = export_tiny_unet(data["tmp"] / "untrained" / "1")
    P.write_profile(model, P.build_profile(data["train"]))
    return model


def _profile_check(model: Path) -> Check:
    return Check(P.read_profile(model / P.PROFILE_DIR))


def _input_findings(model: Path, series_dir: Path) -> list:
    """The input check alone on a series, as predict runs it before the model."""
    from bench.ood import series_hu

    series = load_series(series_dir)
    check = _profile_check(model)
    check.before_model([s.header for s in series.slices])(series_hu(series, MODEL_SIZE))
    return check.findings


def rewrite(src: Path, dest: Path, change) -> Path:
    """A copy of a patient's PATIENT_DICOM with `change(ds, hu)` applied to every slice (in file order)."""
    from ctseg.dicom import hu_from_dataset

    out = dest / "PATIENT_DICOM"
    out.mkdir(parents=True)
    files = sorted((src / "PATIENT_DICOM").iterdir(), key=lambda p: int(p.name.split("_")[1]))
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        change(ds, hu_from_dataset(ds).astype(np.float64), i)
        ds.save_as(out / f.name)
    return dest


def thicker(thickness_mm: float):
    """A `rewrite` change: slices `thickness_mm` thick, spaced as far apart."""
    def change(ds, hu, i):
        ds.SliceThickness = thickness_mm
        ds.ImagePositionPatient = [0, 0, thickness_mm * i]
    return change


def store_signed(ds, values: np.ndarray) -> None:
    ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = np.rint(values).astype("<i2").tobytes()


def test_profile_holds_training_statistics_and_patients(data, untrained_model):
    profile = P.read_profile(untrained_model / P.PROFILE_DIR)
    names = {f.path.step[0] for f in profile.statistics.datasets[0].features}
    assert names == {*P.SERIES_FEATURES, P.HU_SAMPLE_KEY}
    assert profile.statistics.datasets[0].num_examples == len(data["train"])
    assert len(profile.patients) == TRAIN_PATIENTS - 1
    for p in profile.patients:  # against the phantom's own masks, counted here
        g = patient_geometries(TRAIN_PATIENTS, SLICES, 0, **KIND)[int(p["patient_id"].split(".")[1]) - 1]
        folder = data["train_dir"] / p["patient_id"] / "MASKS_DICOM" / "liver"
        masks = [pydicom.dcmread(f).pixel_array for f in folder.iterdir()]
        voxels = sum(np.count_nonzero(m) for m in masks)
        assert p["volume_ml"] == pytest.approx(voxels * g.spacing_mm ** 2 * g.thickness_mm / 1000, abs=0.06)
        assert p["organ_slice_fraction"] == pytest.approx(sum(m.any() for m in masks) / len(masks), abs=1e-3)


def test_held_out_patient_of_the_training_kind_gives_no_input_finding(data, untrained_model):
    assert _input_findings(untrained_model, data["held"]) == []


def test_slices_twice_as_thick_as_any_in_training(data, untrained_model, tmp_path, capsys):
    thickest = max(p["thickness_mm"] for p in P.read_profile(untrained_model / P.PROFILE_DIR).patients)

    series = rewrite(data["held"], tmp_path / "thick", thicker(2 * thickest))
    findings = _input_findings(untrained_model, series)
    assert [f.feature for f in findings] == ["thickness_mm"]
    assert findings[0].message.startswith(f"slices are {2 * thickest:.1f} mm thick; the model was trained on ")
    out = tmp_path / "out"
    assert cli_main(["predict", str(series), "--model", str(untrained_model), "--out", str(out),
                     "--require-in-distribution"]) != 0
    err = capsys.readouterr().err
    assert "--require-in-distribution: the series is unlike" in err and "mm thick" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # refused before anything was written


def test_ct_stored_without_its_rescale(data, untrained_model, tmp_path):
    series = rewrite(data["held"], tmp_path / "norescale", lambda ds, hu, i: store_signed(ds, hu + 1024))
    findings = {f.feature: f for f in _input_findings(untrained_model, series)}
    assert "hu_min" in findings and "rescale" in findings["hu_min"].message
    assert findings[P.HU_SAMPLE_KEY].distance > findings[P.HU_SAMPLE_KEY].threshold
    assert findings[P.HU_SAMPLE_KEY].message.startswith("HU histogram unlike the training data (Jensen-Shannon ")


def test_mr_like_intensities(data, untrained_model, tmp_path):
    def mr_like(ds, hu, i):
        store_signed(ds, (hu - hu.min()) / max(np.ptp(hu), 1) * 2000)
    findings = {f.feature for f in _input_findings(untrained_model, rewrite(data["held"], tmp_path / "mr", mr_like))}
    assert {"hu_min", P.HU_SAMPLE_KEY} <= findings


def test_copied_model_folder_without_a_store_still_checks(data, untrained_model, tmp_path, capsys):
    copy = shutil.copytree(untrained_model, tmp_path / "mailed" / "model")
    thickest = max(p["thickness_mm"] for p in P.read_profile(copy / P.PROFILE_DIR).patients)

    series = rewrite(data["held"], tmp_path / "thick", thicker(2 * thickest))
    out = tmp_path / "out"
    assert cli_main(["predict", str(series), "--model", str(copy), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training_profile"] == str(copy / P.PROFILE_DIR)
    assert any(f["feature"] == "thickness_mm" and f["stage"] == "input" for f in summary["out_of_distribution"])
    assert "warning: out of distribution: slices are" in capsys.readouterr().err
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.ContentDescription.startswith("OUT OF DISTRIBUTION") and "slice thickness" in seg.ContentDescription
    assert "mm thick" in seg.SegmentSequence[0].SegmentDescription


def test_model_without_a_profile_warns_and_require_refuses(data, tmp_path, capsys):
    from tiny_unet import export_tiny_unet

    model = export_tiny_unet(tmp_path / "bare")
    assert cli_main(["predict", str(data["held"]), "--model", str(model), "--out", str(tmp_path / "a")]) == 0
    assert "carries no training profile" in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["out_of_distribution"] is None
    assert cli_main(["predict", str(data["held"]), "--model", str(model), "--out", str(tmp_path / "b"),
                     "--require-in-distribution"]) != 0
    assert not (tmp_path / "b").exists()


def test_prediction_far_above_every_training_volume(data, tmp_path):
    """A model that labels the whole body (HU above -200) as liver: several times the largest liver. The HU
    gate of the clean-up is off: it would take the body's fat and bone back from this mask."""
    import tensorflow as tf

    from ctseg.postprocess import Cleanup
    from ctseg.predict import predict
    from ctseg.serving import export_model

    hu = tf.keras.Input((MODEL_SIZE, MODEL_SIZE))
    body = tf.keras.layers.Activation("sigmoid")(tf.keras.layers.Rescaling(0.1, offset=20.0)(hu))  # HU > -200
    export_model(tf.keras.Model(hu, body),
                 MODEL_SIZE, str(tmp_path / "body" / "1"))
    P.write_profile(tmp_path / "body" / "1", P.build_profile(data["train"]))
    check = _profile_check(tmp_path / "body" / "1")
    result = predict(data["held"], tmp_path / "body" / "1", tmp_path / "out", in_distribution=check,
                     cleanup=Cleanup(parenchyma_hu=False))
    volume = {f["feature"]: f for f in result["out_of_distribution"]}["volume_ml"]
    largest = max(p["volume_ml"] for p in check.profile.patients)
    assert result["volume_ml"] > 2 * largest
    assert volume["message"].startswith("predicted liver ")
    assert "ml: above every training patient (largest " in volume["message"]


def test_slices_with_organ_allow_one_slice_of_the_series_below_and_any_share_above():
    """Training patients with the liver on 50-60% of their slices: widened below by the curated margin (0.75 of the
    range), the range starts at 42.5%; on a 14-slice series one slice lower (35.7%) is what a prediction that
    misses the liver's last slice gives, two slices lower (28.6%) is another body region. A scan of the liver
    alone, organ on every slice, is what the model segments best: no finding (TotalSegmentator's liver crops)."""
    from ctseg.predict.ood import check_prediction

    rows = [{"patient_id": f"p{i}", "volume_ml": 1500.0, "organ_slice_fraction": f} for i, f in enumerate((0.5, 0.6))]
    profile = P.Profile(statistics=None, patients=rows, eval_predictions=[])

    def names(fraction, slices):
        return [f.feature for f in check_prediction(1500.0, fraction, None, profile, slices)]

    assert names(5 / 14, 14) == []
    assert names(4 / 14, 14) == ["organ_slice_fraction"]
    assert names(5 / 14, 0) == ["organ_slice_fraction"]       # without the series' length: the margin alone
    assert names(1.0, 14) == [] and names(0.6 + 4 / 14, 14) == []
    below = check_prediction(1500.0, 4 / 14, None, profile, 14)[0].to_json()
    assert below["allowed_range"][1] is None                  # open above: null, as JSON has no infinity
    json.dumps(below, allow_nan=False)


def test_field_of_view_is_judged_through_the_zoom_and_thin_slices_are_no_finding():
    """The model resizes the whole slice to its size, so a 3 mm pixel of a 366 mm field is no finding where a
    178 mm crop is (the spine crop of TotalSegmentator's s0009, Dice 0.48); training fields of view of 315-423 mm
    seen through the zoom augmentation (0.7-1.3) allow 242-605 mm. Thinner slices than the training ones are no
    finding, thicker ones are."""
    from ctseg.predict.ood import allowed_range, curated_schema

    curated = {f.name: f for f in curated_schema().feature}
    lo, hi = allowed_range(curated["field_of_view_mm"], 315.0, 423.0)
    assert lo == pytest.approx(315 / 1.3) and hi == pytest.approx(423 / 0.7)
    assert lo > 178 and hi > 500 and lo < 366
    lo, hi = allowed_range(curated["thickness_mm"], 1.7, 3.5)
    assert lo <= 0 and hi == pytest.approx(3.5 + 0.1 * 1.8)
    lo, hi = allowed_range(curated["components_before_cleanup"], 1, 1)
    assert lo <= 0 and hi == 100


@pytest.fixture(scope="module")
def trained_model(data) -> Path:
    """The Trainer's UNET at two levels, trained for seconds on the training patients at the examples'
    size, exported as the Trainer exports it with the profile it writes (eval patient: the last one)."""
    import tensorflow as tf

    from ctseg import features
    from ctseg.models.unet.config import UnetConfig
    from ctseg.models.unet.model import build_unet, compile_model
    from ctseg.serving import export_model, load_model

    decoded = [features.decode_example(e) for e in data["train"]]
    hu = np.stack([d[features.IMAGE_KEY] for d in decoded]).astype(np.float32)
    mask = np.stack([d[features.MASK_KEY] for d in decoded]).astype(np.float32)
    config = UnetConfig.from_custom_config(dict(image_size=MODEL_SIZE, depth=2, base_filters=16, dropout=0.0,
                                                learning_rate=1e-3, batch_size=8, epochs=40, context_slices=0))
    tf.keras.utils.set_random_seed(config.seed)
    model = compile_model(build_unet(config), config, decay_steps=config.epochs * math.ceil(len(hu) / 8))
    model.fit(hu, mask, batch_size=8, epochs=config.epochs, verbose=0)
    path = data["tmp"] / "trained" / "1"
    export_model(model, MODEL_SIZE, str(path))
    P.write_profile(path, P.build_profile(data["train"], load_model(path), data["eval"]))
    return path


@pytest.mark.slow
def test_in_distribution_series_gives_no_finding(data, trained_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["predict", str(data["held"]), "--model", str(trained_model), "--out", str(out),
                     "--require-in-distribution"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["out_of_distribution"] == []
    assert "out of distribution" not in capsys.readouterr().err
    assert not pydicom.dcmread(out / "seg.dcm").get("ContentDescription")


@pytest.mark.slow
def test_chest_only_series(data, trained_model, tmp_path):
    """The slices of a chest-abdomen scan above the liver: lungs, heart and mediastinum, no liver."""
    from ctseg.predict import predict

    patient = write_phantom(tmp_path / "chest", patients=1, slices=SLICES, size=SIZE, seed=3,
                            **{**KIND, "protocols": ("chest_abdomen",)}) / "3Dircadb1.1"
    masks = sorted((patient / "MASKS_DICOM" / "liver").iterdir(), key=lambda p: int(p.name.split("_")[1]))
    top = max(i for i, m in enumerate(masks) if pydicom.dcmread(m).pixel_array.any())
    chest = tmp_path / "chest_only" / "PATIENT_DICOM"
    chest.mkdir(parents=True)
    for f in (patient / "PATIENT_DICOM").iterdir():
        if int(f.name.split("_")[1]) > top:
            shutil.copy(f, chest / f.name)
    assert len(list(chest.iterdir())) >= 4
    result = predict(chest.parent, trained_model, tmp_path / "out", in_distribution=_profile_check(trained_model))
    found = {f["feature"] for f in result["out_of_distribution"]}
    assert found & {"volume_ml", "organ_slice_fraction", P.HU_SAMPLE_KEY}, result["out_of_distribution"]

    def no_constants(name):
        raise AssertionError(f"summary.json holds {name}, which is not JSON")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=no_constants)
    assert summary["out_of_distribution"] == result["out_of_distribution"]


@component
def Train(model: OutputArtifact[standard_artifacts.Model], profile_dir: Parameter[str]):
    from tiny_unet import export_tiny_unet

    P.copy_profile(profile_dir, export_tiny_unet(Path(model.uri) / "Format-Serving") / P.PROFILE_DIR)


@component
def Evaluate(model: InputArtifact[standard_artifacts.Model],
             evaluation: OutputArtifact[standard_artifacts.ModelEvaluation],
             blessing: OutputArtifact[standard_artifacts.ModelBlessing]):
    from ctseg.components.evaluation.executor import record_profile, write_blessing

    record_profile(str(Path(model.uri) / "Format-Serving"), evaluation, blessing)
    write_blessing(blessing, model, None, True, {})


@pytest.fixture(scope="module")
def pipeline_store(untrained_model, tmp_path_factory) -> dict:
    """A LocalDagRunner run (ML Metadata in SQLite) whose Trainer exports a model with its profile and
    whose evaluation records it as SegmentationEvaluator does (`record_profile`)."""
    from tfx import v1 as tfx

    work = tmp_path_factory.mktemp("ood_store") / "work"
    train = Train(profile_dir=str(untrained_model / P.PROFILE_DIR)).with_id("Trainer")
    evaluate = Evaluate(model=train.outputs["model"])
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="ood", pipeline_root=str(work / "pipeline"), components=[train, evaluate],
        enable_cache=False, metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(work / "metadata.sqlite"))))
    (model,) = (work / "pipeline" / "Trainer" / "model").iterdir()
    return {"work": work, "model": model / "Format-Serving"}


@pytest.mark.slow
def test_trainer_output_without_its_profile_finds_the_one_its_evaluation_recorded(pipeline_store, data, tmp_path):
    from ctseg.mlmd.lineage import lineage
    from ctseg.mlmd.store import connect

    model = pipeline_store["model"]
    store = pipeline_store["work"] / "metadata.sqlite"
    found = lineage(connect(str(store)), str(model))["training_profile"]
    assert found["in_model"] == str(model / P.PROFILE_DIR) and len(found["recorded_by"]) == 1
    assert found["computed_by"]["node_id"] == "Trainer"
    shutil.rmtree(model / P.PROFILE_DIR)
    profile = P.find_profile(model)
    assert profile is not None and profile.source.startswith(found["recorded_by"][0]["uri"])
    assert "recorded by the evaluation" in profile.source
    assert cli_main(["predict", str(data["held"]), "--model", str(model), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["training_profile"] == profile.source and summary["out_of_distribution"] is not None
