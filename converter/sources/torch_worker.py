"""Child process that turns a checked ``torch.export`` archive into a float .tflite with litert-torch.

Run by ``load_torch`` as ``python -m converter.sources.torch_worker job.json`` after ``pt2_guard`` inspected the
archive; it runs the guard's checks once more through torch's own reader before ``torch.export.load``.
It runs apart from edgeconv's process because litert-torch's converter is native code (MLIR) that can
crash, and because torch and TensorFlow are both large native libraries best kept apart. Answers with
one JSON line on stdout: ``{"ok": true, ...}`` or ``{"refused": "..."}`` for a file we will not load;
anything else (a traceback, a signal) is a failed step that the parent explains.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

from converter.errors import ModelLoadError
from converter.sources.float_check import SAMPLES, sqnr_db
from converter.sources.pt2_guard import EXPORT_HINT, check_archive
from converter.supervise import quick_exit


class _TorchView:
    """The archive as ``torch.export.load`` reads it: through torch's own zip reader (miniz)."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def names(self) -> list[str]:
        return [str(n) for n in self._reader.get_all_records()]

    def size(self, name: str) -> int:
        return int(self._reader.get_record_size(name))

    def read(self, name: str) -> bytes:
        return bytes(self._reader.get_record(name))


def _check_as_torch_reads(path: Path) -> None:
    """The guard's checks again, on the bytes torch's reader returns; a ``ModelLoadError`` when refused.

    ``pt2_guard`` ran them over Python's zipfile before torch was imported; here they run over the reader
    ``torch.export.load`` itself uses, so a file that two zip parsers read differently cannot show the
    guard one member and torch another. Then the example inputs are loaded with ``weights_only=True``:
    ``torch.export.load`` tries that and, when it fails, unpickles the same bytes with
    ``weights_only=False``; succeeding here first means its fallback cannot be reached.
    """
    import torch

    try:
        reader = torch._C.PyTorchFileReader(str(path))  # noqa: SLF001 - the reader torch.export.load uses
    except Exception as e:  # noqa: BLE001 - miniz's errors arrive as RuntimeError with its message
        raise ModelLoadError(f"model: {path}: torch cannot read the archive ({_first_line(e)}); {EXPORT_HINT}") from e
    view = _TorchView(reader)
    try:
        check_archive(path, view)
        payload = view.read("data/sample_inputs/model.pt")
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - the reader raises RuntimeError for a member it cannot inflate
        raise ModelLoadError(f"model: {path}: torch cannot read the archive ({_first_line(e)}); {EXPORT_HINT}") from e
    try:
        torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as e:  # noqa: BLE001 - the restricted unpickler raises UnpicklingError and others
        raise ModelLoadError(
            f"model: {path}: refused: its example inputs (data/sample_inputs/model.pt) are not plain tensors "
            f"({_first_line(e)}); torch.export.load would unpickle them with weights_only=False, which can run any "
            f"code; {EXPORT_HINT}"
        ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _input_names(exported: Any, count: int) -> list[str] | None:
    """``forward``'s parameter names as the exported graph keeps them, or None when they cannot name inputs."""
    names = [s.arg.name for s in exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(names) != count or len(set(names)) != count or not all(n.isidentifier() for n in names):
        return None
    return names


def _dynamic_dims(exported: Any, count: int) -> list[list[int]]:
    """For each user input, the dimensions the program was exported with as symbols (``dynamic_shapes``)."""
    placeholders = {n.name: n for n in exported.graph.nodes if n.op == "placeholder"}
    names = [s.arg.name for s in exported.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    dims: list[list[int]] = []
    for name in names[:count]:
        value = placeholders[name].meta.get("val") if name in placeholders else None
        shape = getattr(value, "shape", ())
        dims.append([d for d, size in enumerate(shape) if not isinstance(size, int)])
    return dims + [[] for _ in range(count - len(dims))]


def convert(job: dict[str, Any]) -> dict[str, Any]:
    """The conversion itself: load, optionally wrap for channel-last I/O, convert, write the .tflite."""
    path = Path(job["model"])
    try:
        _check_as_torch_reads(path)
    except ModelLoadError as e:
        return {"refused": str(e), "whole": True}
    import litert_torch
    import torch

    try:
        exported = torch.export.load(str(path))
        module = exported.module()
    except Exception as e:  # noqa: BLE001 - every check passed: what torch rejects now is the file's content
        return {
            "refused": f"torch.export.load cannot read it ({type(e).__name__}: {_first_line(e)}): the archive is "
            "damaged, or was written by a newer torch than this one"
        }
    if exported.example_inputs is None:
        return {"refused": "the archive holds no example inputs, which the conversion traces with"}
    args, kwargs = exported.example_inputs
    if kwargs:
        return {"refused": f"the program takes keyword inputs ({', '.join(kwargs)}); export it with positional ones"}
    if not all(isinstance(a, torch.Tensor) for a in args):
        return {"refused": "the program's example inputs are not all tensors; export it with tensor inputs only"}
    names = _input_names(exported, len(args))
    dynamic = _dynamic_dims(exported, len(args))
    fixed = [(i, d) for i, dims in enumerate(dynamic) for d in dims if d != 0]
    if fixed:
        i, d = fixed[0]
        which = f"'{names[i]}'" if names else str(i)
        return {
            "refused": f"input {which} was exported with dimension {d} dynamic (torch.export's dynamic_shapes); "
            "edgeconv converts for one input size (microcontrollers and NPUs run static shapes, and int8 ranges are "
            "measured for one size): export it with that dimension fixed, e.g. torch.export.export(model.eval(), "
            "(example_input,)) without dynamic_shapes"
        }
    # A dynamic batch is converted at batch 1, the batch every target runs (the example may hold several).
    args = tuple(a[:1] if 0 in dims else a for a, dims in zip(args, dynamic, strict=True))
    inputs = [list(a.shape) for a in args]
    try:
        outputs = module(*args)
    except Exception as e:  # noqa: BLE001 - torch checks the program's ranges on the call
        if not any(dynamic):
            raise
        return {
            "refused": f"the program does not take a batch of 1 ({type(e).__name__}: {_first_line(e)}); export it "
            "with a batch dimension whose range starts at 1 (Dim('batch', min=1)) or with a static batch of 1"
        }
    outputs = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
    channel_last_in = [i for i, a in enumerate(args) if a.ndim == 4] if job["layout"] == "nhwc" else []
    channel_last_out = [i for i, o in enumerate(outputs) if o.ndim == 4] if job["layout"] == "nhwc" else []
    sample = tuple(a.permute(0, 2, 3, 1).contiguous() if i in channel_last_in else a for i, a in enumerate(args))
    if channel_last_in or channel_last_out:
        module = litert_torch.to_channel_last_io(module, args=channel_last_in, outputs=channel_last_out)
    edge = litert_torch.convert(module, sample)  # ep.module() is in eval mode already (train() is refused)
    Path(job["out"]).write_bytes(edge.model_content())
    check = float_check(module, edge, sample)
    return {
        "ok": True,
        "torch": torch.__version__,
        "litert_torch": litert_torch.__version__,
        "inputs": inputs,
        # Dimension 0 exported as dynamic, converted at 1 (the loader line says which: it is taken as the batch)
        "dynamic_batch": [names[i] if names else str(i) for i, dims in enumerate(dynamic) if 0 in dims],
        "input_names": names,  # the parent names the .tflite's inputs so
        "channel_last_inputs": channel_last_in,
        "channel_last_outputs": channel_last_out,
        "float_check": check,
    }


def float_check(module: Any, edge: Any, sample: tuple[Any, ...]) -> dict[str, Any]:
    """litert-torch's .tflite against the exported program itself, on seeded random inputs shaped as ``sample``.

    Float inputs are standard normal, integer ones (token ids, masks) 0 or 1, valid for any vocabulary; both
    sides take the same (channel-last where the I/O was moved). Answer: per output, the SQNR in dB over all
    samples and the largest absolute difference, or ``{"checked": false, "reason": ...}``.
    """
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    sums: list[list[float]] = []
    try:
        for _ in range(SAMPLES):
            inputs = []
            for a in sample:
                if a.dtype.is_floating_point:
                    value = torch.from_numpy(rng.standard_normal(tuple(a.shape)).astype(np.float32)).to(a.dtype)
                else:
                    value = torch.from_numpy(rng.integers(0, 2, tuple(a.shape))).to(a.dtype)
                inputs.append(value)
            with torch.no_grad():
                want = module(*inputs)
            got = edge(*inputs)
            wants = [w.detach().numpy() for w in (want if isinstance(want, list | tuple) else [want])]
            gots = [np.asarray(g) for g in (got if isinstance(got, list | tuple) else [got])]
            if len(wants) != len(gots):
                return {"checked": False, "reason": f"{len(gots)} outputs from the .tflite, {len(wants)} from torch"}
            for k, (w, g) in enumerate(zip(wants, gots, strict=True)):
                if w.size != g.size or not np.all(np.isfinite(w)):
                    return {"checked": False, "reason": f"output {k}: sizes differ, or torch's is not finite"}
                err = g.reshape(w.shape).astype(np.float64) - w.astype(np.float64)
                if len(sums) <= k:
                    sums.append([0.0, 0.0, 0.0])
                sums[k][0] += float(np.sum(np.square(w.astype(np.float64))))
                sums[k][1] += float(np.sum(np.square(err)))
                sums[k][2] = max(sums[k][2], float(np.max(np.abs(err))) if err.size else 0.0)
    except Exception as e:  # noqa: BLE001 - the check is a safeguard: why it could not run is said, not raised
        return {"checked": False, "reason": f"{type(e).__name__}: {_first_line(e)}"}
    outputs = [
        {"name": f"output_{k}", "sqnr_db": round(sqnr_db(signal, noise), 2), "max_abs": max_abs}
        for k, (signal, noise, max_abs) in enumerate(sums)
    ]
    return {"checked": True, "samples": SAMPLES, "outputs": outputs}


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result = convert(job)
    sys.stdout.write("\nEDGECONV-RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    quick_exit(main())  # not Python's exit: its teardown of PyTorch and TensorFlow took 1.3-1.5 s
