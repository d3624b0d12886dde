"""Changed data at the same path, or changed step code, is never served from TFX's cache.

TFX's own FileBasedExampleGen fingerprints its input files before it runs (its driver puts
`io_utils.generate_fingerprint` into the exec properties: `tfx/components/example_gen/driver.py`
lines 110-121 and `tfx/utils/io_utils.py` lines 202-220, TFX 1.15.1), and exec properties are part
of the cache key (`tfx/orchestration/portable/cache_utils.py` `get_cache_context`, lines 77-133).
IrcadExampleGen does the same with `ircad.data_fingerprint`, taken when the component is built.
"""
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from ctseg import ircad
from ctseg.code_version import code_version, import_closure
from ctseg.components.ingest.component import IrcadExampleGen
from ctseg.features import decode_example
from ctseg.mlmd.files import split_dirs
from ctseg.mlmd.runs import describe_run
from ctseg.phantom import write_phantom
from ctseg.pipeline.local_runner import LOCAL_BEAM_ARGS, ingest_pipeline
from ctseg.pipeline.pipeline import TRAINER_RUN_FN, create_pipeline, trainer_step


def _run(tmp: Path, gen: IrcadExampleGen):
    """One LocalDagRunner run of the ingest step with caching on; returns (Examples artifact, patients read)."""
    config = metadata.sqlite_metadata_connection_config(str(tmp / "mlmd.sqlite"))
    LocalDagRunner().run(tfx_pipeline.Pipeline(
        pipeline_name="stale_cache", pipeline_root=str(tmp / "root"), components=[gen], enable_cache=True,
        metadata_connection_config=config, beam_pipeline_args=list(LOCAL_BEAM_ARGS)))
    store = metadata_store.MetadataStore(config)
    newest = max(store.get_executions(), key=lambda e: e.id)
    [event] = [e for e in store.get_events_by_execution_ids([newest.id]) if e.type == e.OUTPUT]
    [artifact] = store.get_artifacts_by_id([event.artifact_id])
    files = [str(p) for folder in split_dirs(artifact.uri).values() for p in Path(folder).glob("*.gz")]
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    patients = {decode_example(r.numpy())["patient_id"] for r in records}
    return artifact, newest, patients


def _gen(data: Path) -> IrcadExampleGen:
    return IrcadExampleGen(data_root=str(data), image_size=16, max_bad_fraction=1.0)


@pytest.mark.slow  # four LocalDagRunner runs of Beam ingest
def test_new_data_at_the_same_path_is_ingested_again_and_unchanged_data_is_cached(tmp_path):
    data = tmp_path / "ircad"
    write_phantom(data, patients=4, slices=3, size=64, seed=1)
    first, first_run, first_patients = _run(tmp_path, _gen(data))
    assert len(first_patients) == 4
    assert first.custom_properties["input_fingerprint"].string_value == ircad.data_fingerprint(str(data))
    assert first_run.custom_properties["input_fingerprint"].string_value == ircad.data_fingerprint(str(data))

    shutil.rmtree(data)  # five other patients at the same path
    write_phantom(data, patients=5, slices=4, size=64, seed=7)
    second, second_run, second_patients = _run(tmp_path, _gen(data))
    assert second.id != first.id and second_run.last_known_state == second_run.COMPLETE
    assert len(second_patients) == 5 and second.custom_properties["patients"].int_value == 5
    assert second.custom_properties["input_fingerprint"].string_value != first.custom_properties[
        "input_fingerprint"].string_value

    cached, cached_run, _ = _run(tmp_path, _gen(data))  # nothing changed: the cache still serves
    assert cached_run.last_known_state == cached_run.CACHED and cached.id == second.id

    gen = _gen(data)  # what a changed executor gives the step: another code_version, so no cached result
    gen.exec_properties["code_version"] = "0" * 16
    changed, changed_run, _ = _run(tmp_path, gen)
    assert changed_run.last_known_state == changed_run.COMPLETE and changed.id != second.id


def test_fingerprint_follows_sizes_mtimes_and_names(tmp_path):
    data = write_phantom(tmp_path / "ircad", patients=1, slices=2, size=16, seed=1)
    before = ircad.data_fingerprint(str(data))
    files = [f for f in data.rglob("*") if f.is_file()]
    assert before.startswith(f"files:{len(files)},bytes:{sum(f.stat().st_size for f in files)},")
    assert before == ircad.data_fingerprint(str(data) + "/")
    image = data / "3Dircadb1.1/PATIENT_DICOM/image_0"
    stat = image.stat()
    image.write_bytes(image.read_bytes()[::-1])  # same size, same name, other bytes and mtime
    assert ircad.data_fingerprint(str(data)) != before
    zipped = write_phantom(tmp_path / "z.zip", patients=1, slices=2, size=16, seed=1, as_zip=True)
    assert ircad.data_fingerprint(str(zipped)).startswith(f"files:1,bytes:{zipped.stat().st_size},")
    assert stat.st_size == image.stat().st_size


def test_unreadable_data_gets_a_fingerprint_that_is_never_cached(tmp_path):
    one, two = (_gen(tmp_path / "nowhere").exec_properties["input_fingerprint"] for _ in range(2))
    assert one.startswith(ircad.UNREAD_PREFIX) and two.startswith(ircad.UNREAD_PREFIX) and one != two


def test_create_pipeline_fingerprints_the_data_and_versions_every_custom_step(small_phantom, tmp_path):
    pipe = create_pipeline(pipeline_name="p", pipeline_root=str(tmp_path), data_root=str(small_phantom),
                           serving_dir=str(tmp_path / "serving"))
    by_id = {c.id: c for c in pipe.components}
    assert by_id["IrcadExampleGen"].exec_properties["input_fingerprint"] == ircad.data_fingerprint(str(small_phantom))
    for step in ("IrcadExampleGen", "ValidationGate", "SegmentationEvaluator"):
        assert len(by_id[step].exec_properties["code_version"]) == 16


FAKE_PACKAGE = {
    "__init__.py": "",
    "executor.py": "from . import helpers\nfrom fakestep.lazy import Thing\n\ndef do():\n    return helpers.one()\n",
    "helpers.py": "def one():\n    import fakestep.deep.leaf\n    return 1\n",
    "deep/__init__.py": "",
    "deep/leaf.py": "from .. import errors\nVALUE = 1\n",
    "errors.py": "",
    "lazy.py": "BOUND = 1\n\ndef __getattr__(name):\n    from fakestep import lazy_target\n    return lazy_target\n",
    "lazy_target.py": "",
    "unrelated.py": "X = 1\n",
}


def _fake_package(root: Path, monkeypatch) -> Path:
    for name, text in FAKE_PACKAGE.items():
        (root / "fakestep" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "fakestep" / name).write_text(text)
    monkeypatch.syspath_prepend(str(root))
    return root / "fakestep"


def test_code_version_follows_every_import_of_the_entry_module_and_nothing_else(tmp_path, monkeypatch):
    package = _fake_package(tmp_path, monkeypatch)
    try:
        closure = import_closure("fakestep.executor", package="fakestep")
        assert closure == ["fakestep", "fakestep.deep", "fakestep.deep.leaf", "fakestep.errors",
                           "fakestep.executor", "fakestep.helpers", "fakestep.lazy", "fakestep.lazy_target"]
        before = code_version("fakestep.executor", package="fakestep")
        (package / "unrelated.py").write_text("X = 2\n")
        assert code_version("fakestep.executor", package="fakestep") == before
        (package / "deep" / "leaf.py").write_text("from .. import errors\nVALUE = 2\n")  # two imports away
        assert code_version("fakestep.executor", package="fakestep") != before
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "fakestep"]:
            sys.modules.pop(name)
    with pytest.raises(FileNotFoundError):
        code_version("ctseg.no_such_module")


def test_each_step_is_keyed_on_the_modules_it_imports():
    """The Trainer runs the export (ctseg.serving) and the slice decoding behind the features
    (ctseg.dicom, reached through ctseg.features); the evaluator does not run `ctseg predict`."""
    trainer = import_closure(TRAINER_RUN_FN.rpartition(".")[0])
    assert {"ctseg.serving", "ctseg.features", "ctseg.dicom", "ctseg.models.unet.model"} <= set(trainer)
    assert not any(m.startswith("ctseg.components") for m in trainer)
    assert "ctseg.ircad" in import_closure("ctseg.components.ingest.executor")
    evaluator = import_closure("ctseg.components.evaluation.executor")
    assert "ctseg.postprocess" in evaluator and "ctseg.predict" not in evaluator
    for entry in (TRAINER_RUN_FN.rpartition(".")[0], "ctseg.components.ingest.executor",
                  "ctseg.components.validation.executor", "ctseg.components.evaluation.executor"):
        for module in import_closure(entry):  # a name imported from a string would be invisible to the walk
            source = Path(importlib.util.find_spec(module).origin).read_text()
            assert "import_module(" not in source and "__import__(" not in source, module


@pytest.mark.slow
def test_trainer_runs_again_when_code_outside_the_model_package_changes(small_phantom, tmp_path, monkeypatch):
    """The Trainer as `create_pipeline` builds it, in three LocalDagRunner runs: the second is served
    from the cache; the third follows an edit of the model export (ctseg.serving, outside
    ctseg.models.unet and not used by ingest, whose Examples stay cached) and trains again."""
    import ctseg.code_version

    def run():
        pipeline, example_gen = ingest_pipeline(data_root=small_phantom, workdir=tmp_path, image_size=64)
        pipeline.components.append(trainer_step(
            example_gen.outputs["examples"], image_size=64, train_steps=2, eval_steps=1,
            custom_config={"depth": 1, "base_filters": 4, "epochs": 1, "batch_size": 4}))
        pipeline.enable_cache = True
        LocalDagRunner().run(pipeline)
        store = metadata_store.MetadataStore(pipeline.metadata_connection_config)
        return {e["node_id"]: e["state"] for e in describe_run(store, "latest")["executions"]}

    assert run()["Trainer"] == "complete"
    assert run() == {"IrcadExampleGen": "cached", "Trainer": "cached"}
    source = ctseg.code_version._source
    monkeypatch.setattr(ctseg.code_version, "_source",
                        lambda name: source(name) + (b"\n# edited\n" if name == "ctseg.serving" else b""))
    assert run() == {"IrcadExampleGen": "cached", "Trainer": "complete"}
