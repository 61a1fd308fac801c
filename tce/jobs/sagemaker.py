"""``tce package-sagemaker``: a bundle as the model archive a SageMaker endpoint loads.

- ``--handler triton``: the Triton model repository ``tce build`` writes, at the
  archive's root (SageMaker extracts it to ``/opt/ml/model``), for the project's
  server image run as ``serve``: the gateway's ``/ping`` and ``/invocations`` in front
  of Triton, running the ensemble named by ``SAGEMAKER_TRITON_DEFAULT_MODEL_NAME``.
- ``--handler pytorch``: for SageMaker's PyTorch serving containers (seed 003): the
  bundle at the root, and ``code/inference.py`` with ``model_fn``, ``input_fn``,
  ``predict_fn`` and ``output_fn`` (``tce_sagemaker.handler``), the packages it
  needs (tce_sagemaker, tce_backends, tce_client), and ``code/requirements.txt`` pinned from requirements.lock.
"""
from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

import tce_backends
import tce_client
import tce_sagemaker
from tce.repository.builder import RepositoryOptions, write_repository
from tce_backends.bundle import Bundle
from tce_backends.errors import UsageError

Handler = Literal["triton", "pytorch"]
HANDLERS: tuple[str, ...] = ("triton", "pytorch")
INFERENCE_PY = '''"""SageMaker PyTorch serving entry point (seed 003): the calibrated ensemble in process."""
from tce_sagemaker.handler import input_fn, model_fn, output_fn, predict_fn  # noqa: F401
'''
# What the handler imports beyond the PyTorch container's own torch and numpy.
HANDLER_REQUIREMENTS = ("tokenizers",)
LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"


def _pins(names: tuple[str, ...]) -> list[str]:
    pins = {line.split("==")[0].lower(): line.strip() for line in LOCK.read_text(encoding="utf-8").splitlines()
            if "==" in line}
    return [pins[name] for name in names]


def _copy_package(module: object, target: Path) -> None:
    source = Path(module.__file__).parent  # type: ignore[attr-defined]
    shutil.copytree(source, target / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "triton"))


def _pytorch_layout(bundle: Bundle, root: Path) -> None:
    shutil.copytree(bundle.root, root)
    code = root / "code"
    if code.exists():
        raise UsageError(f"{bundle.root} already has a code/ directory; SageMaker reserves it for the handler")
    code.mkdir()
    (code / "inference.py").write_text(INFERENCE_PY, encoding="utf-8")
    (code / "requirements.txt").write_text("\n".join(_pins(HANDLER_REQUIREMENTS)) + "\n", encoding="utf-8")
    for package in (tce_backends, tce_client, tce_sagemaker):
        _copy_package(package, code)


def package_sagemaker(bundle_dir: Path, out: Path, handler: Handler = "triton",
                      options: RepositoryOptions | None = None) -> Path:
    if handler not in HANDLERS:
        raise UsageError(f"--handler must be one of {list(HANDLERS)}, got {handler!r}")
    if not str(out).endswith(".tar.gz"):
        raise UsageError(f"{out}: SageMaker loads a .tar.gz model archive")
    bundle = Bundle.load(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="tce-sagemaker-") as scratch:
        root = Path(scratch) / "model"
        if handler == "triton":
            write_repository(bundle, root, options or RepositoryOptions(), say=lambda _: None)
        else:
            _pytorch_layout(bundle, root)
        out.parent.mkdir(parents=True, exist_ok=True)
        aside = out.with_name(f".{out.name}.tmp")
        with tarfile.open(aside, "w:gz") as archive:
            for item in sorted(root.iterdir()):
                archive.add(item, arcname=item.name)
        aside.replace(out)
    return out
