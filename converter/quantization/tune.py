"""The accuracy-target loop: when ``accuracy_drop`` is missed, try fixes in order of cost.

Without an ``accuracy_drop`` budget the loop still runs when int8 is far from float: when the worst output's
SQNR is below ``LOW_SQNR_DB`` on the evaluation data (or, without it, on the calibration samples held out),
the full-integer fixes (steps 1-3) are tried, scored by that SQNR, and the best is kept. Float layers, 16x8
and QAT change what the model is (its kernels, its training) and run only for a budget the user set.

Full-integer fixes first, each kept only if it scores better: 1. better ranges (``auto``,
then each method), 2. cross-layer equalization, 3. bias correction, 4. a short
quantization-aware fine-tune when ``tuning.qat`` gives training data. Then, only when every
target runs LiteRT on a CPU: 5. the worst tensors kept float (their writer and readers
denylisted), 1, 2, 4, … up to ``tuning.max_float_layers`` ops, and 6. 16x8 activations.
Floating a few layers comes before 16x8 because it keeps the model's I/O types and
XNNPACK's int8 kernels for every other layer, where 16x8 runs the whole model on reference
kernels. Edge TPU and MCU targets run integer kernels only: there the loop stops after
step 4 and names the worst layers. Every attempt is recorded. Attempts are scored on the
evaluation data (the same data the gate uses), so the chosen fix is tuned to it; use
enough samples.

An attempt that fails to build or to run (a transformed model that does not prepare, a
quantizer error, an interpreter that refuses the result) is recorded under ``skipped`` with
its reason and the loop goes on: the recipe's own result is always there to fall back on.
Only errors in the user's input (``UserInputError``, e.g. unlabelled ``tuning.qat.data``)
and interrupts (``KeyboardInterrupt`` and ``artifacts.Interrupted``) stop the loop.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from converter.analysis.analyze import LayerError, analyze
from converter.analysis.evaluate import LOW_SQNR_DB, evaluate_host, worst_output
from converter.devices import DeviceProfile
from converter.errors import ConversionError, ConverterError, UserInputError
from converter.quantization.qat import QatUnavailable
from converter.quantization.quantize import Plan, Quantized
from converter.recipe import Method, Recipe
from converter.runtime.accuracy import Accuracy
from converter.runtime.latency import measure
from converter.runtime.model import TFLiteModel
from converter.targets import ethos_u
from converter.tflite.flatbuf import LINEAR
from converter.tflite.inspect_model import Graph, list_ops, op_graph

log = logging.getLogger(__name__)

Quantizer = Callable[[Plan], Quantized]
# auto first (the per-tensor best by expected error), then each method for the whole model:
# the model-level score can prefer a method the per-tensor criterion does not (e.g. entropy
# clipping an outlier channel the next layer barely uses).
RANGE_METHODS: tuple[Method, ...] = ("auto", "mse", "percentile", "entropy", "minmax")


@dataclass(frozen=True)
class Attempt:
    """One quantization tried by the loop, and what it scored."""

    step: str
    detail: str
    quantized: Quantized
    accuracy: Accuracy
    latency_p50_ms: float | None
    seconds: float
    meets: bool

    def worst_sqnr_db(self) -> float:
        """The lowest output SQNR against float (every output counts); -inf without outputs."""
        worst = worst_output(self.accuracy.outputs or [])
        return float(worst["sqnr_db"]) if worst is not None else float("-inf")

    def fidelity_score(self) -> tuple[float, float]:
        """Lower is better: negative worst-output SQNR, then disagreement (the no-budget loop's order)."""
        return (-round(self.worst_sqnr_db(), 6), -(self.accuracy.agreement or 0.0))

    def score(self) -> tuple[float, float, float]:
        """Lower is better: the drop in the evaluation metric, then disagreement, then negative output SQNR."""
        a = self.accuracy
        sqnr = a.outputs[0]["sqnr_db"] if a.outputs else 0.0
        return (round(a.drop if a.drop is not None else 1.0, 9), -(a.agreement or 0.0), -sqnr)

    def to_json(self, chosen: bool) -> dict[str, Any]:
        a = self.accuracy
        return {
            "step": self.step,
            "detail": self.detail,
            "plan": self.quantized.to_json(),
            "int8": a.int8,
            "drop": a.drop,
            "agreement": a.agreement,
            "output_sqnr_db": a.outputs[0]["sqnr_db"] if a.outputs else None,
            "worst_sqnr_db": round(self.worst_sqnr_db(), 3) if a.outputs else None,
            "bytes": len(self.quantized.model),
            "latency_p50_ms": self.latency_p50_ms,
            "latency_where": "host, short run (20+ invocations)" if self.latency_p50_ms is not None else None,
            "seconds": round(self.seconds, 3),
            "meets_budget": self.meets,
            "chosen": chosen,
        }


@dataclass(frozen=True)
class TuneResult:
    """The chosen quantization and the report section describing the loop."""

    chosen: Quantized
    accuracy: Accuracy
    section: dict[str, Any]


def accuracy_budget(recipe: Recipe, targets: dict[str, DeviceProfile]) -> float | None:
    """The tightest ``accuracy_drop`` gate that will apply, by the gates' rule (``gates.budget_rows``):
    the recipe's, each target's own, and a device profile's only where the recipe sets none."""
    top = recipe.budgets.accuracy_drop
    limits = [top]
    for spec in recipe.target_specs():
        own, device = spec.budgets.accuracy_drop, targets[spec.device].budgets.accuracy_drop
        limits.append(own if own is not None else (device if top is None else None))
    set_limits = [v for v in limits if v is not None]
    return min(set_limits) if set_limits else None


def host_latency_ms(model: bytes) -> float | None:
    """A short host p50, to compare attempts with each other (not a benchmark)."""
    try:
        return measure(TFLiteModel(model_content=model), warmup=3, runs=20, min_seconds=0.2).p50_ms
    except Exception as e:  # noqa: BLE001 - an attempt without latency is still an attempt
        log.warning("tuning: latency not measured: %s", e)
        return None


def float_nodes_for(graph: Graph, tensor: str) -> tuple[str, ...]:
    """Ops to keep float so ``tensor`` is never quantized: its writer, and its readers onwards.

    Ops that do not mix channels with weights (pooling, reshape, add, concat, …) pass an
    outlier channel on to their output, so the float region extends through them until it
    reaches conv/dense ops, whose outputs have ranges of their own. Node (output tensor) names.
    """
    start = next((i for i, n in graph.tensor_names.items() if n == tensor), None)
    if start is None:
        return ()
    nodes = [node.name for node in graph.nodes if start in node.outputs]
    queue, seen = [start], {start}
    while queue:
        current = queue.pop(0)
        for node in graph.nodes:
            if current not in node.inputs:
                continue
            if node.name not in nodes:
                nodes.append(node.name)
            if node.op in LINEAR:
                continue
            for out in node.outputs:
                if out not in seen:
                    seen.add(out)
                    queue.append(out)
    return tuple(nodes)


class Loop:
    """State of one tuning run: the attempts so far and how to score a plan."""

    def __init__(
        self,
        float_tflite: bytes,
        eval_x: np.ndarray,
        eval_y: np.ndarray | None,
        budget: float | None,
        quantizer: Quantizer,
        metric: str = "auto",
        min_sqnr_db: float | None = None,
    ):
        """``budget``: the accuracy_drop to meet; without one, ``min_sqnr_db`` for the worst output instead."""
        self.float_tflite, self.eval_x, self.eval_y, self.metric = float_tflite, eval_x, eval_y, metric
        self.budget, self.quantizer, self.min_sqnr_db = budget, quantizer, min_sqnr_db
        self.attempts: list[Attempt] = []
        self.skipped: list[dict[str, str]] = []

    def record(self, step: str, detail: str, q: Quantized, accuracy: Accuracy | None = None) -> Attempt:
        start = time.perf_counter()
        acc = accuracy or evaluate_host(self.float_tflite, q.model, self.eval_x, self.eval_y, metric=self.metric)
        attempt = Attempt(step, detail, q, acc, host_latency_ms(q.model), time.perf_counter() - start, False)
        if self.budget is not None:
            meets = acc.drop is not None and acc.drop <= self.budget + 1e-12
        else:
            meets = self.min_sqnr_db is not None and attempt.worst_sqnr_db() >= self.min_sqnr_db
        attempt = dataclasses.replace(attempt, meets=meets)
        self.attempts.append(attempt)
        if self.budget is not None:
            log.info(
                "tuning: %-16s %s int8 %.4g, drop %+.4g, agreement %.4f%s",
                step,
                acc.metric,
                acc.int8 or 0.0,
                acc.drop or 0.0,
                acc.agreement or 0.0,
                " (meets the budget)" if attempt.meets else "",
            )
        else:
            log.info(
                "tuning: %-16s worst output %.2f dB SQNR%s",
                step,
                attempt.worst_sqnr_db(),
                f" (reaches {self.min_sqnr_db:g} dB)" if attempt.meets else "",
            )
        return attempt

    def better(self, best: Attempt, candidate: Attempt | None) -> Attempt:
        key = Attempt.score if self.budget is not None else Attempt.fidelity_score
        return best if candidate is None else min(best, candidate, key=key)

    def layers(self, step: str, base: Attempt, x: np.ndarray) -> list[LayerError] | None:
        """Per-layer errors of ``base`` (to pick the layers to keep float); None, recorded as skipped, if that fails."""
        try:
            return analyze(base.quantized.float_reference(self.float_tflite), base.quantized.model, x)
        except UserInputError:
            raise
        except Exception as e:  # noqa: BLE001 - the loop goes on without per-layer errors
            self.skip(step, e)
            return None

    def skip(self, step: str, error: Exception) -> None:
        """Record why ``step`` gave no attempt; the loop goes on without it."""
        reason = reason_of(error)
        log.warning("tuning: %s not tried: %s", step, reason)
        self.skipped.append({"step": step, "reason": reason})

    def attempt(self, step: str, detail: str, plan: Plan, quantizer: Quantizer | None = None) -> Attempt | None:
        """Quantize with ``plan`` (and ``quantizer`` when given) and score it; None (recorded under
        ``skipped``) when either fails."""
        start = time.perf_counter()
        try:
            a = self.record(step, detail, (quantizer or self.quantizer)(plan))
        except UserInputError:
            raise  # the user's input is wrong: every later attempt would fail the same way
        except Exception as e:  # noqa: BLE001 - one failed attempt must not lose the conversion
            self.skip(step, e)
            return None
        a = dataclasses.replace(a, seconds=a.seconds + time.perf_counter() - start)
        self.attempts[-1] = a
        return a


def reason_of(error: Exception) -> str:
    """The error as one line for the report; the class name for errors that are not ours (they may say little)."""
    text = " ".join(str(error).split()) or "no message"
    return text if isinstance(error, ConverterError | QatUnavailable) else f"{type(error).__name__}: {text}"


def tune(
    recipe: Recipe,
    targets: dict[str, DeviceProfile],
    float_tflite: bytes,
    first: Quantized,
    first_accuracy: Accuracy,
    eval_x: np.ndarray | None,
    eval_y: np.ndarray | None,
    quantizer: Quantizer,
    held_x: np.ndarray | None = None,
) -> TuneResult:
    """Run the loop when it applies; otherwise return ``first`` with the reason it did not run.

    ``held_x``: calibration samples held out (a recipe without evaluation data), for the no-budget loop.
    """
    budget = accuracy_budget(recipe, targets)

    def skipped(reason: str) -> TuneResult:
        return TuneResult(first, first_accuracy, {"ran": False, "reason": reason, "budget": budget, "attempts": []})

    if budget is None:
        fidelity = _fidelity_loop(
            recipe, float_tflite, first, first_accuracy, eval_x, eval_y, held_x, quantizer, own_kernels_only(targets)
        )
        return fidelity or skipped("no accuracy_drop budget")
    if not recipe.tuning.enabled:
        return skipped("tuning.enabled is false in the recipe")
    if eval_x is None or first_accuracy.drop is None:
        return skipped("needs evaluation data (data.evaluation)")
    loop = Loop(float_tflite, eval_x, eval_y, budget, quantizer, first_accuracy.metric or "auto")
    best = loop.record("recipe", "the recipe's own settings", first, first_accuracy)
    if best.meets:
        return _result(loop, best, "the recipe's result meets the budget", None)
    plan = first.plan
    if plan.activations == "int8":
        best = _full_integer_fixes(loop, best, plan, own_kernels_only(targets))
        post_training = best
        qat = recipe.tuning.qat
        if not best.meets and qat is not None:
            detail = f"{qat.epochs} epochs on {qat.data.path.name} (lr {qat.learning_rate:g}, batch {qat.batch_size})"
            qat_plan = Plan(plan.method, qat=True, input_type=plan.input_type, output_type=plan.output_type)
            best = loop.better(best, loop.attempt("qat", f"quantization-aware fine-tune: {detail}", qat_plan))
        # The CPU fallbacks build on post-training quantization: a QAT model's layers are not the float model's.
        best_ptq = best if not best.quantized.plan.qat else post_training
    else:
        best_ptq = best
    if best.meets:
        return _result(loop, best, "met with full-integer fixes", None)
    integer_only = sorted(name for name, p in targets.items() if p.runtime != "litert")
    npu = _npu_16x8(loop, recipe, targets, integer_only) if plan.activations == "int8" else None
    if npu is not None and npu.meets:
        return _result(loop, npu, "met with 16x8 activations (Vela maps every op to each Ethos-U)", None)
    best = loop.better(best, npu)
    if integer_only or plan.activations != "int8":
        layers = loop.layers("worst layers", best_ptq, eval_x[: max(recipe.analysis.samples, 1)])
        worst = [e.to_json() for e in (layers or [])[:5]]
        sixteen = "16x8 was tried and compiled by Vela" if npu is not None else "16x8 is offered for CPU targets only"
        why = (
            f"{', '.join(integer_only)} take full-integer models only (float layers break Edge TPU, NPU and "
            f"microcontroller deployments; {sixteen})"
            if integer_only
            else "the recipe already uses 16x8 activations"
        )
        need = (
            "to fix the worst layers below without float ops: reduce their range outliers in the model "
            "(e.g. clip activations with ReLU6 or retrain), give tuning.qat training data for "
            "quantization-aware training, or drop these targets to let edgeconv keep them float on CPU"
        )
        return _result(loop, best, f"stopped: {why}", {"worst_layers": worst, "needed": need})
    return _fallbacks(loop, best_ptq, recipe, float_tflite, eval_x, targets)


# Runtimes whose own kernels run the int8 model as written (LiteRT's CPU kernels, TFLite Micro's): graph edits the
# stock converter never makes (L2_NORMALIZATION for LayerNorm, an int8-to-int8 QUANTIZE before a concatenation)
# are made only for them. The NPU compilers' importers are not relied on (rknn-toolkit2 rejects that QUANTIZE),
# and TensorRT's Q/DQ ONNX is made from the float model.
OWN_KERNEL_RUNTIMES = frozenset({"litert", "tflm"})


def own_kernels_only(targets: dict[str, DeviceProfile]) -> bool:
    """Whether every target runs on LiteRT's or TFLite Micro's kernels (no target: the host's LiteRT)."""
    return all(p.runtime in OWN_KERNEL_RUNTIMES for p in targets.values())


def _full_integer_fixes(loop: Loop, best: Attempt, plan: Plan, layer_norm: bool = False) -> Attempt:
    """Steps 0-3, each kept when it scores better, until one meets the loop's aim: LayerNorms as
    L2_NORMALIZATION (with ``layer_norm``, for targets whose kernels have it), every range method but the
    recipe's, then equalization, then bias correction, each on the best so far."""
    if layer_norm and not best.meets and "RSQRT" in {op.name for op in list_ops(loop.float_tflite)}:
        detail = "each LayerNorm computed by L2_NORMALIZATION: a per-token norm inside one int8 kernel"
        best = loop.better(best, loop.attempt("LayerNorm as L2 norm", detail, replace(plan, layer_norm_l2=True)))
    for method in RANGE_METHODS:
        if method != plan.method and not best.meets:
            step = "auto ranges" if method == "auto" else f"{method} ranges"
            changed = replace(best.quantized.plan, method=method)
            best = loop.better(best, loop.attempt(step, f"calibration.method: {method}", changed))
    for flag, step, detail in (
        ("equalization", "equalization", "cross-layer equalization of conv/dense pairs"),
        ("bias_correction", "bias correction", "cancel the mean shift of rounded weights"),
    ):
        if not best.meets and not getattr(best.quantized.plan, flag):
            changes: dict[str, Any] = {flag: True}
            best = loop.better(best, loop.attempt(step, detail, replace(best.quantized.plan, **changes)))
    return best


def _fidelity_loop(
    recipe: Recipe,
    float_tflite: bytes,
    first: Quantized,
    first_accuracy: Accuracy,
    eval_x: np.ndarray | None,
    eval_y: np.ndarray | None,
    held_x: np.ndarray | None,
    quantizer: Quantizer,
    layer_norm: bool = False,
) -> TuneResult | None:
    """Without a budget: the full-integer fixes when the worst output is below ``LOW_SQNR_DB``; None when it is not.

    Scored on the evaluation data, or on the held-out calibration samples without it (then the accuracy
    handed back stays ``first_accuracy``: the pipeline measures the chosen model on those samples itself).
    """
    data = eval_x if eval_x is not None else held_x
    if data is None or not recipe.tuning.enabled or first.plan.activations != "int8" or first.plan.qat:
        return None
    on_evaluation = eval_x is not None
    metric = (first_accuracy.metric or "auto") if on_evaluation else "mse"
    labels = eval_y if on_evaluation else None
    try:
        accuracy = (
            first_accuracy
            if on_evaluation
            else evaluate_host(float_tflite, first.model, data, None, metric=metric, cache=recipe.calibration.cache)
        )
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 - the recipe's result stands without a fidelity figure
        log.warning("tuning: the int8 model's fidelity not measured: %s", reason_of(e))
        return None
    worst = worst_output(accuracy.outputs or [])
    if worst is None or worst["sqnr_db"] >= LOW_SQNR_DB:
        return None  # the common case costs no more than the evaluation the pipeline does anyway
    loop = Loop(float_tflite, data, labels, None, quantizer, metric, LOW_SQNR_DB)
    best = loop.record("recipe", "the recipe's own settings", first, accuracy)
    where = f"the evaluation data ({len(data)} samples)" if on_evaluation else f"{len(data)} held-out samples"
    log.info("tuning: worst output at %.1f dB SQNR on %s, below %g dB: trying full-integer fixes",
             best.worst_sqnr_db(), where, LOW_SQNR_DB)  # fmt: skip
    trigger = f"worst output at {best.worst_sqnr_db():.1f} dB SQNR against float on {where}, below {LOW_SQNR_DB:g} dB"
    best = _full_integer_fixes(loop, best, first.plan, layer_norm)
    reached = f"worst output at {best.worst_sqnr_db():.1f} dB with '{best.step}'"
    outcome = (
        f"{reached}: met {LOW_SQNR_DB:g} dB with full-integer fixes"
        if best.meets
        else f"no full-integer fix reached {LOW_SQNR_DB:g} dB; kept the best ({reached})"
    )
    extra: dict[str, Any] = {"trigger": trigger, "min_sqnr_db": LOW_SQNR_DB}
    if not best.meets:
        extra["needed"] = (
            "set budgets.accuracy_drop (with labelled data.evaluation) so the loop may also keep the worst layers "
            "float or use 16x8 activations on CPU targets, or give tuning.qat training data"
        )
    result = _result(loop, best, outcome, extra)
    return replace(result, accuracy=best.accuracy if on_evaluation else first_accuracy)


def _npu_16x8(loop: Loop, recipe: Recipe, targets: dict[str, DeviceProfile], integer_only: list[str]) -> Attempt | None:
    """16x8 for integer-only targets that are all Ethos-U NPUs, kept only where Vela maps every op to the NPU.

    The Ethos-U runs int16 activations for most ops (Vela's supported-ops list), so 16x8 is an integer
    fix there; the attempt's model is compiled for each target and refused when Vela leaves an op to the CPU.
    """
    npus = [targets[n] for n in integer_only]
    if not npus or any(p.runtime != "ethos-u" or p.npu is None for p in npus):
        return None
    if not recipe.tuning.int16 or not all(p.supports_int16 for p in targets.values()):
        return None

    def accepted_by_vela(plan: Plan) -> Quantized:
        q = loop.quantizer(plan)
        for p in npus:
            assert p.npu is not None
            compiled = ethos_u.compile_model(q.model, p.npu)
            if compiled.cpu_ops:
                ops = sorted({op for op, _ in compiled.cpu_reasons.values()})
                raise ConversionError(
                    f"Vela leaves {compiled.cpu_ops} op(s) of the 16x8 model to the CPU on {p.name}"
                    + (f" ({', '.join(ops)})" if ops else "")
                )
        return q

    return loop.attempt(
        "16x8",
        "int16 activations, int8 weights, int16 I/O (TFLite min/max); compiled by Vela for every Ethos-U target",
        Plan("minmax", activations="int16", input_type="int16", output_type="int16"),
        accepted_by_vela,
    )


def _fallbacks(
    loop: Loop,
    best: Attempt,
    recipe: Recipe,
    float_tflite: bytes,
    eval_x: np.ndarray,
    targets: dict[str, DeviceProfile],
) -> TuneResult:
    """CPU-only steps: keep the worst tensors float, then 16x8."""
    base = best.quantized.plan
    layers = loop.layers("float layers", best, eval_x[: max(recipe.analysis.samples, 1)])
    worst = [e for e in layers or [] if e.op and (e.sqnr_drop_db or 0) > 0]
    nodes: tuple[str, ...] = ()
    taken: list[LayerError] = []
    tried: set[tuple[str, ...]] = set()

    def try_nodes() -> Attempt | None:
        tried.add(nodes)
        return loop.attempt(
            f"float {len(nodes)} ops",
            f"keep float: the {len(taken)} worst tensor(s) {', '.join(e.name.split(';')[0] for e in taken)}",
            replace(base, float_nodes=nodes),
        )

    try:
        graph = op_graph(float_tflite)
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 - without the graph no float region; 16x8 may still help
        loop.skip("float layers", e)
        worst = []
    size = 1
    for layer in worst:
        more = tuple(n for n in float_nodes_for(graph, layer.name) if n not in nodes)
        if not more:
            continue  # already inside the float region
        if len(nodes) + len(more) > recipe.tuning.max_float_layers:
            break
        nodes, taken = nodes + more, [*taken, layer]
        if len(taken) < size:
            continue
        a = try_nodes()
        if a is not None and a.meets:
            return _result(loop, a, "met with float layers (CPU targets only)", None)
        size *= 2
    if nodes and nodes not in tried:  # the set gathered when the limit or the list ended
        a = try_nodes()
        if a is not None and a.meets:
            return _result(loop, a, "met with float layers (CPU targets only)", None)
    if recipe.tuning.int16 and all(p.supports_int16 for p in targets.values()):
        keep = ("float32", "int16")
        io = (
            base.input_type if base.input_type in keep else "float32",
            base.output_type if base.output_type in keep else "float32",
        )
        changed = io != (base.input_type, base.output_type)
        a = loop.attempt(
            "16x8",
            "int16 activations, int8 weights (TFLite min/max)" + ("; model I/O becomes float32" if changed else ""),
            Plan("minmax", activations="int16", input_type=io[0], output_type=io[1]),
        )
        if a is not None and a.meets:
            io_said = (
                f"; model I/O {io[0]} in, {io[1]} out instead of the recipe's {base.input_type}/{base.output_type}, "
                "which a 16x8 model cannot take"
                if changed
                else ""
            )
            return _result(loop, a, f"met with 16x8 activations (CPU targets only{io_said})", None)
    plans = [(a, a.quantized.plan) for a in loop.attempts]
    full_integer = [a for a, p in plans if not p.float_nodes and p.activations == base.activations]
    return _result(loop, min(full_integer, key=Attempt.score), "no fix met the budget; kept the best int8 result", None)


def _result(loop: Loop, chosen: Attempt, outcome: str, extra: dict[str, Any] | None) -> TuneResult:
    section = {
        "ran": len(loop.attempts) > 1,
        "reason": None,
        "budget": loop.budget,
        "outcome": outcome,
        "attempts": [a.to_json(a is chosen) for a in loop.attempts],
        "skipped": loop.skipped,
        **(extra or {}),
    }
    return TuneResult(chosen.quantized, chosen.accuracy, section)
