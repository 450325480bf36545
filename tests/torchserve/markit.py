"""Helpers of the TorchServe tests: .mar files built by the real torch-model-archiver."""
import os
import shutil
import subprocess
import sys

HANDLERS = os.path.join(os.path.dirname(__file__), "handlers")


def archiver() -> str:
    """The torch-model-archiver command of this environment (the ``test`` extra installs it)."""
    path = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
    return path if os.path.exists(path) else shutil.which("torch-model-archiver")


def build_mar(export_path, model_name: str, handler: str, version: str = "1.0", config: str | None = None,
              **options: str) -> str:
    """``torch-model-archiver --model-name ... --handler ...`` (handler: a file in handlers/); returns the .mar."""
    os.makedirs(export_path, exist_ok=True)
    command = [archiver(), "--model-name", model_name, "--version", version,
               "--handler", os.path.join(HANDLERS, handler), "--export-path", str(export_path), "--force"]
    if config is not None:
        config_path = os.path.join(str(export_path), f"{model_name}-config.yaml")
        with open(config_path, "w") as f:
            f.write(config)
        command += ["--config-file", config_path]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", value]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return os.path.join(str(export_path), f"{model_name}.mar")
