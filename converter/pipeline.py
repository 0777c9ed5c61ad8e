"""The pipeline, top to bottom: load → data → calibrate and quantize → evaluate → publish.

Everything that can be checked before the heavy work (recipe, paths, output folder) is
checked first. The output folder is locked for the whole run and its files are switched in
as one set at the end (``artifacts.OutputFolder``): a failed or interrupted run leaves the
previous set untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from converter.analysis import result_cache
from converter.analysis.analyze import ACCURACY_GATES, AloneRun, LayerError, alone_decision, analyze, isolate
from converter.analysis.evaluate import check_metric, coverage_warning, evaluate_host, fidelity_warning
from converter.artifacts import OutputFolder
from converter.boards import latency_cache
from converter.boards.measure import TargetResult, measure_target, merge_measured
from converter.calibration.data import (
    Dataset,
    ModelInput,
    Split,
    align_classes,
    check_preprocess,
    range_mismatch,
    read_samples,
    split_calibration,
)
from converter.calibration.stats import INDEX_ADVICE, IndexRefused
from converter.calibration.transform_check import TransformRejected
from converter.devices import DeviceProfile, load_device
from converter.errors import (
    ConversionError,
    ConverterError,
    DataError,
    DeployError,
    InvalidModelError,
    ModelLoadError,
    NoIntegerKernelError,
    UserInputError,
)
from converter.extras import check_importable
from converter.progress import Ticker
from converter.quantization import quant_cache
from converter.quantization.qat import check_available, quantize_qat
from converter.quantization.quantize import Plan, Quantized, quantize
from converter.quantization.tflite_quantizer import (
    import_problem,
    import_quantizer,
    import_seconds,
    quantize_with_ranges,
)
from converter.quantization.tune import accuracy_budget, own_kernels_only, tune
from converter.recipe import BenchmarkSpec, DataSource, Recipe, TargetSpec
from converter.reports.ci_outputs import finalize
from converter.reports.gates import LOWER_BOUNDS, Gate, evaluate
from converter.reports.plots import histogram_png, most_clipped
from converter.reports.render import layer_label
from converter.reports.report import (
    FLOAT_NAME,
    HIST_NAME,
    INT8_NAME,
    REPORT_NAME,
    Outcome,
    build_report,
    dumps,
    record_fidelity,
)
from converter.runtime.accuracy import Accuracy, not_measured
from converter.runtime.preprocess import Preprocess
from converter.schema import blame_override
from converter.sources.load import LoadedModel, detect_format, load_model
from converter.targets import check_targets, early_warnings, rknn, rknn_setup, tensorrt

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RunResult:
    """What ``convert`` produced: the report and where the files are."""

    out_dir: Path
    report: dict[str, Any]


def default_out_dir(recipe: Recipe) -> Path:
    return Path("build") / recipe.name


@contextmanager
def _step(name: str, steps: list[dict[str, Any]]) -> Iterator[None]:
    """Time a step; TensorFlow imported inside it (on a quantized-cache miss) is its own "import tf" step."""
    start, imported = time.perf_counter(), import_seconds()
    with Ticker(name):  # on a terminal only: the step's name and elapsed time while it runs
        yield
    seconds = time.perf_counter() - start
    spent = import_seconds() - imported
    if spent >= 0.05:  # TensorFlow already loaded (a Keras source) leaves only its converter module: no own line
        steps.append({"name": "import tf", "seconds": round(spent, 3)})
        log.info("%-10s %6.1fs", "import tf", spent)
        seconds -= spent
    steps.append({"name": name, "seconds": round(seconds, 3)})
    log.info("%-10s %6.1fs", name, seconds)


def _timed(name: str, steps: list[dict[str, Any]], fn: Callable[[], T]) -> T:
    with _step(name, steps):
        return fn()


def convert(
    recipe: Recipe,
    out_dir: Path | None = None,
    force: bool = False,
    baseline: dict[str, Any] | None = None,
    baseline_path: str | None = None,
    allow_custom_objects: bool = False,
) -> RunResult:
    """Run the whole pipeline for ``recipe`` and publish its artifacts as the content of ``out_dir``.

    ``custom_objects`` are imported only with ``allow_custom_objects``: importing a module runs its
    code, and a recipe alone (it may come from a pull request) must never make that happen.
    """
    out = out_dir or default_out_dir(recipe)
    # Cheap checks first, so bad input fails in milliseconds and writes nothing.
    if recipe.custom_objects and not allow_custom_objects:
        raise UserInputError(
            f"{recipe.source}: custom_objects: importing {', '.join(recipe.custom_objects)} would run the code of "
            "those Python modules, and a recipe alone may not run code here (recipes arrive in pull requests and "
            "CI runs them); if you trust these modules, pass --allow-custom-objects to edgeconv convert"
        )
    try:
        return _convert(recipe, out, force, baseline, baseline_path)
    except UserInputError as e:  # found while running: a value a --set option gave is blamed on it
        e.args = (blame_override(str(e), str(recipe.source), recipe.overrides), *e.args[1:])
        raise


def _convert(
    recipe: Recipe, out: Path, force: bool, baseline: dict[str, Any] | None, baseline_path: str | None
) -> RunResult:
    try:
        source_format = detect_format(recipe.model)  # also checks the source's extra or virtualenv (load.SOURCES)
    except ModelLoadError as e:
        raise ModelLoadError(f"{recipe.source}: {e}") from e
    targets = {t.device: load_device(t.device) for t in recipe.target_specs()}
    for name, profile in targets.items():
        if profile.runtime == "tflm":
            check_importable("tflite_micro", f"target {name} (TFLite Micro)")
        if profile.runtime == "ethos-u":
            check_importable("ethosu", f"target {name} (Arm Ethos-U)")
        if profile.runtime == "rknn" and rknn_setup.installed() is None:
            raise rknn_setup.not_installed_error(f"{recipe.source}: targets: {name} (Rockchip RKNN)")
        if profile.runtime == "tensorrt":
            tensorrt.check_installed(recipe.model, f"{recipe.source}: targets: {name} (TensorRT)")
    qat = recipe.tuning.qat
    if qat is not None and not qat.data.path.exists():
        raise DataError(f"{recipe.source}: tuning.qat.data.path: {qat.data.path} does not exist")
    with OutputFolder(out, recipe.name, force) as folder:  # locked, checked and writable before any work
        try:
            report, files = _run(recipe, targets, baseline, baseline_path)
        except InvalidModelError as e:
            raise _invalid_model(recipe, source_format, e) from e
        folder.publish(files)
    return RunResult(out, report)


def _invalid_model(recipe: Recipe, source_format: str, error: InvalidModelError) -> ConverterError:
    """The quantizer's ``InvalidModelError`` with the file: the user's input for a .tflite, TensorFlow's doing else.

    The quantizer judged the float model as edgeconv made it (rewritten at load, perhaps transformed for
    calibration): a .tflite source is blamed only when TensorFlow's importer rejects the file itself too.
    """
    where = f"{recipe.source}: model: {recipe.model}"
    if source_format == "tflite":
        problem = import_problem(recipe.model.read_bytes())
        if problem is not None:
            message, remedy = problem
            return ModelLoadError(f"{where}: the model file is invalid: {message}; {remedy}")
        return ConversionError(
            f"{where}: TensorFlow's quantizer cannot read the float model edgeconv made of this file ({error}), though "
            "it reads the file itself: this is a bug in edgeconv, not a problem with your file; please report it "
            "with the model"
        )
    return ConversionError(
        f"{where}: TensorFlow converted it into a float model that TensorFlow's own quantizer cannot read: {error}. "
        "This is a problem in TensorFlow's converter, not in your file: please report it with the model"
    )


def _run(
    recipe: Recipe, targets: dict[str, DeviceProfile], baseline: dict[str, Any] | None, baseline_path: str | None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Every step, in order; returns the report and every file of the output folder."""
    where = f"{recipe.source}: data"
    steps: list[dict[str, Any]] = []
    tensorflow_before = "tensorflow" in sys.modules  # a batch worker's earlier recipe may have loaded it
    quant_cache.STORE.reset_counts()
    result_cache.STORE.reset_counts()
    latency_cache.STORE.reset_counts()
    try:
        model: LoadedModel = _timed(
            "load",
            steps,
            lambda: load_model(
                recipe.model, recipe.custom_objects, cache=recipe.calibration.cache, layout=recipe.input.layout
            ),
        )
    except ModelLoadError as e:
        raise ModelLoadError(f"{recipe.source}: {e}") from e
    shapes = (
        f"input {list(model.input_shape)}"
        if len(model.inputs) == 1
        else f"{len(model.inputs)} inputs: " + ", ".join(f"{i.name} {list(i.shape)}" for i in model.inputs)
    )
    log.info("loaded %s (%s) with %s; %s", recipe.model.name, model.format, model.loader, shapes)
    for warning in early_warnings(recipe, targets):
        log.warning("warning: %s", warning)
    prep = recipe.preprocess()
    check_preprocess(prep, model.inputs, str(recipe.source))

    def read(
        kind: str, src: DataSource | None = None, at: str | None = None
    ) -> tuple[np.ndarray, Dataset, np.ndarray | None]:
        src = src or getattr(recipe.data, kind)
        at = at or f"{where}.{kind}"
        x, ds = read_samples(
            src.path,
            model.inputs,
            prep,
            where=at,
            samples=src.samples,
            seed=src.seed,
            layout=recipe.input.layout,
            reshape=recipe.input.reshape,
        )
        return x, ds, ds.y

    cal_x, cal_ds, _ = _timed("data", steps, lambda: read("calibration"))
    _log_integer_inputs(model.inputs, recipe.quantization.input_type)
    eval_x, eval_ds, eval_y = read("evaluation") if recipe.data.evaluation else (None, None, None)
    if eval_ds is not None:
        eval_y, said = align_classes(cal_ds, eval_ds, f"{where}.evaluation")
        if said is not None:
            (log.warning if said.startswith("warning: ") else log.info)("%s", said)
    mismatch = range_mismatch(cal_x, eval_x, f"{where}.evaluation") if eval_x is not None else None
    if mismatch is not None:
        log.warning("warning: %s", mismatch)
    # Without evaluation data, int8 is measured against float on calibration samples held out for it.
    split = split_calibration(
        cal_x, cal_ds, recipe.data.calibration.seed, evaluation=eval_x is not None, holdout=recipe.data.holdout
    )
    if split.short:
        log.warning("warning: %s", split.reason)
    elif split.held_x is not None:
        log.info("%s", split.reason)
    cal_x, cal_ds = split.x, split.ds
    eval_raw = eval_ds.x if eval_ds is not None else None
    metric = recipe.data.evaluation.metric if recipe.data.evaluation else "auto"
    if eval_x is not None:  # a metric the data cannot give fails before calibration, not after
        check_metric(model.float_tflite, eval_x, eval_y, metric, f"{where}.evaluation.metric")

    # TensorFlow's quantizer is loaded when a quantization is not in the cache (``_step`` times it apart):
    # its native extension alone where it loads so, else TensorFlow.
    if not recipe.calibration.cache:
        _timed("import tf", steps, import_quantizer)

    def quantizer(plan: Plan | None = None) -> Quantized:
        if plan is not None and plan.qat and recipe.tuning.qat is not None:
            spec = recipe.tuning.qat
            check_available(model.format, recipe.model)  # before reading its data
            train_x, _, train_y = read("qat", spec.data, f"{recipe.source}: tuning.qat.data")
            if train_y is None:
                raise DataError(f"{recipe.source}: tuning.qat.data: {spec.data.path} has no labels; QAT trains on them")
            return quantize_qat(recipe, model.format, plan, train_x, train_y, cal_x)
        return quantize(
            model.float_tflite,
            cal_x,
            recipe,
            prep,
            eight_bit_data=cal_ds.eight_bit,
            plan=plan,
            concat_scales=own_kernels_only(targets),
        )

    with _index_rows(cal_ds, model.inputs, f"{where}.calibration"):
        first = _timed("calibrate", steps, lambda: _first_model(recipe, targets, quantizer))
    with _index_rows(eval_ds, model.inputs, f"{where}.evaluation"):
        accuracy = (
            _timed(
                "evaluate",
                steps,
                lambda: evaluate_host(
                    model.float_tflite,
                    first.model,
                    eval_x,
                    eval_y,
                    metric=metric,
                    where=f"{where}.evaluation.metric",
                    cache=recipe.calibration.cache,
                ),
            )
            if eval_x is not None
            else not_measured()
        )
    with _step("tune", steps):
        tuned = tune(recipe, targets, model.float_tflite, first, accuracy, eval_x, eval_y, quantizer, split.held_x)
    chosen, accuracy = tuned.chosen, tuned.accuracy
    quant, calibration = chosen.model, chosen.calibration
    held = _held_out(recipe, split, model, quant, steps)
    # Layers are compared on samples calibration did not see where there are some.
    unseen = eval_x if eval_x is not None else split.held_x
    analysis_x = (unseen if unseen is not None else cal_x)[: recipe.analysis.samples]
    layers = (
        _timed(
            "analyze",
            steps,
            lambda: layer_errors(
                chosen.float_reference(model.float_tflite), chosen, analysis_x, cache=recipe.calibration.cache
            ),
        )
        if len(analysis_x)
        else []
    )
    with _step("targets", steps):
        shown, kind = (eval_x, "evaluation") if eval_x is not None else (cal_x, "calibration")
        checks = check_targets(
            recipe,
            targets,
            quant,
            shown,
            labels=eval_y if eval_x is not None else None,
            samples_kind=kind,
            float_model=model.float_tflite,
            calibration=cal_x,
        )
    with _step("benchmark", steps):
        measured = measure_targets(recipe, targets, model.float_tflite, quant, eval_raw, eval_y, prep, checks.files)
    files = {FLOAT_NAME: model.float_tflite, INT8_NAME: quant, **checks.files}
    picture = histogram_png(most_clipped(calibration.records)) if calibration else None
    if picture is not None:
        files[HIST_NAME] = picture
    report = build_report(
        Outcome(
            recipe,
            model,
            quant,
            len(cal_x),
            accuracy,
            targets,
            steps,
            HIST_NAME if picture else None,
            measured,
            {name: merge_measured(checks.sections.get(name, {}), measured[name].extra) for name in targets},
            [e.to_json() for e in layers],
            len(analysis_x),
            chosen,
            tuned.section,
        )
    )
    alone = _alone(recipe, report, baseline, chosen, model.float_tflite, layers, analysis_x, steps)
    report["analysis"]["layers"] = [e.to_json() for e in layers]
    report["analysis"]["alone"] = alone.to_json()
    if mismatch is not None:
        report["warnings"].append(mismatch)
    _fidelity(recipe, targets, report, split, held)
    # Which layout the model's image inputs have, and how the data was brought to the model's shape.
    report["model"]["layout"] = model.layout
    report["model"]["data_arranged"] = {
        "calibration": cal_ds.arranged,
        "evaluation": eval_ds.arranged if eval_ds is not None else None,
    }
    _say_how_fed(report, model.inputs, prep)
    report["cache"] = {
        "enabled": recipe.calibration.cache,
        "float_model": "float model cache" in model.loader,
        "statistics": bool(calibration.cache_hit) if calibration else False,
        "quantized_models": quant_cache.STORE.counts(),
        "results": result_cache.STORE.counts(),  # evaluations and per-layer errors
        "latency": latency_cache.STORE.counts(),  # host latency, per machine
        # Whether anything of this run needed TensorFlow; None when it was loaded before this run began (a batch
        # worker's earlier recipe loaded it), which hides whether this one would have.
        "tensorflow_loaded": None if tensorflow_before else "tensorflow" in sys.modules,
    }
    images = {HIST_NAME: picture} if picture is not None else {}
    files.update(finalize(report, images, baseline, baseline_path))
    return report, {**files, REPORT_NAME: dumps(report)}


def _held_out(
    recipe: Recipe, split: Split, model: LoadedModel, quant: bytes, steps: list[dict[str, Any]]
) -> Accuracy | None:
    """int8 against float on the held-out calibration samples (no labels: SQNR, cosine, agreement); None without."""
    if split.held_x is None or split.held_ds is None:
        return None
    held_x, where = split.held_x, f"{recipe.source}: data.calibration"
    with _index_rows(split.held_ds, model.inputs, where):
        return _timed(
            "evaluate",
            steps,
            lambda: evaluate_host(
                model.float_tflite, quant, held_x, None, metric="mse", where=where, cache=recipe.calibration.cache
            ),
        )


def _fidelity(
    recipe: Recipe, targets: dict[str, DeviceProfile], report: dict[str, Any], split: Split, held: Accuracy | None
) -> None:
    """The fidelity figures in the report (``record_fidelity``), and a warning when int8 is far from float."""
    record_fidelity(report, held, split.to_json())
    if split.short:  # a hold-out was wanted, but too few samples: no figure, and said so
        report["warnings"].append(split.reason)
    acc, layers, evaluation = report["accuracy"], report["analysis"]["layers"], recipe.data.evaluation
    worst, n = acc["worst_output"], acc["samples"]
    if held is not None and worst is not None:
        agreement = f", top-1 agreement {100 * worst['agreement']:.2f}%" if "agreement" in worst else ""
        log.info(
            "int8 vs float on %d samples held out from calibration: worst output '%s' at %.1f dB SQNR%s",
            n,
            worst["name"],
            worst["sqnr_db"],
            agreement,
        )
    warning = fidelity_warning(
        worst,
        f"{n} samples held out from calibration" if held is not None else f"the evaluation data ({n} samples)",
        evaluation=evaluation is not None,
        labels=report["accuracy"]["metric"] == "top1",
        budget=accuracy_budget(recipe, targets) is not None,
        tried=bool(report["tuning"].get("trigger")),
        layer=f"'{layer_label(layers[0]['name'])}', {layers[0]['op']}" if layers and layers[0].get("op") else None,
    )
    if warning is not None:
        log.warning("warning: %s", warning)
        report["warnings"].append(warning)
    # Min/max ranges clip nothing calibration saw: values beyond them on the evaluation data are news.
    if evaluation is not None and report["quantization"]["method"] == "minmax" and not recipe.calibration.rules:
        shown = f"{report['analysis']['samples']} samples of the evaluation data"
        uncovered = coverage_warning(layers, shown, layer_label)
        if uncovered is not None:
            log.warning("warning: %s", uncovered)
            report["warnings"].append(uncovered)


@contextmanager
def _index_rows(ds: Dataset | None, inputs: tuple[ModelInput, ...], where: str) -> Iterator[None]:
    """An id the model's lookup refused (``stats.IndexRefused``) named by its row in ``ds``'s file (exit 2).

    The statistics pass and the evaluation know a sample's place among those read; the dataset knows
    which row of the file it is (``Dataset.rows``), which is what the user can find and fix.
    """
    try:
        yield
    except IndexRefused as e:
        if ds is None:
            raise
        row = int(ds.rows[e.sample]) if ds.rows is not None and e.sample < len(ds.rows) else e.sample
        unit = f"row {row} of {ds.source.name}" if ds.rows is not None else f"sample {row}"
        names = ", ".join(f"'{i.name}'" for i in inputs if i.integer)
        raise DataError(
            f"{where}.path: {ds.source}: {unit} holds an index the model cannot look up (integer input "
            f"{names}): {e.reason}; {INDEX_ADVICE}"
        ) from e


def _say_how_fed(report: dict[str, Any], inputs: tuple[ModelInput, ...], prep: Preprocess) -> None:
    """``model.inputs[].fed`` in report.json: how each input's data reached the model.

    Integer inputs take the stored integers cast to the input's dtype (never quantized or preprocessed);
    the int8 model keeps them integer (TensorFlow's quantizer changes float inputs only), so
    ``quantization.input_type`` applies to the float inputs alone.
    """
    contract = prep != Preprocess()
    for entry, i in zip(report["model"]["inputs"], inputs, strict=True):
        entry["fed"] = (
            f"integers as stored, cast to {i.dtype} after a range check (not preprocessed, not quantized)"
            if i.integer
            else "float32" + (" after the recipe's input preprocessing (resize, scale, offset)" if contract else "")
        )


def _log_integer_inputs(inputs: tuple[ModelInput, ...], input_type: str) -> None:
    """Say, after the data step, which inputs take integers and that ``input_type`` is not theirs."""
    integer = [i for i in inputs if i.integer]
    if not integer:
        return
    floats = len(integer) < len(inputs)
    for i in integer:
        log.info(
            "input %s: fed as integers (%s), not preprocessed or quantized; it stays %s in the int8 model%s",
            i.name,
            i.dtype,
            i.dtype,
            f" (quantization.input_type {input_type} applies to the float inputs)" if floats else "",
        )


def _first_model(
    recipe: Recipe, targets: dict[str, DeviceProfile], quantizer: Callable[[Plan | None], Quantized]
) -> Quantized:
    """The recipe's plan; ops without an int8 kernel stay float when every target runs LiteRT on a CPU.

    LiteRT runs a model with float islands (quantize/dequantize around them); MCUs and the Edge TPU
    do not, so for them the error stands and says which layer to replace. A transform the recipe asked
    for (equalization, bias correction) whose result fails its check is dropped with a warning and
    recorded in the report: the model is still made, as the accuracy loop would make it.
    """
    rejected: list[tuple[str, str]] = []
    plan = Plan.of(recipe)
    while True:
        try:
            return _recipe_plan(recipe, targets, quantizer, plan if rejected else None, tuple(rejected))
        except TransformRejected as e:
            if not e.transform or not getattr(plan, e.transform, False):
                raise
            log.warning("warning: calibration.%s is dropped for this model: %s", e.transform, e)
            rejected.append((e.transform, str(e)))
            if e.transform == "equalization":
                plan = dataclasses.replace(plan, equalization=False)
            else:
                plan = dataclasses.replace(plan, bias_correction=False)


def _recipe_plan(
    recipe: Recipe,
    targets: dict[str, DeviceProfile],
    quantizer: Callable[[Plan | None], Quantized],
    plan: Plan | None,
    rejected: tuple[tuple[str, str], ...],
) -> Quantized:
    """``plan`` (None: the recipe's), with the float-node fallback for all-CPU targets."""
    try:
        return dataclasses.replace(quantizer(plan), rejected=rejected)
    except NoIntegerKernelError as e:
        integer_only = [name for name, p in targets.items() if p.runtime != "litert"]
        if integer_only or not e.nodes:
            raise
        log.warning(
            "warning: %d op(s) have no int8 kernel and stay float (every target runs LiteRT on a CPU): %s",
            len(e.nodes),
            ", ".join(e.nodes),
        )
        fallback = dataclasses.replace(plan or Plan.of(recipe), float_nodes=e.nodes)
        return dataclasses.replace(quantizer(fallback), rejected=rejected)


def layer_errors(reference: bytes, chosen: Quantized, x: np.ndarray, cache: bool = False) -> list[LayerError]:
    """Per-layer errors of ``chosen`` against its float ``reference`` (``Quantized.float_reference``).

    A pure function of the two models and the samples: with ``cache`` an unchanged re-run reads them back.
    """
    entry = result_cache.key("layers", {}, reference, chosen.model, x) if cache else None
    return result_cache.cached(
        "layers",
        entry,
        lambda: analyze(reference, chosen.model, x),
        lambda layers: [e.to_json() for e in layers],
        lambda rows: [LayerError(**row) for row in rows],
    )


def _alone(
    recipe: Recipe,
    report: dict[str, Any],
    baseline: dict[str, Any] | None,
    chosen: Quantized,
    float_tflite: bytes,
    layers: list[LayerError],
    x: np.ndarray,
    steps: list[dict[str, Any]],
) -> AloneRun:
    """The worst layers measured quantized alone (``layers`` updated in place) when ``alone_decision`` says so.

    Decided after the report is built so the accuracy gates are judged by the gates' own rule (and baseline).
    """
    if not layers:
        return AloneRun(False, "analysis.samples is 0 in the recipe" if not recipe.analysis.samples else "no samples")
    if chosen.calibration is None:
        return AloneRun(False, "16x8 and QAT models have no ranges of edgeconv's to requantize with")
    accuracy_gates = [g for g in evaluate(report, baseline) if g.name in ACCURACY_GATES]
    failed = [_gate_text(g) for g in accuracy_gates if g.status == "failed"]
    acc = report.get("accuracy") or {}
    decision = alone_decision(
        recipe.analysis.alone, failed, any(g.status == "passed" for g in accuracy_gates), acc.get("drop"),
        acc.get("metric"),
    )  # fmt: skip
    # In report.json (analysis.alone) either way; the console shows only the step when it runs.
    log.debug("analysis: layers alone %s: %s", "measured" if decision.run else "not measured", decision.reason)
    if not decision.run:
        return decision
    with _step("alone", steps):
        measured, calls = layer_alone(recipe, chosen, chosen.float_reference(float_tflite), layers, x)
    layers[:] = measured
    return dataclasses.replace(decision, requantizations=calls)


def _gate_text(gate: Gate) -> str:
    """'accuracy_drop 0.6236 > 0.005', with ' [target]' for a target's own gate."""
    where = "" if gate.target == "*" else f" [{gate.target}]"
    if gate.value is None or gate.limit is None:
        return f"{gate.name}{where}"
    return f"{gate.name}{where} {gate.value:.4g} {'<' if gate.name in LOWER_BOUNDS else '>'} {gate.limit:g}"


def layer_alone(
    recipe: Recipe, chosen: Quantized, reference: bytes, layers: list[LayerError], x: np.ndarray
) -> tuple[list[LayerError], int]:
    """The worst ``layers`` also measured quantized alone (same ranges, without bias correction); and how many
    requantizations that took. ``chosen`` must have ranges of ours (``calibration``)."""
    if chosen.calibration is None:  # 16x8 and QAT: no ranges of ours to reuse
        return layers, 0
    requantize = functools.partial(
        quantize_with_ranges,
        reference,
        chosen.calibration.ranges(),
        # Float model I/O: with int8 I/O the input and output rounding alone would cap every figure.
        input_type="float32",
        output_type="float32",
        per_channel=recipe.quantization.per_channel,
        cache=recipe.calibration.cache,
    )
    return isolate(layers, reference, requantize, x)


def measure_targets(
    recipe: Recipe,
    profiles: dict[str, DeviceProfile],
    float_tflite: bytes,
    quant: bytes,
    eval_raw: np.ndarray | None,
    eval_y: np.ndarray | None,
    prep: Preprocess,
    target_files: dict[str, bytes] | None = None,
) -> dict[str, TargetResult]:
    """Latency (and device accuracy) on every target, from temporary copies of the models.

    ``target_files``: the targets' compiled models (``firmware/<target>/model.rknn``), measured on
    the boards whose runtime runs them.
    """
    with tempfile.TemporaryDirectory(prefix="edgeconv-models-") as tmp:
        models = {"float": Path(tmp) / FLOAT_NAME, "int8": Path(tmp) / INT8_NAME}
        models["float"].write_bytes(float_tflite)
        models["int8"].write_bytes(quant)
        eval_data = (eval_raw, eval_y) if eval_raw is not None else None
        if not recipe.benchmark.enabled:
            off = TargetResult(None, reason="not measured: benchmark.enabled is false in the recipe")
            return {spec.device: off for spec in recipe.target_specs()}
        out = {}
        for spec in recipe.target_specs():
            compiled = (target_files or {}).get(f"firmware/{spec.device}/{rknn.ARTIFACT}")
            own = dict(models)
            if compiled is not None:
                own["rknn"] = Path(tmp) / spec.device / rknn.ARTIFACT
                own["rknn"].parent.mkdir()
                own["rknn"].write_bytes(compiled)
            qdq = (target_files or {}).get(f"firmware/{spec.device}/{tensorrt.ARTIFACT}")
            if qdq is not None:  # a TensorRT board with a host: trtexec builds and times it there
                own["qdq"] = Path(tmp) / spec.device / tensorrt.ARTIFACT
                own["qdq"].parent.mkdir(exist_ok=True)
                own["qdq"].write_bytes(qdq)
            profile, cache = profiles[spec.device], recipe.calibration.cache
            out[spec.device] = _measure_or_reason(spec, profile, recipe.benchmark, own, eval_data, prep, cache)
        return out


def _measure_or_reason(
    spec: TargetSpec,
    profile: DeviceProfile,
    bench: BenchmarkSpec,
    models: dict[str, Path],
    eval_data: tuple[np.ndarray, np.ndarray | None] | None,
    prep: Preprocess,
    store_latency: bool = True,
) -> TargetResult:
    """One target; a device that cannot be reached (or fails to run the bundle) costs its gates, not the run."""
    try:
        return measure_target(spec, profile, bench, models, eval_data, prep, store_latency=store_latency)
    except DeployError as e:
        log.warning("warning: %s on %s was not measured: %s", spec.device, spec.host, e)
        return TargetResult(
            None, reason=f"not measured: {spec.host} could not be measured: {e}", extra={"measure_error": str(e)}
        )
