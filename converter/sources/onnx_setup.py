"""The ONNX virtualenv: onnx2tf with its own pinned packages, provisioned on request by ``edgeconv setup onnx``.

onnx2tf 1.29.24 (the newest release for Python 3.11; 2.x needs Python 3.12) pins tensorflow==2.19.0,
numpy==1.26.4 and protobuf==4.25.5, so it cannot share edgeconv's environment (TensorFlow 2.21,
numpy 2). ``edgeconv setup onnx`` builds a virtualenv of its own under the cache folder from ``LOCK``
(the pip freeze of ``pip install onnx2tf==1.29.24`` on CPython 3.11, Linux x86_64, ``pip check``
clean; installed with ``--no-deps``), checks that onnx2tf imports by running the worker's probe, and
only then marks it ready; the same steps as ``edgeconv setup rknn`` (``venv_setup``). Measured
2026-11-28: 84 s from PyPI, 2.6 GB. ``load_onnx`` runs ``onnx_worker.py`` in it as a child process.
"""

from __future__ import annotations

import os
from pathlib import Path

from converter import venv_setup
from converter.cache import cache_dir
from converter.errors import UserInputError
from converter.venv_setup import Provisioned, ToolkitVenv, VenvSetupError

__all__ = ["LOCK", "Provisioned", "installed", "not_installed_error", "provision", "venv_dir"]

TOOLKIT = "onnx2tf==1.29.24"
MARKER = "edgeconv-onnx.json"
PARTIAL = ".edgeconv-onnx-setup"
WORKER = Path(__file__).resolve().parent / "onnx_worker.py"
COST = "about 2 minutes and 2.6 GB"

LOCK = (
    TOOLKIT,
    "absl-py==2.5.1",
    "ai-edge-litert==2.1.0",
    "astunparse==1.6.3",
    "backports.strenum==1.2.8",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "coloredlogs==15.0.1",
    "flatbuffers==25.12.19",
    "gast==0.7.0",
    "google-pasta==0.2.0",
    "grpcio==1.85.3",
    "h5py==3.11.0",
    "humanfriendly==10.0",
    "idna==3.20",
    "json2onnx==2.0.3",
    "keras==3.15.1",
    "libclang==18.1.1",
    "Markdown==3.11.3",
    "markdown-it-py==4.3.0",
    "MarkupSafe==3.0.4",
    "mdurl==0.1.2",
    "ml_dtypes==0.5.1",
    "mpmath==1.3.0",
    "namex==0.1.0",
    "numpy==1.26.4",
    "onnx==1.19.1",
    "onnx2json==2.0.4",
    "onnx_graphsurgeon==0.5.8",
    "onnxoptimizer==0.4.2",
    "onnxruntime==1.23.0",
    "onnxsim==0.4.36",
    "opencv-python==4.11.0.86",
    "opt_einsum==3.4.0",
    "optree==0.20.0",
    "packaging==26.4",
    "protobuf==4.25.5",
    "psutil==5.9.5",
    "Pygments==2.21.0",
    "requests==2.32.5",
    "rich==15.0.0",
    "sam4onnx==2.0.0",
    "sbi4onnx==1.0.7",
    "scc4onnx==1.0.7",
    "scs4onnx==1.0.18",
    "sde4onnx==1.0.0",
    "sed4onnx==1.0.5",
    "simple_onnx_processing_tools==1.1.32",
    "sio4onnx==1.0.3",
    "sit4onnx==1.0.10",
    "six==1.17.0",
    "sna4onnx==1.0.6",
    "snc4onnx==1.0.14",
    "snd4onnx==1.1.7",
    "sne4onnx==2.0.1",
    "sng4onnx==2.0.1",
    "soa4onnx==1.0.5",
    "soc4onnx==1.0.2",
    "sod4onnx==1.0.0",
    "sog4onnx==1.0.17",
    "sor4onnx==1.0.7",
    "spo4onnx==1.0.5",
    "ssc4onnx==1.0.8",
    "ssi4onnx==1.0.4",
    "svs4onnx==1.0.0",
    "sympy==1.14.0",
    "tensorboard==2.19.0",
    "tensorboard-data-server==0.7.2",
    "tensorflow==2.19.0",
    "tensorflow-io-gcs-filesystem==0.37.1",
    "termcolor==3.3.0",
    "tf_keras==2.19.0",
    "tqdm==4.70.1",
    "typing_extensions==4.16.0",
    "urllib3==2.8.0",
    "Werkzeug==3.1.9",
    "wrapt==2.5.2",
)


class OnnxSetupError(VenvSetupError):
    """Building the ONNX virtualenv failed (pip or the import check); the message says which step."""


SPEC = ToolkitVenv(
    command="onnx",
    toolkit=TOOLKIT,
    kind="an ONNX (onnx2tf) virtualenv",
    lock=LOCK,
    marker=MARKER,
    partial=PARTIAL,
    worker=WORKER,
    answer_key="onnx2tf",
    error=OnnxSetupError,
)


def venv_dir() -> Path:
    """``$EDGECONV_ONNX_VENV``, else ``<cache folder>/onnx/onnx2tf-1.29.24-<lock digest>``."""
    env = os.environ.get("EDGECONV_ONNX_VENV")
    if env:
        return Path(env)
    return cache_dir() / "onnx" / f"onnx2tf-{TOOLKIT.split('==')[1]}-{SPEC.digest()}"


def installed(venv: Path | None = None) -> Path | None:
    """The ONNX virtualenv's Python when ``edgeconv setup onnx`` finished there for this lock, else None."""
    return venv_setup.installed(SPEC, venv or venv_dir())


def not_installed_error(what: str) -> UserInputError:
    """Exit 2 before any work: a missing ONNX virtualenv is the install, like a missing extra."""
    return UserInputError(
        f"{what} is an ONNX model, converted by onnx2tf, which runs in a virtualenv of its own that is not set up "
        f"at {venv_dir()}; run `edgeconv setup onnx` once ({COST}; see docs/sources/onnx.md)"
    )


def provision(venv: Path | None = None, python: str | None = None, force: bool = False) -> Provisioned:
    """Create the ONNX virtualenv unless it is ready (idempotent); checked before it counts as installed."""
    return venv_setup.provision(SPEC, venv or venv_dir(), python, force=force)
