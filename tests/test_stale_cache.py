"""Changed data at the same path, or changed step code, is never served from TFX's cache (issue 14).

TFX's own FileBasedExampleGen fingerprints its input files before it runs (its driver puts
`io_utils.generate_fingerprint` into the exec properties: `tfx/components/example_gen/driver.py`
lines 110-121 and `tfx/utils/io_utils.py` lines 202-220, TFX 1.15.1), and exec properties are part
of the cache key (`tfx/orchestration/portable/cache_utils.py` `get_cache_context`, lines 77-133).
IrcadExampleGen does the same with `ircad.data_fingerprint`, taken when the component is built.
"""
import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from tfx.orchestration import metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from ctseg import ircad
from ctseg.code_version import code_version
from ctseg.components.ingest.component import IrcadExampleGen
from ctseg.features import decode_example
from ctseg.phantom import write_phantom
from ctseg.pipeline.local_runner import LOCAL_BEAM_ARGS
from ctseg.pipeline.pipeline import create_pipeline


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
    files = [str(p) for p in Path(artifact.uri).glob("Split-*/*.gz")]
    patients = {decode_example(r.numpy())["patient_id"] for r in tf.data.TFRecordDataset(files, compression_type="GZIP")}
    return artifact, newest, patients


def _gen(data: Path) -> IrcadExampleGen:
    return IrcadExampleGen(data_root=str(data), image_size=16, max_bad_fraction=1.0)


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


def test_code_version_changes_with_the_code(tmp_path, monkeypatch):
    package = tmp_path / "fakestep"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "executor.py").write_text(textwrap.dedent("def do():\n    return 1\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_version("fakestep")
    (package / "executor.py").write_text(textwrap.dedent("def do():\n    return 2\n"))
    assert code_version("fakestep") != before
    sys.modules.pop("fakestep", None)
    assert json.dumps(code_version("ctseg.ircad")) and code_version("ctseg.ircad") != code_version("ctseg.dicom")
    with pytest.raises(FileNotFoundError):
        code_version("ctseg.no_such_module")
