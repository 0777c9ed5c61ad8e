"""``edgeconv init MODEL``: write a starter recipe from what the model file says, without running it.

The model's format, inputs and layout are read as ``model_facts`` reads them (no interpreter, no Keras, no
torch); what cannot be read stays a commented placeholder that says what to fill in. The data paths are
placeholders too (``calibration.npz``, ``evaluation.npz`` beside the recipe): ``edgeconv validate`` names
them until they point at real files. The text is checked before it is written: it must parse back to the
recipe intended and pass the recipe schema, so a name from the model file cannot break out of a comment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from converter import __version__
from converter.cli.common import EXIT_OK, debug_option, guarded, quiet_tensorflow
from converter.errors import ConverterError, UserInputError
from converter.sources.model_facts import (
    DESCRIBED,
    InputFact,
    Layout,
    ModelFacts,
    image_layout,
    install_problem,
    read_facts,
)

CALIBRATION_PLACEHOLDER = "calibration.npz"
EVALUATION_PLACEHOLDER = "evaluation.npz"
_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./ -]*")


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped: a YAML comment stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def yaml_string(text: str) -> str:
    """``text`` as a YAML scalar: plain where that reads back the same, else double-quoted (JSON escapes)."""
    from converter.yamlio import load_yaml_text

    if _PLAIN.fullmatch(text) and not text.endswith(" "):
        try:
            if load_yaml_text(text, "name") == text:
                return text
        except ConverterError:
            pass
    return json.dumps(text, ensure_ascii=False)


def shape_text(shape: tuple[int | None, ...]) -> str:
    """``[?, 12, 12, 3]``: an open dimension (the batch, mostly) as ``?``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def recipe_name(path: Path) -> str:
    """A recipe name (letters, digits, ``_.-``) from the model's file or folder name."""
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-_.") or "model"


@dataclass(frozen=True)
class Draft:
    """The recipe text and what it should parse to (checked before writing)."""

    text: str
    expected: dict[str, Any]
    layout: Layout | None
    warnings: tuple[str, ...]


def _layout(facts: ModelFacts) -> tuple[Layout | None, str]:
    """The recipe's ``input.layout`` and the comment that says where it comes from; None: leave it out."""
    images = [i for i in facts.inputs if len(i.shape) == 4]
    if facts.format in ("torch", "onnx"):
        if facts.inputs and not images:
            return None, ""
        return "nhwc", (
            "the device gets channel-last input (edgeconv converts the NCHW model so); nchw keeps the model's own"
        )
    if not images:
        return None, ""
    if facts.channels_first:
        return "nchw", "a layer of the model declares data_format channels_first"
    seen = {image_layout(i.shape) for i in images}
    if seen == {"nchw"}:
        return "nchw", f"the model's 4-D input {shape_text(images[0].shape)} is channel-first [N, C, H, W]"
    if seen == {"nhwc"}:
        return "nhwc", f"the model's 4-D input {shape_text(images[0].shape)} is channel-last [N, H, W, C]"
    return "nhwc", "TensorFlow models are channel-last; the input's sizes do not show it: CHECK"


def _input_line(fact: InputFact) -> str:
    dtype = f"{fact.dtype} " if fact.dtype else ""
    return printable(f"#   input {json.dumps(fact.name)}: {dtype}{shape_text(fact.shape)}")


def _data_shape(fact: InputFact, layout: Layout | None, fmt: str) -> str:
    """The shape of ``x`` the data file may hold, for the comment above data.calibration."""
    shape = ["N", *("?" if d is None else str(d) for d in fact.shape[1:])]
    if len(shape) == 4 and layout == "nhwc" and fmt in ("torch", "onnx"):
        n, c, h, w = shape
        return f"[{n}, {h}, {w}, {c}] (channel-last) or [{n}, {c}, {h}, {w}] as the model takes it"
    if len(shape) == 4:
        other = [shape[0], shape[3], shape[1], shape[2]] if layout != "nchw" else [shape[0], *shape[2:], shape[1]]
        return f"[{', '.join(shape)}] (or [{', '.join(other)}]: it is transposed)"
    return f"[{', '.join(shape)}]"


def draft(facts: ModelFacts, model_ref: str, name: str, targets: list[tuple[str, str]], recipe_file: str) -> Draft:
    """The recipe text for ``facts``; ``targets`` are (name, description) pairs, ``model_ref`` the model path."""
    layout, why = _layout(facts)
    warnings: list[str] = []
    lines = [
        f"# edgeconv recipe for {printable(facts.path.name)}, written by `edgeconv init` (edgeconv {__version__}).",
        "# Fill in what is marked FILL IN, then check it without converting:",
        f"#   edgeconv validate --recipe {printable(recipe_file)}",
        "# Every key is in docs/recipe.md; `edgeconv schema` prints them as a JSON Schema.",
        "version: 1",
        f"name: {yaml_string(name)}",
        f"model: {yaml_string(model_ref)}  # {DESCRIBED[facts.format]}",
    ]
    expected: dict[str, Any] = {"version": 1, "name": name, "model": model_ref}
    if facts.inputs:
        lines.append(f"# Read from {facts.read_from} (nothing of the model was run):")
        lines += [_input_line(i) for i in facts.inputs]
        open_dims = [i for i in facts.inputs if None in i.shape[1:]]
        if open_dims:
            warning = (
                f"input {json.dumps(open_dims[0].name)} has open dimensions {shape_text(open_dims[0].shape)}: "
                "microcontrollers and NPUs need a fixed input size; save the model with one"
            )
            warnings.append(warning)
            lines.append(printable(f"# CHECK: {warning}"))
    else:
        lines.append(printable(f"# The inputs were not read: {facts.unread}."))
        lines.append("# FILL IN where needed: input.layout for 4-D (image) inputs, input.reshape for data stored flat.")
    input_lines = []
    if layout is not None:
        input_lines.append(printable(f"  layout: {layout}  # {why}"))
        expected["input"] = {"layout": layout}
    image = next((i for i in facts.inputs if len(i.shape) == 4), None)
    if image is not None and layout == "nhwc" and facts.format not in ("torch", "onnx"):
        h, w = ("H" if d is None else str(d) for d in image.shape[1:3])
        input_lines.append(f"  # resize: [{h}, {w}]  # bilinear resize of images stored at another size")
    if facts.rescales:
        input_lines.append("  # scale and offset: the model rescales its input itself (a Rescaling or Normalization")
        input_lines.append("  # layer), so feed the data as it was trained on and leave them out.")
    else:
        input_lines.append("  # scale: 0.00392156862745098  # x * scale + offset after resize, e.g. 1/255 for 0..255")
        input_lines.append("  # offset: 0.0                # data and a model trained on [0, 1]")
    lines.append("input:" if layout is not None else "# input:")
    lines += input_lines
    lines.append("data:")
    what = "# FILL IN: representative samples (a few hundred): .npz (x[, y]), .npy (x) or a folder of images"
    lines.append(f"  {what}")
    if len(facts.inputs) > 1:
        names = ", ".join(json.dumps(i.name) for i in facts.inputs)
        lines.append(
            printable(f"  #   several inputs: one .npz with an array per input name: {names} (docs/multi-io.md)")
        )
    elif facts.inputs:
        lines.append(printable(f"  #   x of shape {_data_shape(facts.inputs[0], layout, facts.format)}"))
    lines.append(f"  calibration: {{path: {CALIBRATION_PLACEHOLDER}, samples: 200}}")
    lines.append("  # FILL IN (optional; remove the line without it): held-out samples, with labels y for top-1")
    lines.append(f"  evaluation: {{path: {EVALUATION_PLACEHOLDER}}}")
    expected["data"] = {
        "calibration": {"path": CALIBRATION_PLACEHOLDER, "samples": 200},
        "evaluation": {"path": EVALUATION_PLACEHOLDER},
    }
    if facts.custom_classes:
        classes = ", ".join(facts.custom_classes)
        lines.append(printable(f"# The model uses classes from outside Keras ({classes}): loading it needs them."))
        lines.append("# FILL IN the module of each, and convert with --allow-custom-objects (their code runs):")
        first = facts.custom_classes[0].rsplit(">", 1)[-1]
        lines.append(printable(f"# custom_objects: [{json.dumps('mypackage.layers:' + first)}]"))
    lines.append(f"targets: [{', '.join(t for t, _ in targets)}]  # `edgeconv devices` lists the profiles")
    lines += [printable(f"#   {t}: {description}") for t, description in targets]
    expected["targets"] = [t for t, _ in targets]
    lines.append("# budgets: {accuracy_drop: 0.01}  # CI gates: a missed budget exits 1 (docs/ci.md)")
    return Draft("\n".join(lines) + "\n", expected, layout, tuple(warnings))


def check_draft(result: Draft, recipe_dir: Path, out: Path) -> None:
    """The text parses back to what was meant and passes the recipe schema; else a bug (exit 3)."""
    from converter.recipe import recipe_from_mapping
    from converter.yamlio import load_yaml_text

    try:
        raw = load_yaml_text(result.text, str(out))
        if raw != result.expected:
            raise ConverterError(f"it parses to {raw!r}, not {result.expected!r}")
        recipe_from_mapping(raw, recipe_dir, source=out, check_files=False)
    except ConverterError as e:
        raise ConverterError(
            f"edgeconv init drafted a recipe that does not read back as intended ({e}); nothing was written. "
            "This is a bug in edgeconv: please report it with the model's file name"
        ) from e


def write_new(out: Path, text: str, force: bool) -> None:
    """Write ``out``; an existing file only with ``force`` (replaced as a whole, never half-written)."""
    where = f"--out {out}"
    if out.is_dir():
        raise UserInputError(f"{where}: is a folder; give the recipe's file name, e.g. --out {out / 'recipe.yaml'}")
    if not force and (out.exists() or out.is_symlink()):
        raise UserInputError(
            f"{where}: already exists and edgeconv init does not overwrite it; give another --out, or add --force "
            "to replace it"
        )
    if not out.parent.is_dir():
        raise UserInputError(f"{where}: the folder {out.parent} does not exist; create it first")
    try:
        if not out.exists() and not out.is_symlink():
            with out.open("x", encoding="utf-8") as f:  # "x": a file that appeared meanwhile is not overwritten
                try:
                    f.write(text)
                except BaseException:
                    out.unlink(missing_ok=True)  # never a half-written recipe
                    raise
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            if out.exists():
                shutil.copymode(out, tmp)  # the replaced file's permissions, not mkstemp's 0600
            Path(tmp).replace(out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except FileExistsError as e:
        raise UserInputError(f"{where}: was created while writing; give another --out, or add --force") from e
    except OSError as e:
        raise UserInputError(
            f"{where}: cannot write it ({e.strerror or e}); make the folder writable or choose another --out"
        ) from e


def _model_ref(model: Path, recipe_dir: Path) -> str:
    """The model's path as the recipe names it: relative to the recipe's folder when both share a folder
    below the file system's root (a recipe and model committed together), else absolute."""
    absolute = model.resolve()
    try:
        shared = Path(os.path.commonpath([absolute, recipe_dir]))
    except ValueError:  # another drive (Windows)
        return str(absolute)
    if shared == Path(shared.anchor):
        return str(absolute)
    return Path(os.path.relpath(absolute, recipe_dir)).as_posix()


def _targets(names: tuple[str, ...]) -> list[tuple[str, str]]:
    from converter.devices import available_devices, devices_dir, load_device
    from converter.schema import suggest

    known = available_devices()
    out = []
    for name in names or ("host",):
        if name not in known:
            raise UserInputError(
                f"--target {name}: unknown device{suggest(name, known)}; profiles in {devices_dir()}: "
                f"{', '.join(known)} (`edgeconv devices` describes them)"
            )
        out.append((name, load_device(name).description))
    if len({n for n, _ in out}) != len(out):
        raise UserInputError(f"--target: a device is given twice ({', '.join(names)}); name each once")
    return out


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "target_names",
    multiple=True,
    metavar="NAME",
    help="A device profile to convert for (repeat for several; `edgeconv devices` lists them) [host].",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=Path("recipe.yaml"),
    show_default=True,
    help="The recipe file to write; relative paths in it start at its folder.",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@debug_option
def init(model: Path, target_names: tuple[str, ...], out: Path, force: bool, debug: bool) -> None:
    """Write a starter recipe for a model file.

    MODEL is a .keras, .h5, SavedModel folder, float .tflite, .pt2 or .onnx. Its format, inputs and layout
    are read from the file without running anything from it (ONNX inputs are left to fill in); the data
    paths are placeholders to replace. Then: edgeconv validate --recipe recipe.yaml
    """

    quiet_tensorflow()  # a SavedModel's signature is read with TensorFlow's protobuf classes

    def run() -> int:
        targets = _targets(target_names)
        facts = read_facts(model)
        recipe_dir = out.parent.resolve()
        result = draft(facts, _model_ref(model, recipe_dir), recipe_name(model), targets, str(out))
        check_draft(result, recipe_dir, out)
        write_new(out, result.text, force)
        problem = install_problem(model, facts.format)
        for warning in [*result.warnings, *([problem] if problem else [])]:
            click.echo(printable(f"warning: {warning}"), err=True)
        inputs = "; ".join(f"{json.dumps(i.name)} {i.dtype or ''} {shape_text(i.shape)}" for i in facts.inputs)
        said = f"inputs {inputs}" if facts.inputs else "inputs not read (see the recipe's comments)"
        layout = f", layout {result.layout}" if result.layout else ""
        click.echo(printable(f"wrote {out} for {model} ({DESCRIBED[facts.format]}; {said}{layout})"))
        click.echo(
            f"next: put calibration data at {out.parent / CALIBRATION_PLACEHOLDER} (and evaluation data at "
            f"{out.parent / EVALUATION_PLACEHOLDER}), or change data: in {out}; then\n"
            f"  edgeconv validate --recipe {out}\n  edgeconv convert --recipe {out}"
        )
        return EXIT_OK

    guarded(debug, run, capture=True)  # TensorFlow (SavedModel) prints C++ banners
