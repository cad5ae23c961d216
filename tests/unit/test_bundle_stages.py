"""The bundle's stage order and what rewriting a stage invalidates (kerasport.bundle), on a manifest and folders."""

import pytest

from kerasport.bundle import (
    MODEL_STAGES,
    Stage,
    forget_invalidated,
    invalidated_by,
    remove_invalidated_folders,
    stage_folder,
)
from kerasport.contract import InputSpec, ModelContract, OutputSpec
from kerasport.manifest import new_manifest


def _run_with_every_folder(tmp_path):
    for stage in Stage:
        if stage.folder:
            stage_folder(tmp_path, stage).mkdir()
            (stage_folder(tmp_path, stage) / "file").write_text(stage)
    return tmp_path


@pytest.mark.parametrize("model", MODEL_STAGES)
def test_a_new_model_invalidates_the_other_model_stage_and_everything_downstream(tmp_path, model):
    run = _run_with_every_folder(tmp_path)
    (other,) = (stage for stage in MODEL_STAGES if stage is not model)
    assert set(invalidated_by(model)) == {other, Stage.EXPORT, Stage.PARITY}
    remove_invalidated_folders(run, model)
    assert sorted(path.name for path in run.iterdir()) == [model.folder]


def test_a_re_export_drops_parity_verdicts_but_keeps_the_last_reports(tmp_path):
    run = _run_with_every_folder(tmp_path)
    contract = ModelContract(inputs=(InputSpec(name="x", dtype="float32", shape=(-1, 2)),),
                             outputs=(OutputSpec(name="y", dtype="float32", shape=(-1, 1)),))
    manifest = new_manifest(model={"name": "m"}, contract=contract,
                            stages={stage.value: {"finished": "t"} for stage in Stage})
    forget_invalidated(manifest, Stage.EXPORT)
    remove_invalidated_folders(run, Stage.EXPORT)
    assert manifest.stage(Stage.PARITY) == {} and manifest.stage(Stage.EXPORT) == {"finished": "t"}
    assert stage_folder(run, Stage.PARITY).is_dir()


def test_package_writes_outside_the_run(tmp_path):
    assert invalidated_by(Stage.PACKAGE) == ()
    with pytest.raises(ValueError, match="writes outside the run directory"):
        stage_folder(tmp_path, Stage.PACKAGE)


def test_a_bundle_is_read_once_and_verifies_against_what_it_read(tmp_path):
    from kerasport.bundle import Bundle
    from kerasport.errors import CheckFailed, UsageError
    from kerasport.manifest import artifact_entry

    contract = ModelContract(inputs=(InputSpec(name="x", dtype="float32", shape=(-1, 2)),),
                             outputs=(OutputSpec(name="y", dtype="float32", shape=(-1, 1)),))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.onnx").write_bytes(b"onnx bytes")
    manifest = new_manifest(model={"name": "m"}, contract=contract, artifacts={
        "onnx-fp32": artifact_entry(tmp_path, "export/model.onnx", format="onnx", precision="fp32")})
    manifest.save(tmp_path)
    bundle = Bundle.open(tmp_path)
    assert bundle.folder(Stage.EXPORT) == tmp_path / "export"
    bundle.verify()
    with pytest.raises(UsageError, match="no artifact of this bundle passed parity"):
        bundle.select()
    with pytest.raises(UsageError, match="has no parity verdict"):
        bundle.select(requested="onnx-fp32")
    (tmp_path / "export" / "model.onnx").write_bytes(b"altered")
    with pytest.raises(CheckFailed, match="onnx-fp32"):
        bundle.verify()
    with pytest.raises(UsageError, match="onnx-fp32"):
        bundle.select(allow_unverified=True)
    bundle.record(Stage.EXPORT, {"finished": "now"})
    assert Bundle.open(tmp_path).manifest.stage(Stage.EXPORT) == {"finished": "now"}
