"""The optional extras: which package each one brings, and one error line when one is missing.

`pip install cifarkit` gives the whole workflow (data, training, evaluation, analysis, report,
predict, the demo). A few steps need a package that is heavy or not needed by everyone; those are
extras (pyproject's `[project.optional-dependencies]`). A step that needs a missing one fails
with `MissingExtra`, one sentence that names the step and the pip line, and the demo skips such
a step with that sentence instead of stopping. `EXTRAS` is also what the README's list of extras
is checked against (tests/test_extras.py).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cifarkit.errors import CifarkitError

# extra -> what it adds (one line each; the README lists the same)
EXTRAS: dict[str, str] = {
    "cam": "Grad-CAM (`cifarkit cam`, the report's and the demo's CAM figures), via pytorch-grad-cam",
    "onnx": "ONNX export and inference (`cifarkit export --format onnx`, `.onnx` models everywhere a checkpoint "
            "goes), via onnx and onnxruntime",
    "serve": "the local web app and JSON API (`cifarkit serve`), via FastAPI and uvicorn (Grad-CAM included)",
    "tensorboard": "TensorBoard event files (`log.tensorboard: true`)",
    "mlflow": "logging runs to an MLflow tracking store or server (`log.mlflow: URI`)",
    "tune": "hyperparameter search (`cifarkit tune`), via Optuna",
    "robustness": "the spatter corruption of `cifarkit robustness --extra` (OpenCV's edge detector), via "
                  "opencv-python-headless",
    "pandas": "DataFrames (`ImageSet.to_dataframe`, `cifarkit.logs.read`)",
    "timm": "timm's models by name (`model.name: timm/<name>`)",
    "notebook": "JupyterLab, to run the tutorial notebooks in `examples/`",
    "docs": "building the documentation site (MkDocs) and executing the notebooks",
    "dev": "everything the test suite needs (pytest, ruff, and every extra above)",
}

# importable module -> the extra that installs it
MODULE_EXTRA: dict[str, str] = {
    "pytorch_grad_cam": "cam", "onnx": "onnx", "onnxruntime": "onnx", "fastapi": "serve", "uvicorn": "serve",
    "multipart": "serve", "python_multipart": "serve", "tensorboard": "tensorboard", "pandas": "pandas",
    "timm": "timm", "jupyterlab": "notebook", "cv2": "robustness", "mlflow": "mlflow", "optuna": "tune",
}


class MissingExtra(CifarkitError):
    """A step needs a package from one of cifarkit's extras, which is not installed."""


def missing_extra(module: str, what: str) -> MissingExtra:
    """The error for `what` needing `module` (e.g. ("onnx", "ONNX export"))."""
    top = module.split(".")[0]
    extra = MODULE_EXTRA.get(top)
    how = f"pip install 'cifarkit[{extra}]'" if extra else f"pip install {top}"
    return MissingExtra(f"{what} needs the {top} package, which is not installed: {how}")


def require(module: str, what: str) -> ModuleType:
    """Import `module`, or raise `MissingExtra` naming `what` needs it and the extra to install.

    Raises:
        MissingExtra: the module (or one it imports) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise missing_extra(e.name or module, what) from None


def extra_of_error(e: ModuleNotFoundError) -> MissingExtra | None:
    """The one-line error for an import of an extra's package that failed deep inside a step (the
    CLI's safety net); None when the missing module belongs to no extra (a real bug)."""
    name = (e.name or "").split(".")[0]
    if name not in MODULE_EXTRA:
        return None
    return missing_extra(name, "this command")
