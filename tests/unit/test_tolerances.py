"""The tolerance policy: defaults, `<run>/parity.toml`, command-line overrides, and the one-line errors."""

import pytest

from kerasport.errors import UsageError
from kerasport.tolerances import TOLERANCE_FILE, TolerancePolicy, load_policy


def write_toml(tmp_path, text: str):
    (tmp_path / TOLERANCE_FILE).write_text(text)
    return tmp_path


def test_without_a_file_the_defaults_apply(tmp_path):
    policy = load_policy(tmp_path)
    assert policy.to_dict() == TolerancePolicy().to_dict() and policy.source == ["defaults"]


@pytest.mark.parametrize("precision, policy_class", [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8"),
                                                     ("dynamic-int8", "int8"), ("something-new", "fp32")])
def test_each_precision_maps_to_its_class(precision, policy_class):
    policy = TolerancePolicy()
    assert policy.for_precision(precision) is getattr(policy, policy_class)


def test_file_then_command_line_override_the_defaults_key_by_key(tmp_path):
    run = write_toml(tmp_path, "[fp32]\natol = 2e-5\nnoise_multiple = 3\n[int8]\nmin_agreement = 0.95\n")
    policy = load_policy(run, {"fp32": {"atol": 4e-5, "rtol": None}, "int8": {"max_accuracy_drop": None}})
    defaults = TolerancePolicy()
    assert policy.fp32.atol == 4e-5  # the command line wins over the file
    assert policy.fp32.noise_multiple == 3.0 and isinstance(policy.fp32.noise_multiple, float)
    assert policy.fp32.rtol == defaults.fp32.rtol  # None on the command line: not overridden
    assert policy.int8.min_agreement == 0.95 and policy.int8.max_accuracy_drop == defaults.int8.max_accuracy_drop
    assert policy.fp16 == defaults.fp16
    assert list(dict.fromkeys(policy.source)) == ["defaults", str(run / TOLERANCE_FILE), "command line"]


@pytest.mark.parametrize("text, message", [
    ("[fp32\natol = 1", "not valid TOML"),
    ("atol = 1e-5\n", "atol = 1e-05; expected a table like [fp32]"),
    ("[bf16]\natol = 1e-3\n", "unknown section [bf16]; expected fp32, fp16 or int8"),
    ("[fp32]\natoll = 1e-5\n", "unknown key 'atoll' in [fp32]"),
    ("[fp16]\natol = -1.0\n", "[fp16] atol = -1.0; expected a number >= 0"),
    ("[fp16]\natol = 'small'\n", "[fp16] atol = 'small'; expected a number >= 0"),
    ("[int8]\nmin_agreement = 1.5\n", "[int8] min_agreement = 1.5; expected 0..1"),
])
def test_bad_files_are_one_line_usage_errors_naming_the_file(tmp_path, text, message):
    run = write_toml(tmp_path, text)
    with pytest.raises(UsageError, match="parity.toml") as raised:
        load_policy(run)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_bad_command_line_overrides_say_so(tmp_path):
    with pytest.raises(UsageError, match=r"command line: \[fp32\] atol = -0.1; expected a number >= 0"):
        load_policy(tmp_path, {"fp32": {"atol": -0.1}})


def test_the_fp32_bound_follows_the_models_own_float32_error():
    from kerasport.tolerances import bound_excess, noise_floors

    fp32 = TolerancePolicy().fp32
    assert fp32.noise_source == "float32_error"
    # The case: Keras' float32 answer is 3e-6 from float64, a runtime's 1.28e-5 from Keras' (atol 1e-5).
    noise = {"max_abs_diff": 1e-7, "edge_max_abs_diff": 2e-7, "float32_max_abs_diff": 3e-6,
             "float32_edge_max_abs_diff": 4e-6}
    eval_floor, edge_floor = noise_floors(fp32, noise)
    assert (eval_floor, edge_floor) == (3e-6, 4e-6)
    reference = [[0.2, 0.8]]
    assert bound_excess(fp32, reference, [[0.2 + 1.28e-5, 0.8 - 1.28e-5]], eval_floor) <= 0
    assert bound_excess(fp32, reference, [[0.21, 0.79]], eval_floor) > 0  # a real fault stays far outside
    # Not measured (a SavedModel reference): the batch-order noise, and atol as the floor.
    assert noise_floors(fp32, {"max_abs_diff": 1e-7, "edge_max_abs_diff": 2e-7}) == (1e-7, 2e-7)
    assert bound_excess(fp32, reference, [[0.2 + 1.28e-5, 0.8]], 1e-7) > 0
