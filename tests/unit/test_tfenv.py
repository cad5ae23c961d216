"""`quiet_tensorflow`: which of TensorFlow's start-up lines are dropped at each TF_CPP_MIN_LOG_LEVEL."""

import os
import subprocess
import sys

import pytest

from kerasport.tfenv import is_noise

BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
INFO = "I0000 00:00:1795892534.308198   10106 port.cc:153] oneDNN custom operations are on.\n"
ERROR = "E0000 00:00:1795892537.130351   10106 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
LATER_WARNING = "W1128 18:59:19.123456   10106 graph.cc:12] a warning after absl is initialised\n"


@pytest.mark.parametrize("line, dropped_from_level", [(BANNER, 1), (INFO, 1), (LATER_WARNING, 2), (ERROR, 3),
                                                      ("Traceback (most recent call last):\n", 4),
                                                      ("I0000 is not an absl line without the rest\n", 4)])
def test_absl_lines_below_the_level_are_noise(line, dropped_from_level):
    assert [is_noise(line, level) for level in range(4)] == [level >= dropped_from_level for level in range(4)]


def test_the_environment_is_set_and_tensorflow_is_not_imported():
    code = ("import os, sys\nfrom kerasport.tfenv import quiet_tensorflow\nquiet_tensorflow()\nquiet_tensorflow()\n"
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)\n")
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split()[1:] == ["False"], result.stderr
    assert result.stdout.split()[0] in ("2", "3")
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
                            capture_output=True, text=True, timeout=60)
    assert chosen.stdout.split()[0] == "0"  # the user's choice stands
