"""The dependency direction: the core (every kerasport module outside kerasport.app) loads no stage and no TF.

Each module is imported alone in a fresh interpreter, so one module's imports cannot hide behind another's.
"""

import json
import pkgutil
import subprocess
import sys

import pytest

import kerasport

STAGES = ("kerasport.train", "kerasport.ingest", "kerasport.export", "kerasport.deploy", "kerasport.parity",
          "kerasport.serve", "kerasport.app")
HEAVY = ("tensorflow", "keras", "tf2onnx")
CORE = sorted(f"kerasport.{module.name}" for module in pkgutil.iter_modules(kerasport.__path__)
              if f"kerasport.{module.name}" not in STAGES)


def test_the_core_is_found():
    assert {"kerasport.errors", "kerasport.fsutil", "kerasport.manifest", "kerasport.contract"} <= set(CORE)


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_loads_no_stage_and_no_tensorflow(module):
    code = (f"import importlib, json, sys\nimportlib.import_module({module!r})\n"
            f"print(json.dumps(sorted(name for name in sys.modules if name.startswith({STAGES!r}) "
            f"or name.split('.')[0] in {HEAVY!r})))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"{module} imports {result.stdout.strip()}"
