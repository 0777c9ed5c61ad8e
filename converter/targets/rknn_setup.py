"""The RKNN virtualenv: Rockchip's rknn-toolkit2 with its own pinned packages, provisioned on request.

rknn-toolkit2 2.5.0 cannot share edgeconv's environment: it pins numpy<=1.26.4 and protobuf<=4.25.4,
reads TFLite through TensorFlow<=2.14 (not declared), calls ``pkg_resources`` (setuptools<70) and
imports torch at start-up (declared as torch<=2.4.0; PyPI's torch wheels pull ~5 GB of CUDA). So
``edgeconv setup rknn`` builds a virtualenv of its own under the cache folder from ``LOCK`` (every
package pinned, installed with ``--no-deps``: no resolver, the same set on every machine), checks that
the toolkit imports by running the worker's probe, and only then moves it into place. A finished
virtualenv carries ``edgeconv-rknn.json`` with the lock's digest: running setup again returns at once.

torch: the toolkit's TFLite path never calls torch, but ``rknn.api`` imports it, so the CPU-only wheel
is installed (``torch==2.13.0+cpu``, 0.8 GB instead of ~5 GB; from PyTorch's CPU index, or wherever
pip's configuration finds it). It is outside the toolkit's declared torch<=2.4.0 and torch declares
setuptools>=77 while the toolkit needs setuptools<70; ``pip check`` reports both, and neither matters
to the TFLite path (tests/integration/test_rknn.py runs the toolkit and its simulator for real).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from converter import venv_setup
from converter.cache import cache_dir
from converter.errors import UserInputError
from converter.venv_setup import PROBE_TIMEOUT_S, Provisioned, ToolkitVenv, VenvSetupError, venv_python

__all__ = ["LOCK", "Provisioned", "RknnSetupError", "installed", "provision", "venv_dir", "venv_python"]

TOOLKIT = "rknn-toolkit2==2.5.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYTHON_VERSION = (3, 11)  # the lock's wheels (scipy 1.17, the toolkit's cp311 build) are for CPython 3.11
MARKER = "edgeconv-rknn.json"
PARTIAL = ".edgeconv-rknn-setup"  # written first: a folder holding it is one of ours, safe to rebuild
WORKER = Path(__file__).resolve().parent / "rknn_worker.py"

# Everything the toolkit imports on its TFLite path, pinned (pip freeze of a working environment,
# Linux x86_64, CPython 3.11). tensorflow-cpu is TensorFlow without the CUDA wheels.
LOCK = (
    TOOLKIT,
    "torch==2.13.0+cpu",
    "tensorflow-cpu==2.14.1",
    "numpy==1.26.4",
    "protobuf==4.25.4",
    "setuptools==69.5.1",
    "onnx==1.18.0",
    "onnxruntime==1.26.0",
    "opencv-python==4.11.0.86",
    "scipy==1.17.1",
    "fast-histogram==0.14",
    "ruamel.yaml==0.19.1",
    "tqdm==4.70.1",
    "psutil==7.2.2",
    # torch's own dependencies
    "filelock==4.3.1",
    "fsspec==2026.9.0",
    "Jinja2==3.1.6",
    "MarkupSafe==3.0.4",
    "networkx==3.6.1",
    "sympy==1.14.0",
    "mpmath==1.3.0",
    "typing_extensions==4.16.0",
    # TensorFlow 2.14's
    "absl-py==2.5.1",
    "astunparse==1.6.3",
    "flatbuffers==25.12.19",
    "gast==0.7.0",
    "google-pasta==0.2.0",
    "grpcio==1.85.3",
    "h5py==3.16.0",
    "keras==2.14.0",
    "libclang==18.1.1",
    "ml-dtypes==0.2.0",
    "opt_einsum==3.4.0",
    "packaging==26.4",
    "six==1.17.0",
    "tensorboard==2.14.1",
    "tensorboard-data-server==0.7.2",
    "tensorflow-estimator==2.14.0",
    "tensorflow-io-gcs-filesystem==0.37.1",
    "termcolor==3.3.0",
    "wrapt==1.14.2",
    "wheel==0.48.0",
    "Markdown==3.11.3",
    "Werkzeug==3.1.9",
    "google-auth==2.63.0",
    "google-auth-oauthlib==1.0.0",
    "requests==2.34.2",
    "requests-oauthlib==2.0.0",
    "oauthlib==4.0.1",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "idna==3.20",
    "urllib3==2.8.0",
    "pyasn1==0.6.5",
    "pyasn1_modules==0.4.2",
    "cryptography==50.0.2",
    "cffi==2.1.1",
    "pycparser==3.12",
)


class RknnSetupError(VenvSetupError):
    """Building the RKNN virtualenv failed (pip or the import check); the message says which step."""


SPEC = ToolkitVenv(
    command="rknn",
    toolkit=TOOLKIT,
    kind="an RKNN virtualenv",
    lock=LOCK,
    marker=MARKER,
    partial=PARTIAL,
    worker=WORKER,
    answer_key="toolkit",
    python_version=PYTHON_VERSION,
    error=RknnSetupError,
)


def lock_digest() -> str:
    return SPEC.digest()


def venv_dir() -> Path:
    """``$EDGECONV_RKNN_VENV``, else ``<cache folder>/rknn/toolkit2-2.5.0-<lock digest>``."""
    env = os.environ.get("EDGECONV_RKNN_VENV")
    if env:
        return Path(env)
    return cache_dir() / "rknn" / f"toolkit2-{TOOLKIT.split('==')[1]}-{lock_digest()}"


def installed(venv: Path | None = None) -> Path | None:
    """The RKNN virtualenv's Python when ``edgeconv setup rknn`` finished there for this lock, else None."""
    return venv_setup.installed(SPEC, venv or venv_dir())


def not_installed_error(what: str) -> UserInputError:
    """Exit 2 before any work: a missing RKNN virtualenv is the install, like a missing extra."""
    return UserInputError(
        f"{what} needs Rockchip's rknn-toolkit2, which runs in a virtualenv of its own that is not set up at "
        f"{venv_dir()}; run `edgeconv setup rknn` once (about 2 minutes and 2.6 GB; see docs/targets/rknn.md), "
        "or drop the RKNN targets from the recipe"
    )


def probe(python: Path, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Run the worker's probe in the virtualenv: the toolkit imports, and its version."""
    return venv_setup.probe(SPEC, python, timeout_s)


def provision(
    venv: Path | None = None, python: str | None = None, torch_index_url: str | None = None, force: bool = False
) -> Provisioned:
    """Create the RKNN virtualenv unless it is ready (idempotent); checked before it counts as installed."""
    pip_args = ("--extra-index-url", torch_index_url) if torch_index_url else ()
    hint = "" if torch_index_url else f"; torch's CPU wheel comes from --torch-index-url {TORCH_CPU_INDEX}"
    return venv_setup.provision(SPEC, venv or venv_dir(), python, pip_args, hint, force)
