"""`kerasport serve`'s one settings object: validated once when built (from the command line or in code), and carried
to every worker process unchanged. Pure and fast: no model, no server."""

import dataclasses

import pytest
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_USAGE, UsageError
from kerasport.serve.settings import CONTROL_MODES, MAX_PORT, ServeSettings
from kerasport.serve.workers import WorkerSettings


@pytest.mark.parametrize("field, value, flag", [
    ("max_batch", 0, "--max-batch 0"),
    ("max_delay_ms", -1.0, "--max-delay-ms -1.0"),
    ("max_body_bytes", 0, "--max-body-bytes 0"),
    ("threads", -1, "--threads -1"),
    ("port", MAX_PORT + 1, f"--port {MAX_PORT + 1}"),
    ("workers", -1, "--workers -1"),
    ("max_image_pixels", -1, "--max-image-pixels -1"),
    ("grpc_port", -1, "--grpc-port -1"),
    ("model_control", "sometimes", "--model-control 'sometimes'"),
    ("poll_seconds", 0.0, "--poll-seconds 0.0"),
])
def test_a_value_out_of_range_is_a_usage_error_naming_it(field, value, flag):
    with pytest.raises(UsageError, match=flag.replace("+", r"\+")):
        ServeSettings(**{field: value})


def test_model_name_with_a_repository_is_refused():
    with pytest.raises(UsageError, match="--model-name with --repository"):
        ServeSettings(repository="models", model_name="other")


def test_the_defaults_are_the_options_defaults_and_valid():
    settings = ServeSettings()
    assert settings.model_control in CONTROL_MODES and settings.image_pixel_limit is None
    assert dataclasses.replace(settings, max_image_pixels=5).image_pixel_limit == 5


def test_the_command_checks_its_settings_before_it_binds_a_port():
    result = CliRunner().invoke(app, ["serve", "--run", "nowhere", "--port", "0", "--max-batch", "0"])
    assert result.exit_code == EXIT_USAGE and "--max-batch 0 (>= 1)" in result.output, result.output


def test_worker_settings_survive_the_trip_through_the_environment():
    settings = ServeSettings(run="runs/a", variant="onnx-fp32", threads=3, workers=2, grpc_port=0, api_key="k",
                             max_image_pixels=10, access_log=False)
    worker = WorkerSettings(settings, grpc_address="127.0.0.1:9000")
    assert WorkerSettings.from_json(worker.to_json()) == worker
