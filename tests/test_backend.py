"""Package basics: backend selection, no TensorFlow, the console script.

Each check runs in a fresh interpreter, since the backend is chosen once per
process when Keras is first imported.
"""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import kdpvlpa  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(code, keras_backend=None, args=None):
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    if keras_backend is not None:
        env["KERAS_BACKEND"] = keras_backend
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    command = [sys.executable] + (args if args is not None else ["-c", code])
    return subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def _json_result(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_selects_torch_and_never_imports_tensorflow():
    # keras-hub's package pulls TensorFlow through tensorflow-text: neither
    # importing kdpvlpa nor building and running a model (keras-hub's
    # tokenizer included) may import it.
    code = """
import json, os, sys

def tensorflow_modules():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_text"))

import kdpvlpa, kdpvlpa.models
import keras
after_import = tensorflow_modules()
import numpy as np
from kdpvlpa.models import DPVLPA
model = DPVLPA.from_presets("tiny_random_vit", "tiny_random_bert", ["dog", "cat"],
                            num_query_tokens=4, projection_dim=16, sequence_length=24)
probabilities = model.predict(np.zeros((1, 40, 40, 3), "uint8"), verbose=0)
print(json.dumps({
    "env": os.environ.get("KERAS_BACKEND"),
    "backend": keras.backend.backend(),
    "after_import": after_import,
    "shape": list(probabilities.shape),
    "after_predict": tensorflow_modules(),
}))
"""
    result = _json_result(_run(code))
    assert result["env"] == "torch"
    assert result["backend"] == "torch"
    assert result["after_import"] == []
    assert result["shape"] == [1, 2]
    assert result["after_predict"] == []


def test_other_backend_in_environment_raises_backend_error():
    code = """
import json, sys
try:
    import kdpvlpa
except ImportError as error:
    print(json.dumps({
        "type": type(error).__name__,
        "module": type(error).__module__,
        "is_import_error": isinstance(error, ImportError),
        "message": str(error),
        "keras_imported": "keras" in sys.modules,
    }))
else:
    print(json.dumps({"type": None}))
"""
    result = _json_result(_run(code, keras_backend="jax"))
    assert result["type"] == "BackendError"
    assert result["module"] == "kdpvlpa.backend"
    assert result["is_import_error"] is True
    assert "'jax'" in result["message"] and "torch" in result["message"]
    # The error comes before Keras would have tried to load jax.
    assert result["keras_imported"] is False


def test_keras_already_imported_with_other_backend_raises_backend_error():
    # Neither jax nor TensorFlow is installed here, so a stand-in `keras`
    # module reports the backend it was (supposedly) imported with.
    code = """
import json, sys, types
fake_keras = types.ModuleType("keras")
fake_keras.backend = types.SimpleNamespace(backend=lambda: "jax")
sys.modules["keras"] = fake_keras
import os
os.environ["KERAS_BACKEND"] = "torch"
try:
    import kdpvlpa
except ImportError as error:
    print(json.dumps({"type": type(error).__name__, "message": str(error)}))
else:
    print(json.dumps({"type": None}))
"""
    result = _json_result(_run(code))
    assert result["type"] == "BackendError"
    assert "already imported" in result["message"]
    assert "'jax'" in result["message"]


def test_backend_error_is_an_import_error():
    from kdpvlpa.backend import BackendError

    assert issubclass(BackendError, ImportError)


def test_console_script_help_exits_zero():
    result = _run(None, args=["-m", "kdpvlpa.cli", "--help"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Usage:" in result.stdout
    assert "kdpvlpa" in result.stdout.lower()


def test_console_script_is_declared():
    try:
        distribution = metadata.distribution("kdpvlpa")
    except metadata.PackageNotFoundError:
        pytest.skip("kdpvlpa is not installed (running from the source tree)")
    scripts = {ep.name: ep.value for ep in distribution.entry_points
               if ep.group == "console_scripts"}
    assert scripts.get("kdpvlpa") == "kdpvlpa.cli:main"


def test_without_keras_hub_fit_says_how_to_install_it(tmp_path, monkeypatch):
    # keras-hub is installed by hand (--no-deps); a machine without it gets the
    # command, not a traceback.
    from click.testing import CliRunner

    from kdpvlpa.cli import main

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` fails
    result = CliRunner().invoke(main, [
        "fit", "--recipe", "demo", "--data-dir", str(tmp_path / "d"),
        "--output", str(tmp_path / "r"), "--set", "model.qformer_preset=tiny_random_bert",
        "--set", "model.sequence_length=24", "--set", "data.num_train=20",
        "--set", "data.num_test=10"])
    assert result.exit_code == 1, result.output
    assert "kdpvlpa needs keras-hub" in result.output
    assert "pip install --no-deps keras-hub==0.32.0" in result.output
