"""IrcadExampleGen inside real LocalDagRunner pipelines (folder form with damaged files, zip form), read back."""
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from tfx.components import StatisticsGen
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from ctseg import dicom, ircad
from ctseg.components.ingest.component import IrcadExampleGen
from ctseg.components.ingest.executor import assign_splits, parse_split_ratios
from ctseg.errors import CtsegError
from ctseg.features import decode_example

BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
RTPLAN = Path(pydicom.data.DATA_ROOT) / "test_files" / "rtplan.dcm"


def _run(tmp: Path, gen: IrcadExampleGen, *more):
    pipe = tfx_pipeline.Pipeline(
        pipeline_name="ingest_test", pipeline_root=str(tmp / "root"), components=[gen, *more],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(str(tmp / "mlmd.sqlite")),
        beam_pipeline_args=BEAM_ARGS)
    LocalDagRunner().run(pipe)
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(str(tmp / "mlmd.sqlite")))
    [artifact] = store.get_artifacts_by_type("Examples")
    props = {k: getattr(v, v.WhichOneof("value")) for k, v in artifact.custom_properties.items()}
    return Path(artifact.uri), json.loads(artifact.properties["split_names"].string_value), props, store


def _read_split(uri: Path, split: str) -> list[dict]:
    files = sorted(str(p) for p in (uri / f"Split-{split}").glob("*.gz"))
    return [decode_example(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _source_series(patient_dir: Path, size: int):
    """(HU, mask) of each slice as pydicom reads it, ordered by z of ImagePositionPatient (orientation is axial)."""
    pairs = []
    for image in (patient_dir / "PATIENT_DICOM").iterdir():
        ds = pydicom.dcmread(image)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        mask = pydicom.dcmread(patient_dir / "MASKS_DICOM/liver" / image.name).pixel_array != 0
        pairs.append((float(ds.ImagePositionPatient[2]), hu, mask))
    pairs.sort(key=lambda p: p[0])
    return [(np.rint(dicom.resize_hu(hu, size)) if size != hu.shape[0] else hu,
             dicom.resize_mask(m.astype(np.uint8), size)) for _, hu, m in pairs]


def _rewrite(path: Path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)




@pytest.fixture(scope="module")
def damaged(small_phantom, tmp_path_factory):
    """The small phantom plus a damaged patient, an empty one and one without a liver folder; patient 2's
    file names are shuffled so that name order is not position order."""
    root = tmp_path_factory.mktemp("damaged") / "ircad"
    shutil.copytree(small_phantom, root)
    p2 = root / "3Dircadb1.2"
    n2 = len(list((p2 / "PATIENT_DICOM").iterdir()))
    order = np.random.default_rng(0).permutation(n2)
    for folder in ("PATIENT_DICOM", "MASKS_DICOM/liver"):
        for i in range(n2):
            (p2 / folder / f"image_{i}").rename(p2 / folder / f"tmp_{order[i]}")
        for i in range(n2):
            (p2 / folder / f"tmp_{i}").rename(p2 / folder / f"image_{i}")
    bad = root / "3Dircadb1.4"
    shutil.copytree(root / "3Dircadb1.3", bad)
    data = (bad / "PATIENT_DICOM/image_1").read_bytes()
    (bad / "PATIENT_DICOM/image_1").write_bytes(data[: len(data) * 2 // 3])
    shutil.copy(RTPLAN, bad / "PATIENT_DICOM/image_2")
    (bad / "MASKS_DICOM/liver/image_3").unlink()
    (bad / "PATIENT_DICOM/image_4").unlink()
    _rewrite(bad / "MASKS_DICOM/liver/image_5", Rows=32, Columns=32, PixelData=bytes(32 * 32))
    odd = np.zeros((64, 64), np.uint8)
    odd[20:30, 20:30], odd[40:44, 40:44] = 255, 7
    _rewrite(bad / "MASKS_DICOM/liver/image_6", PixelData=odd.tobytes())
    (root / "3Dircadb1.5").mkdir()
    shutil.copytree(root / "3Dircadb1.1", root / "3Dircadb1.6")
    shutil.rmtree(root / "3Dircadb1.6/MASKS_DICOM/liver")
    return root


@pytest.fixture(scope="module")
def folder_run(damaged, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder_run")
    uri, splits, props, _ = _run(tmp, IrcadExampleGen(data_root=str(damaged), image_size=32, max_bad_fraction=1.0))
    return uri, splits, props, {s: _read_split(uri, s) for s in splits}


@pytest.fixture(scope="module")
def zip_run(small_phantom_zip, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zip_run")
    gen = IrcadExampleGen(data_root=str(small_phantom_zip), image_size=64,
                          split_ratios={"train": 0.6, "eval": 0.2, "test": 0.2})
    stats = StatisticsGen(examples=gen.outputs["examples"])
    uri, splits, props, store = _run(tmp, gen, stats)
    [stats_artifact] = store.get_artifacts_by_type("ExampleStatistics")
    return uri, splits, props, {s: _read_split(uri, s) for s in splits}, Path(stats_artifact.uri)


def _patients(examples):
    return {e["patient_id"] for e in examples}


@pytest.mark.slow
def test_folder_form_splits_by_patient_and_records_counts(folder_run):
    uri, splits, props, by_split = folder_run
    assert splits == ["train", "eval"]
    train, evaluation = _patients(by_split["train"]), _patients(by_split["eval"])
    assert train and evaluation and not train & evaluation
    assert train | evaluation == {"3Dircadb1.1", "3Dircadb1.2", "3Dircadb1.3", "3Dircadb1.4"}
    expected = assign_splits([f"3Dircadb1.{k}" for k in range(1, 7)], {"train": 0.75, "eval": 0.25})
    assert all(expected[e["patient_id"]] == s for s in splits for e in by_split[s])
    assert props["patients"] == 4 and props["data_root"].endswith("ircad")
    assert props["slices_train"] == len(by_split["train"]) and props["slices_eval"] == len(by_split["eval"])
    assert props["slices_with_liver"] == sum(e["mask"].any() for s in splits for e in by_split[s]) > 0


@pytest.mark.slow
def test_quarantine_report_names_every_bad_file_with_its_reason(folder_run, damaged):
    uri, _, props, _ = folder_run
    report = [json.loads(line) for line in (uri / "quarantine.jsonl").read_text().splitlines()]
    assert props["quarantined"] == len(report)
    reasons = {(r["patient_id"], Path(r["file"]).relative_to(damaged).as_posix()): r["reason"] for r in report}
    bad = "3Dircadb1.4"
    assert "cannot be decoded" in reasons[(bad, f"{bad}/PATIENT_DICOM/image_1")]
    assert "no pixel data" in reasons[(bad, f"{bad}/PATIENT_DICOM/image_2")]
    assert "slice without its mask" in reasons[(bad, f"{bad}/PATIENT_DICOM/image_3")]
    assert "mask without its slice" in reasons[(bad, f"{bad}/MASKS_DICOM/liver/image_4")]
    assert "32x32 but its slice is 64x64" in reasons[(bad, f"{bad}/MASKS_DICOM/liver/image_5")]
    assert "empty patient folder" in reasons[("3Dircadb1.5", "3Dircadb1.5")]
    no_organ = [r for (pid, _), r in reasons.items() if pid == "3Dircadb1.6"]
    assert len(no_organ) == len(list((damaged / "3Dircadb1.6/PATIENT_DICOM").iterdir()))
    assert all("no MASKS_DICOM/liver folder" in r for r in no_organ)
    assert len(report) == 5 + 1 + len(no_organ)  # the odd-valued mask is kept, not quarantined


@pytest.mark.slow
def test_damaged_patient_keeps_good_slices_with_position_gaps(folder_run, damaged):
    _, _, _, by_split = folder_run
    examples = [e for s in by_split.values() for e in s if e["patient_id"] == "3Dircadb1.4"]
    indices = sorted(e["slice_index"] for e in examples)
    slices = len(list((damaged / "3Dircadb1.3" / "PATIENT_DICOM").iterdir()))
    assert len(indices) == slices - 5 and indices != list(range(len(indices)))
    odd = [e for e in examples if e["mask_distinct_values"] == 3]
    assert len(odd) == 1 and set(np.unique(odd[0]["mask"])) <= {0, 1} and odd[0]["mask"].any()


@pytest.mark.slow
def test_folder_form_hu_order_and_masks_match_the_source(folder_run, damaged):
    """Patient 2's files are shuffled: slice_index must follow ImagePositionPatient, not the file names."""
    _, _, _, by_split = folder_run
    examples = sorted((e for s in by_split.values() for e in s if e["patient_id"] == "3Dircadb1.2"),
                      key=lambda e: e["slice_index"])
    source = _source_series(damaged / "3Dircadb1.2", 32)
    assert [e["slice_index"] for e in examples] == list(range(len(source)))
    for e, (hu, mask) in zip(examples, source):
        np.testing.assert_array_equal(e["image_hu"], hu.astype(np.int16))
        np.testing.assert_array_equal(e["mask"], mask)
        assert e["image_hu"].dtype == np.int16 and e["image_hu"].shape == (32, 32)
        assert e["source_rows"] == 64 and e["hu_min"] == pytest.approx(float(hu.min()))
        assert e["liver_fraction"] == pytest.approx(float(mask.mean()))


@pytest.mark.slow
def test_zip_form_reads_the_nested_zips_into_three_splits(zip_run, small_phantom):
    uri, splits, props, by_split, _ = zip_run
    assert splits == ["train", "eval", "test"]
    patient_sets = [_patients(by_split[s]) for s in splits]
    assert all(len(p) == 1 for p in patient_sets) and len(set().union(*patient_sets)) == 3
    assert props["quarantined"] == 0 and (uri / "quarantine.jsonl").read_text() == ""
    for split in splits:
        assert props[f"slices_{split}"] == len(by_split[split])
    for e in by_split["eval"]:
        assert {k for k in e} >= {"spacing_mm", "thickness_mm", "liver_fraction", "hu_mean", "hu_std"}
    examples = sorted((e for s in splits for e in by_split[s] if e["patient_id"] == "3Dircadb1.1"),
                      key=lambda e: e["slice_index"])
    source = _source_series(small_phantom / "3Dircadb1.1", 64)
    assert len(examples) == len(source)
    for e, (hu, mask) in zip(examples, source):
        np.testing.assert_array_equal(e["image_hu"], hu)  # same size: exact stored HU, tissue by tissue
        np.testing.assert_array_equal(e["mask"], mask)
    ds = pydicom.dcmread(small_phantom / "3Dircadb1.1/PATIENT_DICOM/image_0")
    assert examples[0]["spacing_mm"] == pytest.approx(float(ds.PixelSpacing[0]))
    assert examples[0]["thickness_mm"] == pytest.approx(float(ds.SliceThickness))


@pytest.mark.slow
def test_statistics_gen_consumes_the_examples_unchanged(zip_run):
    _, splits, props, _, stats_uri = zip_run
    import tensorflow_data_validation as tfdv

    for split in splits:
        stats = tfdv.load_stats_binary(str(stats_uri / f"Split-{split}" / "FeatureStats.pb"))
        assert stats.datasets[0].num_examples == props[f"slices_{split}"]


@pytest.mark.slow  # runs ingest
def test_too_many_bad_slices_fail_the_run_naming_the_file(small_phantom, tmp_path):
    root = tmp_path / "ircad"
    shutil.copytree(small_phantom / "3Dircadb1.1", root / "3Dircadb1.1")
    shutil.copy(RTPLAN, root / "3Dircadb1.1/PATIENT_DICOM/image_7")
    with pytest.raises(CtsegError, match=r"3Dircadb1.1 1/\d+.*PATIENT_DICOM/image_7 \(no pixel data"):
        _run(tmp_path, IrcadExampleGen(data_root=str(root), image_size=16))


def test_split_assignment_is_deterministic_and_fills_every_split():
    ids = [f"3Dircadb1.{k}" for k in range(1, 4)]
    ratios = {"train": 0.8, "eval": 0.1, "test": 0.1}
    first = assign_splits(ids, ratios)
    assert first == assign_splits(list(reversed(ids)), ratios)
    assert sorted(first.values()) == ["eval", "test", "train"]
    many = [f"patient-{k}" for k in range(2000)]
    split_of = assign_splits(many, {"train": 3, "eval": 1})
    assert 0.72 < sum(v == "train" for v in split_of.values()) / len(many) < 0.78
    more = assign_splits(many + ["patient-new"], {"train": 3, "eval": 1})
    assert all(more[pid] == split_of[pid] for pid in many)  # a patient's split does not move when others arrive
    assert assign_splits(["only"], {"train": 1, "eval": 1}) in ({"only": "train"}, {"only": "eval"})


@pytest.mark.parametrize("ratios", [{"train": 1}, {"train": 1, "eval": 0}, {"train": 1, "eval": 1, "holdout": 1}, "x"])
def test_bad_split_ratios_are_refused(ratios):
    with pytest.raises(CtsegError, match="split_ratios"):
        parse_split_ratios(ratios)


def test_component_refuses_bad_parameters():
    with pytest.raises(CtsegError, match="organ"):
        IrcadExampleGen(data_root="/x", organ="../liver")
    with pytest.raises(CtsegError, match="image_size"):
        IrcadExampleGen(data_root="/x", image_size=4)
    with pytest.raises(CtsegError, match="max_bad_fraction"):
        IrcadExampleGen(data_root="/x", max_bad_fraction=2)
    gen = IrcadExampleGen(data_root="/x", split_ratios={"train": 0.5, "eval": 0.25, "test": 0.25})
    assert json.loads(gen.exec_properties["split_ratios"]) == {"train": 0.5, "eval": 0.25, "test": 0.25}


def test_layouts_give_the_same_patients_and_bytes(small_phantom, small_phantom_zip, tmp_path):
    """Extracted folder, published zip, and the folder after extracting only the outer zip."""
    with zipfile.ZipFile(small_phantom_zip) as z:
        z.extractall(tmp_path / "outer_only")
    roots = [str(small_phantom), str(small_phantom_zip), str(tmp_path / "outer_only")]
    found = [ircad.find_patients(r) for r in roots]
    assert [[p.patient_id for p in f] for f in found] == [["3Dircadb1.1", "3Dircadb1.2", "3Dircadb1.3"]] * 3
    reads = []
    for refs in found:
        with ircad.open_patient(refs[1], "spleen") as patient:
            reads.append((patient.images.read("image_3"), patient.masks.read("image_3"), sorted(patient.mask_files)))
    assert reads[0] == reads[1] == reads[2]
    with ircad.open_patient(found[1][0], "liver") as patient:
        assert patient.mask_files["image_0"].endswith(
            "3Dircadb1.zip!3Dircadb1/3Dircadb1.1/MASKS_DICOM.zip!MASKS_DICOM/liver/image_0")
    series = ircad.read_series(str(tmp_path / "outer_only/3Dircadb1/3Dircadb1.2"))
    assert series["image_3"] == reads[0][0] and len(series) == len(reads[0][2])


def test_missing_or_unusable_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(CtsegError, match="does not exist"):
        ircad.find_patients(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CtsegError, match="no patient folders"):
        ircad.find_patients(str(tmp_path / "empty"))
    (tmp_path / "notes.zip").write_text("not a zip")
    with pytest.raises(CtsegError, match="neither a folder nor a readable zip"):
        ircad.find_patients(str(tmp_path / "notes.zip"))


@pytest.mark.slow  # runs ingest
def test_reports_left_in_the_tmp_dir_by_an_earlier_try_are_not_counted(small_phantom, tmp_path):
    """A retried execution reuses its tmp dir; a stale report shard there must not add slices or quarantines."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts

    from ctseg.components.ingest.executor import Executor
    from ctseg.pipeline.local_runner import LOCAL_BEAM_ARGS

    stale = tmp_path / "tmp" / "retry" / "ingest" / "report-00001-of-00002.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"summary": {"patient_id": "3Dircadb1.1", "split": "train", "slices": 99,
                                             "written": 99, "bad": 0, "with_organ": 99}}) + "\n"
                     + json.dumps({"quarantine": {"patient_id": "3Dircadb1.1", "file": "x", "reason": "stale"}}) + "\n")
    executor = Executor(base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=list(LOCAL_BEAM_ARGS),
        tmp_dir=str(tmp_path / "tmp") + "/", unique_id="retry"))
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "out")
    executor.Do({}, {"examples": [examples]}, {
        "data_root": str(small_phantom), "organ": "liver", "image_size": 32,
        "split_ratios": json.dumps({"train": 0.75, "eval": 0.25}), "max_bad_fraction": 0.0})
    written = sum(1 for s in ("train", "eval") for f in (tmp_path / "out" / f"Split-{s}").iterdir()
                  for _ in tf.data.TFRecordDataset(str(f), compression_type="GZIP"))
    counted = sum(examples.get_int_custom_property(f"slices_{s}") for s in ("train", "eval"))
    assert counted == written == sum(len(list((p / "PATIENT_DICOM").iterdir())) for p in small_phantom.iterdir())
    assert examples.get_int_custom_property("quarantined") == 0
