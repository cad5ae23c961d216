"""`kerasport package --target tfserving`: the SavedModel in TensorFlow Serving's layout.

`<out>/<model>/<version>/` is a verified copy of the bundle's `saved_model` artifact (its `serving_default`
signature takes the contract's input names and returns its output names), and `<out>/models.config` is a
`ModelServerConfig` in protobuf text format that serves exactly that version, with the model directory mounted
at `/models`. No TensorFlow import: the copy is checked by its sha256, not by loading it.
"""

from __future__ import annotations

from pathlib import Path

from .base import PackageContext, TargetOutput, copy_verified

CONFIG_NAME = "models.config"
MOUNT = "/models"
TFSERVING_IMAGE = "tensorflow/serving:latest"


def render_models_config(model_name: str, version: int) -> str:
    """models.config: one model, its base path under /models, the TensorFlow platform, one pinned version.

    Args:
        model_name: the model's name in TF Serving's URLs and its directory under `--out`.
        version: the version directory to serve.

    Returns:
        The text of models.config (ModelServerConfig in protobuf text format).
    """
    return "\n".join([
        "model_config_list {",
        "  config {",
        f'    name: "{model_name}"',
        f'    base_path: "{MOUNT}/{model_name}"',
        '    model_platform: "tensorflow"',
        "    model_version_policy {",
        "      specific {",
        f"        versions: {version}",
        "      }",
        "    }",
        "  }",
        "}",
    ]) + "\n"


def tfserving_command(out: str) -> str:
    return (f"docker run --rm -p 8500:8500 -p 8501:8501 -v \"{out}\":{MOUNT}:ro {TFSERVING_IMAGE} "
            f"--model_config_file={MOUNT}/{CONFIG_NAME}")


def write_tfserving(context: PackageContext, staging: Path) -> TargetOutput:
    """The `tfserving` target: `<model>/<version>/` (the SavedModel) and `models.config`.

    Args:
        context: the verified bundle; `chosen` holds its one SavedModel.
        staging: the directory that becomes `--out`.

    Returns:
        The docker command, notes for DEPLOY.md and the manifest record.

    Raises:
        UsageError: more than one SavedModel was chosen.
    """
    from kerasport.errors import UsageError

    if len(context.chosen) != 1:
        raise UsageError(f"--variants {','.join(a.name for a in context.chosen)}; --target tfserving serves one "
                         f"SavedModel (expected one tf_saved_model artifact)")
    (artifact,) = context.chosen
    version_dir = Path(context.model_name) / str(context.version)
    copy_verified(context, artifact, staging / version_dir)
    (staging / CONFIG_NAME).write_text(render_models_config(context.model_name, context.version))
    contract = context.manifest.contract
    signature = artifact.get("signature", "serving_default")
    example = ", ".join(f'"{spec.name}": [...]' for spec in contract.input_specs())
    notes = ["## Layout", "",
             f"`{version_dir.as_posix()}/` is the bundle's `{artifact.name}` (sha256 `{artifact.sha256}`, the hash "
             f"of its file tree as `kerasport bundle verify` computes it). Its `{signature}` signature takes "
             f"{', '.join(f'`{s.name}` {s.dtype} {list(s.shape)}' for s in contract.input_specs())} and returns "
             f"{', '.join(f'`{s.name}` {s.dtype} {list(s.shape)}' for s in contract.output_specs())}.",
             f"`{CONFIG_NAME}` serves version {context.version} of `{context.model_name}` from "
             f"`{MOUNT}/{context.model_name}`.", "",
             f"REST: `curl -d '{{\"signature_name\": \"{signature}\", \"inputs\": {{{example}}}}}' "
             f"localhost:8501/v1/models/{context.model_name}:predict`; gRPC on 8500."]
    return TargetOutput(command=tfserving_command(str(Path(context.options.out).resolve())), notes=["\n".join(notes)],
                        record={"model_dir": version_dir.as_posix(), "config": CONFIG_NAME, "signature": signature})
