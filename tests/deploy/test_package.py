"""`kerasport package`: Triton repository, TF Serving layout, KServe YAML and the container build context.

One tiny bundle per session (trained, exported to onnx-fp32 and onnx-int8, parity run); each test packages a copy.
The outputs are checked with the consumers' own schemas where one is installed: Triton's `ModelConfig` protobuf
(tritonclient), `tf.saved_model.load`, the Knative-free parts of KServe's InferenceService with a JSON schema of
the fields that matter (kubernetes-validate, which holds the upstream OpenAPI schemas, is not installed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import ServerProcess, copy_bundle
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.contract import DYNAMIC, InputSpec, ModelContract, OutputSpec, image_input_spec
from kerasport.deploy import container as package_container
from kerasport.deploy import kserve as package_kserve
from kerasport.deploy import triton as package_triton
from kerasport.deploy.base import DEFAULT_MAX_BATCH
from kerasport.deploy.rss import memory_request_mib, read_status_mib, warmup_body
from kerasport.deploy.stage import DEPLOY_NAME, TARGET_NAMES, targets
from kerasport.errors import EXIT_CHECK_FAILED, EXIT_RUNTIME, EXIT_USAGE
from kerasport.fsutil import sha256_file
from kerasport.manifest import load_manifest
from kerasport.verdict import Verdict

runner = CliRunner()
ONNX_VARIANTS = ("onnx-fp32", "onnx-int8")


@pytest.fixture(scope="module")
def packaged_source(trained, tmp_path_factory) -> Path:
    from kerasport.export.stage import ExportOptions, export_bundle
    from kerasport.parity.stage import ParityOptions, run_parity

    run = copy_bundle(trained, tmp_path_factory.mktemp("package"))
    export_bundle(ExportOptions(run=str(run), formats=list(ONNX_VARIANTS), calibration_samples=50))
    assert run_parity(ParityOptions(run=str(run), sweep=False)).exit_code == 0
    return run


@pytest.fixture
def bundle(packaged_source, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(packaged_source, copy)
    return copy


def package(run: Path, target: str, out: Path, *extra: str):
    return runner.invoke(app, ["package", "--run", str(run), "--target", target, "--out", str(out), *extra])


def assert_one_line_error(result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def artifact_entries(run: Path) -> dict:
    return {artifact.name: artifact.entry for artifact in load_manifest(run).artifacts()}


# --- triton -----------------------------------------------------------------------------------------------------
def parse_model_config(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_triton_repository_parses_as_triton_model_config_and_matches_the_contract(bundle, tmp_path):
    from tritonclient.grpc import model_config_pb2

    before = artifact_entries(bundle)
    out = tmp_path / "triton"
    result = package(bundle, "triton", out)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(bundle)
    contract, model = manifest.contract, manifest.name
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [model, f"{model}-int8"]
    for entry, variant in ((model, "onnx-fp32"), (f"{model}-int8", "onnx-int8")):
        config = parse_model_config((out / entry / "config.pbtxt").read_text())
        assert (config.name, config.platform) == (entry, package_triton.PLATFORM)
        assert config.max_batch_size == DEFAULT_MAX_BATCH
        assert [i.name for i in config.input] == contract.input_names
        assert [o.name for o in config.output] == contract.output_names
        for tensor, spec in zip([*config.input, *config.output], [*contract.input_specs(), *contract.output_specs()],
                                strict=True):
            assert model_config_pb2.DataType.Name(tensor.data_type) == f"TYPE_{spec.v2_datatype}"
            assert list(tensor.dims) == list(spec.shape[1:])
        (output,) = config.output
        labels = (out / entry / output.label_filename).read_text().split()
        assert labels == list(contract.output(output.name).labels)
        assert config.HasField("dynamic_batching")
        assert [model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_CPU"]
        copied = out / entry / "1" / package_triton.MODEL_FILE
        assert sha256_file(copied) == manifest.artifact(variant).sha256
        deploy = (out / entry).parent / DEPLOY_NAME
        assert manifest.artifact(variant).sha256 in deploy.read_text()
    assert "tritonserver --model-repository=/models" in (out / DEPLOY_NAME).read_text()
    record = manifest.stage("package")["triton"]
    assert set(record["variants"]) == set(ONNX_VARIANTS) and record["entries"][model]["variant"] == "onnx-fp32"
    assert record["files"][f"{model}/config.pbtxt"] == sha256_file(out / model / "config.pbtxt")
    assert artifact_entries(bundle) == before  # packaging never touches artifact entries


def test_triton_config_of_a_fixed_batch_and_a_scalar_output_still_parses():
    contract = ModelContract(inputs=(image_input_spec("picture", 4, 4, "rgb"),),
                             outputs=(OutputSpec(name="score", dtype="float32", shape=(DYNAMIC,)),))
    batched = parse_model_config(package_triton.render_config("m", contract, 4))
    (score,) = batched.output
    assert batched.max_batch_size == 4 and list(score.dims) == [1] and list(score.reshape.shape) == []
    fixed = ModelContract(inputs=(InputSpec(name="picture", dtype="uint8", shape=(2, 4, 4, 3)),),
                          outputs=(OutputSpec(name="score", dtype="float32", shape=(2, 5)),))
    unbatched = parse_model_config(package_triton.render_config("m", fixed, 4))
    assert unbatched.max_batch_size == 0 and not unbatched.HasField("dynamic_batching")
    assert list(unbatched.input[0].dims) == [2, 4, 4, 3] and unbatched.input[0].data_type == 2  # TYPE_UINT8


def test_an_onnx_graph_that_disagrees_with_the_contract_fails_and_leaves_out_intact(bundle, tmp_path):
    out = tmp_path / "triton"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    manifest = load_manifest(bundle)
    manifest.data["outputs"][0]["name"] = "renamed"  # the contract no longer names the graph's output
    manifest.save(bundle)
    result = package(bundle, "triton", out)
    assert_one_line_error(result, EXIT_RUNTIME, "onnx-fp32", "renamed")
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".triton")]  # no staging left behind


# --- tfserving --------------------------------------------------------------------------------------------------
def model_server_config_class():
    """TF Serving's ModelServerConfig: the real proto when tensorflow-serving-api is installed, else the subset of
    tensorflow_serving/config/model_server_config.proto (+ ServableVersionPolicy) that models.config uses."""
    try:
        from tensorflow_serving.config import model_server_config_pb2

        return model_server_config_pb2.ModelServerConfig
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="kerasport_test_tfs.proto", package="tfs", syntax="proto3")

    def message(name, *fields, nested=()):
        msg = proto.message_type.add(name=name) if not nested else nested[0].nested_type.add(name=name)
        for number, (field, kind, label, type_name) in enumerate(fields, 1):
            msg.field.add(name=field, number=number, type=kind, label=label, type_name=type_name)
        return msg

    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    policy = message("ServableVersionPolicy")
    policy.nested_type.add(name="Specific").field.add(name="versions", number=1, type=f.TYPE_INT64, label=many)
    policy.field.add(name="specific", number=102, type=f.TYPE_MESSAGE, label=one,
                     type_name=".tfs.ServableVersionPolicy.Specific")
    message("ModelConfig", ("name", f.TYPE_STRING, one, None), ("base_path", f.TYPE_STRING, one, None))
    config = proto.message_type[-1]
    config.field.add(name="model_platform", number=4, type=f.TYPE_STRING, label=one)
    config.field.add(name="model_version_policy", number=7, type=f.TYPE_MESSAGE, label=one,
                     type_name=".tfs.ServableVersionPolicy")
    message("ModelConfigList", ("config", f.TYPE_MESSAGE, many, ".tfs.ModelConfig"))
    message("ModelServerConfig", ("model_config_list", f.TYPE_MESSAGE, one, ".tfs.ModelConfigList"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tfs.ModelServerConfig"))


def test_tfserving_layout_loads_with_tensorflow_and_keeps_the_serving_signature(bundle, tmp_path):
    import tensorflow as tf
    from google.protobuf import text_format

    out = tmp_path / "tfs"
    result = package(bundle, "tfserving", out, "--version", "3")
    assert result.exit_code == 0, result.output
    manifest = load_manifest(bundle)
    contract, model = manifest.contract, manifest.name
    config = text_format.Parse((out / "models.config").read_text(), model_server_config_class()())
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (model, f"/models/{model}", "tensorflow")
    assert list(entry.model_version_policy.specific.versions) == [3]
    loaded = tf.saved_model.load(str(out / model / "3"))
    signature = loaded.signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert sorted(inputs) == sorted(contract.input_names)
    for spec in contract.input_specs():
        assert inputs[spec.name].shape.as_list() == [None if d == DYNAMIC else d for d in spec.shape]
        assert inputs[spec.name].dtype.name == spec.dtype
    outputs = signature.structured_outputs
    assert sorted(outputs) == sorted(contract.output_names)
    for spec in contract.output_specs():
        assert outputs[spec.name].shape.as_list() == [None if d == DYNAMIC else d for d in spec.shape]
    example = {spec.name: tf.zeros(spec.example_shape(2), spec.dtype) for spec in contract.input_specs()}
    assert signature(**example)[contract.output_names[0]].shape[0] == 2
    assert manifest.artifact("saved_model").sha256 in (out / DEPLOY_NAME).read_text()
    assert manifest.stage("package")["tfserving"]["model_dir"] == f"{model}/3"


# --- kserve -----------------------------------------------------------------------------------------------------
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
COMMON_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"}, "kind": {"const": "InferenceService"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": DNS_1035, "maxLength": 63}}},
        "spec": {"type": "object", "required": ["predictor"]}},
}


def probe_schema(path: str) -> dict:
    return {"type": "object", "required": ["httpGet"], "properties": {"httpGet": {
        "type": "object", "required": ["path", "port"],
        "properties": {"path": {"const": path}, "port": {"const": package_kserve.PORT}}}}}


KERASPORT_SCHEMA = {"allOf": [COMMON_SCHEMA, {"properties": {"spec": {"properties": {"predictor": {
    "type": "object", "required": ["containers", "volumes"],
    "properties": {
        "containers": {"type": "array", "minItems": 1, "prefixItems": [{
            "type": "object",
            "required": ["name", "image", "args", "env", "readinessProbe", "livenessProbe", "resources",
                         "volumeMounts"],
            "properties": {
                "name": {"const": "kserve-container"},
                "env": {"contains": {"const": {"name": "PROTOCOL", "value": "v2"}}},
                "readinessProbe": probe_schema("/v2/health/ready"),
                "livenessProbe": probe_schema("/v2/health/live"),
                "resources": {"type": "object", "required": ["requests"], "properties": {"requests": {
                    "type": "object", "required": ["memory"],
                    "properties": {"memory": {"type": "string", "pattern": r"^[0-9]+Mi$"}}}}},
                "volumeMounts": {"contains": {"type": "object", "required": ["mountPath", "readOnly"],
                                              "properties": {"mountPath": {"const": "/bundle"},
                                                             "readOnly": {"const": True}}}},
            }}]},
        "volumes": {"contains": {"type": "object", "required": ["persistentVolumeClaim"], "properties": {
            "persistentVolumeClaim": {"type": "object", "required": ["claimName", "readOnly"],
                                      "properties": {"readOnly": {"const": True}}}}}},
    }}}}}}]}
TRITON_SCHEMA = {"allOf": [COMMON_SCHEMA, {"properties": {"spec": {"properties": {"predictor": {
    "type": "object", "required": ["triton"], "properties": {"triton": {
        "type": "object", "required": ["storageUri", "protocolVersion"],
        "properties": {"protocolVersion": {"const": "v2"}, "storageUri": {"type": "string", "minLength": 1}}}}}}}}}]}


def independent_rss_mib(run: Path) -> float:
    """VmRSS of a `kerasport serve` started by the tests' own ServerProcess, after the same warm-up."""
    server = ServerProcess(run, "--no-access-log")
    try:
        contract = load_manifest(run).contract
        for batch in (1, 8):
            request = urllib.request.Request(f"{server.url}/v2/models/{server.ready['model']}/infer",
                                             data=warmup_body(contract, batch),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
        return read_status_mib(server.pid)["VmRSS"]
    finally:
        server.stop()


def test_kserve_services_validate_and_request_memory_from_the_measured_rss(bundle, tmp_path):
    import jsonschema
    import yaml

    out = tmp_path / "kserve"
    result = package(bundle, "kserve", out, "--image", "registry.example/kerasport:1", "--storage-uri", "s3://b/r")
    assert result.exit_code == 0, result.output
    own = yaml.safe_load((out / package_kserve.KERASPORT_FILE).read_text())
    triton = yaml.safe_load((out / package_kserve.TRITON_FILE).read_text())
    jsonschema.validate(own, KERASPORT_SCHEMA)
    jsonschema.validate(triton, TRITON_SCHEMA)
    for broken in ({"env": [{"name": "PROTOCOL", "value": "v1"}]}, {"readinessProbe": probe_schema("/healthz")}):
        mutated = json.loads(json.dumps(own))
        mutated["spec"]["predictor"]["containers"][0].update(broken)
        with pytest.raises(jsonschema.ValidationError):  # the schema can fail
            jsonschema.validate(mutated, KERASPORT_SCHEMA)
    container = own["spec"]["predictor"]["containers"][0]
    assert container["image"] == "registry.example/kerasport:1" and triton["spec"]["predictor"]["triton"][
        "storageUri"] == "s3://b/r"
    assert container["command"] + container["args"] == ["kerasport", "serve", "--run", "/bundle", "--host", "0.0.0.0",
                                                        "--port", "8080"]
    memory = load_manifest(bundle).stage("package")["kserve"]["memory"]
    peak = max(memory["vm_rss_mib"], memory["vm_hwm_mib"])
    assert container["resources"]["requests"]["memory"] == f"{memory_request_mib(peak)}Mi" == \
        f"{memory['request_mib']}Mi"
    assert 1.5 * peak <= memory["request_mib"] < 1.5 * peak + 32
    independent = independent_rss_mib(bundle)
    assert 0.67 < memory["vm_rss_mib"] / independent < 1.5, (memory, independent)
    deploy = (out / DEPLOY_NAME).read_text()
    assert "kubectl apply -f inferenceservice-kerasport.yaml" in deploy and f"{memory['vm_rss_mib']:.1f} MiB" in deploy
    for entry in load_manifest(bundle).stage("package")["kserve"]["entries"]:
        parse_model_config((out / package_kserve.REPOSITORY_DIR / entry / "config.pbtxt").read_text())


def test_the_yaml_emitter_round_trips_through_a_yaml_parser():
    import yaml

    value = {"a": [{"b": "x: y", "c": [1, 2.5, True, None]}, [], {}], "odd key": "#not a comment", "n": "8080"}
    assert yaml.safe_load(package_kserve.to_yaml(value, "header\nline two")) == value


# --- container --------------------------------------------------------------------------------------------------
INSTRUCTIONS = {"FROM", "LABEL", "ENV", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD",
                "WORKDIR", "ARG", "ADD", "VOLUME", "STOPSIGNAL", "SHELL"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: comments and blank lines dropped, continuations joined."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            logical.append(pending)
            pending = ""
    assert pending == "", "a continuation runs off the end"
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in logical]


def test_container_context_is_a_valid_dockerfile_with_a_verified_trimmed_bundle_that_serves(bundle, tmp_path):
    out = tmp_path / "context"
    result = package(bundle, "container", out, "--variants", "onnx-int8")
    assert result.exit_code == 0, result.output
    instructions = dockerfile_instructions((out / "Dockerfile").read_text())
    assert {name for name, _ in instructions} <= INSTRUCTIONS
    assert instructions[0] == ("FROM", "python:3.11-slim")
    for name, arguments in instructions:
        if name == "COPY":
            assert (out / arguments.split()[0]).exists(), arguments
    by_name = {name: arguments for name, arguments in instructions}
    assert json.loads(by_name["ENTRYPOINT"]) == package_container.ENTRYPOINT
    assert by_name["USER"].split(":")[0] not in ("0", "root")
    assert "/v2/health/ready" in by_name["HEALTHCHECK"]
    runs = [arguments for name, arguments in instructions if name == "RUN"]
    assert "kerasport bundle verify --run /bundle" in runs and any("[serve]" in run for run in runs)
    (wheel,) = (out / "wheels").glob("kerasport-*.whl")
    assert wheel.name in " ".join(runs)
    trimmed = load_manifest(out / "bundle")
    assert trimmed.artifact_names() == ["onnx-int8"]
    assert trimmed.artifact("onnx-int8").entry == load_manifest(bundle).artifact("onnx-int8").entry
    assert sorted(p.relative_to(out / "bundle").as_posix() for p in (out / "bundle").rglob("*") if p.is_file()) == \
        ["export/model_int8.onnx", "manifest.json"]  # nothing TF
    verified = runner.invoke(app, ["bundle", "verify", "--run", str(out / "bundle")])
    assert verified.exit_code == 0, verified.output
    server = ServerProcess(out / "bundle", "--no-access-log")
    try:
        assert server.ready["variant"] == "onnx-int8"
        with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=10) as response:
            assert response.status == 200
    finally:
        server.stop()
    assert "docker build -t" in (out / DEPLOY_NAME).read_text()
    assert load_manifest(bundle).stage("package")["container"]["installed"] is None


@pytest.mark.slow
def test_container_check_install_measures_a_tf_free_serve_install_and_pins_it(bundle, source_wheel, tmp_path):
    out = tmp_path / "context"
    # --wheel: the session's wheel; building one from the source tree is the container-context test's subject
    result = package(bundle, "container", out, "--check-install", "--wheel", str(source_wheel))
    assert result.exit_code == 0, result.output
    installed = load_manifest(bundle).stage("package")["container"]["installed"]
    assert installed["tensorflow_absent"] and installed["bundle_verify"].startswith("ok:")
    assert 50 < installed["installed_mib"] < installed["site_packages_mib"] < 2000
    pins = (out / package_container.CONSTRAINTS).read_text().split()
    assert any(pin.startswith("onnxruntime==") for pin in pins)
    assert not any(pin.lower().startswith(("tensorflow", "keras==")) for pin in pins)
    assert f"-c /tmp/{package_container.CONSTRAINTS}" in (out / "Dockerfile").read_text()
    assert f"{installed['installed_mib']:.1f} MiB" in (out / DEPLOY_NAME).read_text()


# --- errors -----------------------------------------------------------------------------------------------------
def test_unknown_target_missing_bundle_and_bad_names_exit_2_with_one_line(bundle, tmp_path):
    assert tuple(targets()) == TARGET_NAMES
    assert_one_line_error(package(bundle, "sagemaker", tmp_path / "o"), EXIT_USAGE, "sagemaker", *TARGET_NAMES)
    assert_one_line_error(package(bundle, "", tmp_path / "o"), EXIT_USAGE, "no --target")
    assert_one_line_error(package(tmp_path / "nothing", "triton", tmp_path / "o"), EXIT_USAGE, "no bundle")
    assert_one_line_error(package(bundle, "triton", tmp_path / "o", "--version", "v2"), EXIT_USAGE, "--version")
    assert_one_line_error(package(bundle, "triton", tmp_path / "o", "--model-name", "My_Model"), EXIT_USAGE,
                          "--model-name")
    assert_one_line_error(package(bundle, "triton", tmp_path / "o", "--variants", "saved_model"), EXIT_USAGE,
                          "saved_model", "onnx")
    assert_one_line_error(package(bundle, "triton", bundle), EXIT_USAGE, "would replace the bundle")
    assert not (tmp_path / "o").exists()


def test_a_variant_that_failed_parity_is_refused_unless_allowed(bundle, tmp_path):
    manifest = load_manifest(bundle)
    manifest.set_parity("onnx-int8", {**manifest.artifact("onnx-int8").parity, "verdict": Verdict.FAIL})
    manifest.save(bundle)
    assert_one_line_error(package(bundle, "triton", tmp_path / "o", "--variants", "onnx-int8"), EXIT_USAGE,
                          "onnx-int8", "failed parity", "--allow-unverified")
    defaulted = package(bundle, "triton", tmp_path / "default")  # the default skips it
    assert defaulted.exit_code == 0, defaulted.output
    assert [p.name for p in (tmp_path / "default").iterdir() if p.is_dir()] == [manifest.name]
    allowed = package(bundle, "triton", tmp_path / "allowed", "--variants", "onnx-int8", "--allow-unverified")
    assert allowed.exit_code == 0, allowed.output
    assert "**Unverified**" in (tmp_path / "allowed" / DEPLOY_NAME).read_text()


def test_an_altered_artifact_fails_the_check_with_exit_1(bundle, tmp_path):
    onnx = load_manifest(bundle).artifact("onnx-fp32").resolve(bundle)
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert_one_line_error(package(bundle, "triton", tmp_path / "o"), EXIT_CHECK_FAILED, "onnx-fp32", "altered")


def test_package_help_runs_without_tensorflow():
    script = "\n".join(["import sys", "from kerasport.app.cli import app",
                        "sys.argv = ['kerasport', 'package', '--help']",
                        "try:", "    app()", "except SystemExit:", "    pass",
                        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'",
                        "assert 'kerasport.deploy.container' not in sys.modules, 'targets were imported'"])
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           cwd=Path(sys.executable).anchor, timeout=120)
    assert shown.returncode == 0 and "--target" in shown.stdout, shown.stderr[-2000:]
