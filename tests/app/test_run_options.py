"""`kerasport run` accepts every option of `kerasport train` and `kerasport export` and forwards each one.

The stage functions are replaced by recorders, so this runs in well under a second and imports no TensorFlow.
An option added to a stage without a non-default value in VALUES below fails here, with its name.
"""

from types import SimpleNamespace

import click
import pytest
import typer
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.errors import EXIT_OK

# One non-default value per option: the command-line words and what the stage must receive.
VALUES = {
    "data": (["--data", "npz:/nowhere/d.npz"], "npz:/nowhere/d.npz"),
    "run": (["--run", "/tmp/kerasport-options-run"], "/tmp/kerasport-options-run"),
    "arch": (["--arch", "edge"], "edge"),
    "task": (["--task", "regression"], "regression"),
    "epochs": (["--epochs", "3"], 3),
    "batch_size": (["--batch-size", "7"], 7),
    "learning_rate": (["--learning-rate", "0.02"], 0.02),
    "optimizer": (["--optimizer", "sgd"], "sgd"),
    "activation": (["--activation", "tanh"], "tanh"),
    "initializer": (["--initializer", "glorot_uniform"], "glorot_uniform"),
    "relu_bias": (["--relu-bias", "0.1"], 0.1),
    "lr_schedule": (["--lr-schedule", "step"], "step"),
    "lr_step_every": (["--lr-step-every", "4"], 4),
    "lr_step_factor": (["--lr-step-factor", "0.5"], 0.5),
    "lr_warmup": (["--lr-warmup", "0"], 0),
    "restore_best": (["--no-restore-best"], False),
    "image_size": (["--image-size", "32x48"], "32x48"),
    "color": (["--color", "rgb"], "rgb"),
    "plateau": (["--no-plateau"], False),
    "plateau_patience": (["--plateau-patience", "3"], 3),
    "plateau_factor": (["--plateau-factor", "0.25"], 0.25),
    "early_stopping": (["--early-stopping", "5"], 5),
    "val_split": (["--val-split", "0.2"], 0.2),
    "seed": (["--seed", "7"], 7),
    "deterministic": (["--deterministic"], True),
    "limit": (["--limit", "100"], 100),
    "width": (["--width", "0.5"], 0.5),
    "dropout": (["--dropout", "0.3"], 0.3),
    "precise_bn": (["--no-precise-bn"], False),
    "augment": (["--augment"], True),
    "tensorboard": (["--tensorboard"], True),
    "eval_samples": (["--eval-samples", "50"], 50),
    "calibration_samples": (["--calibration-samples", "60"], 60),
    "resume": (["--resume"], True),
    "distributed": (["--distributed"], True),
    "workers": (["--workers", "10.0.0.1:2222,10.0.0.2:2222"], "10.0.0.1:2222,10.0.0.2:2222"),
    "worker_index": (["--worker-index", "1"], 1),
    "collective_timeout": (["--collective-timeout", "30"], 30.0),
    "formats": (["--formats", "onnx-fp32,tflite-int8"], ["onnx-fp32", "tflite-int8"]),
    "opset": (["--opset", "17"], 17),
    "int8_io": (["--int8-io"], True),
    "allow_select_tf_ops": (["--allow-select-tf-ops"], True),
    "keep_going": (["--keep-going"], True),
    "int8_recipe": (["--int8-recipe", "full"], "full"),
}
NOT_FORWARDED = {"json_output", "help"}  # the command's own output switch, and click's --help


def options(command: str) -> dict[str, click.Parameter]:
    group = typer.main.get_command(app)
    return {param.name: param for param in group.commands[command].params if param.name not in NOT_FORWARDED}


@pytest.fixture
def received(monkeypatch):
    """Replace the stage functions with recorders; return what each was given."""
    calls: dict = {}

    def train(config, console=None):
        calls["train"] = config
        # A chief's (or a single process's) result: it wrote a bundle, so run goes on to export and parity.
        return SimpleNamespace(metrics={"test_accuracy": 0.5}, run_dir=config.run, manifest=SimpleNamespace())

    def export_bundle(options, console=None):
        calls["export"] = options
        return SimpleNamespace(rows=[{"variant": "onnx-fp32"}], run_dir=options.run)

    def run_parity(options, console=None):
        calls["parity"] = options
        return SimpleNamespace(report=SimpleNamespace(passed=True), failures=[], exit_code=0, run_dir=options.run)

    monkeypatch.setattr("kerasport.train.fit.train", train)
    monkeypatch.setattr("kerasport.export.stage.export_bundle", export_bundle)
    monkeypatch.setattr("kerasport.parity.stage.run_parity", run_parity)
    for module, printer in (("train", "print_train_summary"), ("export", "print_export_table"),
                            ("parity", "print_parity_summary")):
        monkeypatch.setattr(f"kerasport.{module}.cli.{printer}", lambda *args: None)
    return calls


def test_run_takes_exactly_train_and_export_options():
    train, export, run = options("train"), options("export"), options("run")
    assert set(run) == set(train) | set(export)
    for name, param in run.items():
        declared = train.get(name) or export[name]
        assert (param.opts, param.secondary_opts, param.default) == (
            declared.opts, declared.secondary_opts, declared.default), name


@pytest.mark.parametrize("command, stages", [("run", ("train", "export")), ("train", ("train",)),
                                             ("export", ("export",))])
def test_every_option_reaches_its_stage(received, command, stages):
    declared = options(command)
    missing = sorted(set(declared) - set(VALUES))
    assert not missing, f"give these options a non-default value in VALUES: {missing}"
    argv = [command]
    for name in declared:
        words, _ = VALUES[name]
        assert declared[name].default not in (words[-1], VALUES[name][1]), f"{name}: pick a non-default value"
        argv += words
    result = CliRunner().invoke(app, [*argv, "--json"])
    assert result.exit_code == EXIT_OK, result.output
    assert set(received) == set(stages) | ({"parity"} if command == "run" else set())

    stage_options = {stage: options(stage) for stage in stages}
    for name in declared:
        for stage in stages:
            if name in stage_options[stage]:
                assert getattr(received[stage], name) == VALUES[name][1], f"{command} --{name} -> {stage}"
    if command == "run":
        assert received["parity"].run == VALUES["run"][1]
        assert '"passed": true' in result.stdout
