"""Child process that turns a checked ``torch.export`` archive into a float .tflite with litert-torch.

Run by ``load_torch`` as ``python -m converter.torch_worker job.json`` after ``pt2_guard`` inspected the
archive. It runs apart from edgeconv's process because litert-torch's converter is native code (MLIR)
that can crash, and because torch and TensorFlow are both large native libraries best kept apart.
Answers with one JSON line on stdout: ``{"ok": true, ...}`` or ``{"refused": "..."}`` for a file we
will not load; anything else (a traceback, a signal) is a failed step that the parent explains.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any


def _sample_inputs_are_tensors(path: Path) -> str | None:
    """Load the example inputs with ``weights_only=True`` ourselves; why not, or None.

    ``torch.export.load`` tries ``weights_only=True`` and, when that fails, unpickles the same bytes with
    ``weights_only=False``. Succeeding here first means its fallback cannot be reached.
    """
    import torch

    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data/sample_inputs/model.pt"))
        payload = archive.read(name)
    try:
        torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as e:  # noqa: BLE001 - the restricted unpickler raises UnpicklingError and others
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return (
            f"its example inputs (data/sample_inputs/model.pt) are not plain tensors ({first[:200]}); "
            "torch.export.load would unpickle them with weights_only=False, which can run any code"
        )
    return None


def _input_names(exported: Any, count: int) -> list[str] | None:
    """``forward``'s parameter names as the exported graph keeps them, or None when they cannot name inputs."""
    names = [s.arg.name for s in exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(names) != count or len(set(names)) != count or not all(n.isidentifier() for n in names):
        return None
    return names


def convert(job: dict[str, Any]) -> dict[str, Any]:
    """The conversion itself: load, optionally wrap for channel-last I/O, convert, write the .tflite."""
    path = Path(job["model"])
    refused = _sample_inputs_are_tensors(path)
    if refused:
        return {"refused": refused}
    import litert_torch
    import torch

    exported = torch.export.load(str(path))
    if exported.example_inputs is None:
        return {"refused": "the archive holds no example inputs, which the conversion traces with"}
    args, kwargs = exported.example_inputs
    if kwargs:
        return {"refused": f"the program takes keyword inputs ({', '.join(kwargs)}); export it with positional ones"}
    if not all(isinstance(a, torch.Tensor) for a in args):
        return {"refused": "the program's example inputs are not all tensors; export it with tensor inputs only"}
    module = exported.module()
    inputs = [list(a.shape) for a in args]
    outputs = module(*args)
    outputs = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
    channel_last_in = [i for i, a in enumerate(args) if a.ndim == 4] if job["layout"] == "nhwc" else []
    channel_last_out = [i for i, o in enumerate(outputs) if o.ndim == 4] if job["layout"] == "nhwc" else []
    sample = tuple(a.permute(0, 2, 3, 1).contiguous() if i in channel_last_in else a for i, a in enumerate(args))
    if channel_last_in or channel_last_out:
        module = litert_torch.to_channel_last_io(module, args=channel_last_in, outputs=channel_last_out)
    edge = litert_torch.convert(module, sample)  # ep.module() is in eval mode already (train() is refused)
    Path(job["out"]).write_bytes(edge.model_content())
    return {
        "ok": True,
        "torch": torch.__version__,
        "litert_torch": litert_torch.__version__,
        "inputs": inputs,
        "input_names": _input_names(exported, len(args)),  # the parent names the .tflite's inputs so
        "channel_last_inputs": channel_last_in,
        "channel_last_outputs": channel_last_out,
    }


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result = convert(job)
    sys.stdout.write("\nEDGECONV-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
