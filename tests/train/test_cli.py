"""`kerasport train` through the CLI: exit codes, one-line errors, no TensorFlow for --help."""

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import write_npz
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_OK, EXIT_USAGE

runner = CliRunner()


def test_help_and_version_do_not_import_tensorflow():
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from kerasport.app.cli import app\n"
            "runner = CliRunner()\n"
            "for args in (['--help'], ['train', '--help'], ['--version']):\n"
            "    assert runner.invoke(app, args).exit_code == 0, args\n"
            "heavy = sorted(m for m in ('tensorflow', 'keras', 'onnxruntime', 'sklearn') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_console_script_help_lists_train():
    script = Path(sys.executable).with_name("kerasport")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "train" in result.stdout
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("kerasport ")


def test_bad_data_is_one_line_exit_2_and_writes_nothing(tmp_path):
    bad = write_npz(tmp_path / "bad.npz", x_train=__import__("numpy").zeros((5, 32, 32)))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", f"npz:{bad}", "--run", str(run)])
    assert result.exit_code == EXIT_USAGE
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.npz" in lines[0], result.output
    assert not run.exists()


def test_unknown_choice_is_exit_2(tmp_path):
    result = runner.invoke(app, ["train", "--arch", "resnet", "--run", str(tmp_path / "run")])
    assert result.exit_code == EXIT_USAGE and "--arch 'resnet' is not one of seed, edge" in result.output


def test_cli_run_json_and_bad_rerun_keeps_the_bundle(tmp_path, idx_dir):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", f"idx:{idx_dir}", "--run", str(run), "--width", "0.125",
                                 "--epochs", "2", "--json"])
    assert result.exit_code == EXIT_OK, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["epochs_run"] == 2
    manifest_before = (run / "manifest.json").read_bytes()

    missing = runner.invoke(app, ["train", "--data", f"idx:{tmp_path / 'nowhere'}", "--run", str(run)])
    assert missing.exit_code == EXIT_USAGE and "is not a directory" in missing.output
    assert (run / "manifest.json").read_bytes() == manifest_before
    assert (run / "train" / "model.keras").is_file()


def test_tensorflow_start_up_lines_stay_off_the_console():
    # what every entry point does (kerasport.app.cli.main) before a stage imports TensorFlow
    code = ("from kerasport.tfenv import quiet_tensorflow\nquiet_tensorflow()\n"
            "import keras\nimport tensorflow as tf\ntf.constant(1.0) + 1\nprint('ok')\n")
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout == "ok\n", result.stderr
    noise = [line for line in result.stderr.splitlines() if line[:1] in "IWE" and line[1:5].isdigit()
             or "absl::InitializeLog" in line]
    assert noise == [], result.stderr
