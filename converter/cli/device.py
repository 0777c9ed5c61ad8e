"""``edgeconv bench`` and ``edgeconv deploy``: measurements on this machine or on a device."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from converter.boards.ssh_options import ssh_option_problem
from converter.cli.common import (
    EXIT_GATE,
    EXIT_OK,
    EXIT_STEP,
    Bounded,
    debug_option,
    guarded,
    out_option,
    recipe_option,
    set_option,
    setup_logging,
)
from converter.errors import UserInputError
from converter.reports.render import layer_label, ms_text, runs_on, tail_warning

log = logging.getLogger(__name__)


def _host(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--host checked before anything connects (ssh would read '-o...' as an option)."""
    from converter.boards.ssh_names import parse_destination

    if value is not None:
        try:
            parse_destination(value)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx, param) from e
    return value


PORT = Bounded(int, 1, "a TCP port number", "e.g. --port 2222", maximum=65535)
ssh_options = [
    click.option("--port", type=PORT, help="SSH port."),
    click.option("--identity", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="SSH private key."),
    click.option(
        "--known-hosts",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="known_hosts to verify with.",
    ),
    click.option(
        "--ssh-option",
        "ssh_opts",
        multiple=True,
        metavar="KEY=VALUE",
        callback=lambda _ctx, _param, values: _check_ssh_options(values),
        help="Extra ssh -o option (a safe list: ProxyJump, ConnectTimeout, ServerAliveInterval, ...).",
    ),
    click.option("--python", "remote_python", help="Python on the device [the profile's, python3]."),
    click.option(
        "--timeout",
        "timeout_s",
        type=Bounded(float, 1, "seconds a device may take (connect, copy, run)", "e.g. --timeout 300"),
        help="Seconds each device may take before the stalled step is named [the target's timeout_s, else 600].",
    ),
    click.option(
        "--insecure-host-key",
        is_flag=True,
        help="Allow --ssh-option values that turn host-key checking off (StrictHostKeyChecking=no, "
        "UserKnownHostsFile=/dev/null, CheckHostIP=no); ssh's warnings are shown.",
    ),
    click.option(
        "--fleet",
        "fleet_path",
        type=click.Path(path_type=Path, dir_okay=False),
        help="A fleet file (YAML: boards with name, device, host, ...): measure on every board at once.",
    ),
    click.option(
        "--jobs",
        type=Bounded(int, 1, "boards measured at once", "e.g. --jobs 4"),
        help="With --fleet: boards measured at once [every board, at most 8].",
    ),
    click.option("--keep", is_flag=True, help="Leave the working folder on the device."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


# What a board needs, in the help of bench and deploy (docs/boards.md quotes these lines; keep them in step).
# Nothing of edgeconv is installed on a board: the runtime (one ~11 KB zipapp) is copied over SSH per run.
BOARD_SETUP = """What a board needs (edgeconv copies its runtime over SSH for each run):

\b
  Raspberry Pi: Python 3 with numpy and ai-edge-litert
    (pip install numpy ai-edge-litert); SSH login with a key (ssh-copy-id
    user@host; no passwords: ssh runs in batch mode) and the board's host key
    in known_hosts (connect once with ssh, or pass --known-hosts).
  Coral: the same, plus the Edge TPU runtime libedgetpu (libedgetpu1-std
    from Coral's apt repository) and a model compiled by edgetpu_compiler
    (convert writes model_int8_edgetpu.tflite when the compiler is on PATH):
    edgeconv bench --model model_int8_edgetpu.tflite --delegate edgetpu.
    deploy does not measure Edge TPU targets.
  Jetson: JetPack's TensorRT; convert writes firmware/<target>/model_qdq.onnx
    for a jetson-* target, built there with trtexec --onnx=model_qdq.onnx
    --int8. edgeconv builds and times no engine; bench --host measures a
    .tflite on its CPU with LiteRT (Python 3, numpy, ai-edge-litert).
"""


def _check_ssh_options(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--ssh-option`` callback: a refused option is a usage error (exit 2) naming the option.

    Options that turn host-key checking off pass here and are checked against --insecure-host-key by
    ``_check_insecure`` (click runs callbacks in command-line order, so the flag may come later).
    """
    for value in values:
        problem = ssh_option_problem(value, insecure_ok=True)
        if problem:
            raise click.BadParameter(problem, param_hint=f"--ssh-option {value!r}")
    return values


def _check_insecure(kw: dict[str, Any]) -> None:
    """A host-key-disabling --ssh-option needs --insecure-host-key (exit 2 otherwise); with it, say so."""
    from converter.boards.ssh_options import INSECURE_FLAG, disables_host_key_checking, insecure_problem

    insecure = [v for v in kw["ssh_opts"] if disables_host_key_checking(v)]
    for value in insecure:
        if not kw["insecure_host_key"]:
            raise click.BadParameter(insecure_problem(value, INSECURE_FLAG), param_hint=f"--ssh-option {value!r}")
    if insecure:
        log.warning(
            "warning: host-key checking is weakened for this run (%s, %s): a device that answers with another "
            "key is accepted; ssh's warnings are shown below",
            ", ".join(insecure),
            INSECURE_FLAG,
        )


_FLEET_CONFLICTS = {
    "ssh_host": "--host",
    "port": "--port",
    "identity": "--identity",
    "known_hosts": "--known-hosts",
    "remote_python": "--python",
    "device": "--device",
}


def _check_fleet_options(kw: dict[str, Any]) -> None:
    """--fleet names each board's host, port, key and profile: the single-device options would be ambiguous."""
    if not kw["fleet_path"]:
        if kw["jobs"] is not None:
            raise click.UsageError("--jobs sets how many boards of a --fleet are measured at once; add --fleet FILE")
        return
    for key, option in _FLEET_CONFLICTS.items():
        if kw.get(key) is not None:
            raise click.UsageError(
                f"{option} and --fleet both say where to measure: the fleet file names each board's host, port, "
                f"identity, known_hosts, python and device; drop {option} (or set it for the board in the file)"
            )


def _split_options(kw: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--ssh-option values as (safe, host-key-weakening): only the safe ones may enter a ``TargetSpec``."""
    from converter.boards.ssh_options import disables_host_key_checking

    values = tuple(kw["ssh_opts"])
    insecure = tuple(v for v in values if disables_host_key_checking(v))
    return tuple(v for v in values if v not in insecure), insecure


def _fleet_table(rows: list[list[str]]) -> list[str]:
    head = ["board", "device", "host", "status", "int8 p50", "int8 p90", "float p50", "accuracy", "retries"]
    table = [head, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in table]


def _board_row(board: Any, status: str, lat: dict[str, Any] | None, acc: dict[str, Any] | None) -> list[str]:
    from converter.reports.render import accuracy_figure

    host = f"{board.host}:{board.port}" if board.port else board.host
    if lat is None:
        return [board.name, board.device, host, status, "", "", "", "", ""]
    retries = lat.get("retries") or []
    return [
        board.name,
        board.device,
        host,
        status,
        ms_text(lat["int8"]["p50_ms"]),
        ms_text(lat["int8"]["p90_ms"]),
        ms_text(lat["float"]["p50_ms"]) if lat.get("float") else "n/a",
        accuracy_figure(acc) if acc and acc.get("metric") else "n/a",
        f"{len(retries)} ({retries[0]['step']}: {retries[0]['reason']})" if retries else "0",
    ]


def _jobs(kw: dict[str, Any], boards: int) -> int:
    from converter.boards.fleet import DEFAULT_JOBS

    return int(kw["jobs"] or min(DEFAULT_JOBS, boards))


def _with_ssh_options(fn: Any) -> Any:
    for option in reversed(ssh_options):
        fn = option(fn)
    return fn


def _generic_ssh_profile() -> Any:
    from converter.devices import DeviceProfile

    return DeviceProfile(name="ssh", description="an unnamed Linux device over SSH", runtime="litert", kind="ssh")


def _check_tflite(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserInputError(f"{what}: not found: {path}")
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise UserInputError(f"{what}: {path} is not a TFLite model (no 'TFL3' identifier)")


def _input_shapes(path: Path, what: str, fix: str = "give a valid .tflite model") -> list[tuple[int, ...]]:
    """The model's input shapes, read by the interpreter that will run it (so a corrupt file is refused here)."""
    from converter.runtime.model import TFLiteModel

    try:
        model = TFLiteModel(model_path=str(path), delegate="none")
    except (ValueError, RuntimeError) as e:
        raise UserInputError(f"{what}: {path} cannot be loaded by the TFLite interpreter ({e}); {fix}") from e
    return [tuple(i.shape) for i in model.inputs]


def _check_pair(model: Path, float_model: Path) -> None:
    """--float must take the same input as --model: both run on the same samples."""
    ours, theirs = _input_shapes(model, "--model"), _input_shapes(float_model, "--float")
    if ours != theirs:
        raise UserInputError(
            f"--float {float_model}: its input shape {_shapes(theirs)} differs from --model {model}'s "
            f"{_shapes(ours)}; give the float model that {model.name} was converted from"
        )


def _shapes(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join(str(list(s)) for s in shapes)


def _check_npz(path: Path) -> None:
    import zipfile

    if not path.is_file():
        raise UserInputError(f"--data: not found: {path}")
    if not zipfile.is_zipfile(path):
        raise UserInputError(
            f"--data {path}: not an .npz archive; save the raw samples with numpy.savez(path, x=samples, y=labels)"
        )


def _bench_preprocess(kw: dict[str, Any]) -> Any:
    """--resize/--scale/--offset, each defaulting to the --recipe's input section, else none/1/0."""
    from converter.runtime.preprocess import Preprocess

    base = Preprocess()
    if kw["recipe_path"]:
        from converter.recipe import load_recipe

        base = load_recipe(kw["recipe_path"], check_files=False).preprocess()
    resize = tuple(kw["resize"]) if kw["resize"] else base.resize
    scale = kw["scale"] if kw["scale"] is not None else base.scale
    offset = kw["offset"] if kw["offset"] is not None else base.offset
    return Preprocess(resize, scale, offset)


SATURATION_WARNING = 0.01  # more than 1 % of input values outside the int8 input range is a wrong preprocessing


def _saturation_warning(model: Path, data: Path, prep: Any) -> str | None:
    """Said when the preprocessed samples overrun the int8 model's input range (a forgotten --scale)."""
    import numpy as np

    from converter.runtime.model import TFLiteModel

    info = TFLiteModel(model_path=str(model), delegate="none").inputs
    if len(info) != 1 or info[0].scale is None or info[0].zero_point is None or info[0].dtype not in ("int8", "uint8"):
        return None
    scale, zero = info[0].scale, info[0].zero_point
    try:
        with np.load(data, allow_pickle=False) as npz:
            raw = npz["x"][:256] if "x" in npz.files else None
    except (OSError, ValueError):
        return None  # the runtime reports a bad file with its own message
    if raw is None or raw.dtype.kind not in "uif" or raw.shape[1:] != tuple(info[0].shape[1:]) and not prep.resize:
        return None
    x = prep(raw.astype(np.float32))
    bits = np.iinfo(np.dtype(info[0].dtype))
    lo, hi = (bits.min - zero) * scale, (bits.max - zero) * scale
    outside = float(np.mean((x < lo - scale / 2) | (x > hi + scale / 2)))
    if outside <= SATURATION_WARNING:
        return None
    return (
        f"{100 * outside:.1f}% of the input values fall outside the int8 model's input range [{lo:.4g}, {hi:.4g}] "
        f"after preprocessing (scale {prep.scale:g}, offset {prep.offset:g}): the model sees them clipped and the "
        "accuracy is not the model's; give the recipe's preprocessing with --recipe, or --scale/--offset"
    )


def _deployed_trtexec_lines(name: str, record: dict[str, Any]) -> list[str]:
    """A TensorRT board's latency record (``measure._tensorrt_on_board``), as ``_trtexec_lines`` prints it."""
    return [
        f"{name} ({record['where']}, TensorRT {record['machine'].get('tensorrt') or 'version not printed'})",
        f"  int8  {_percentiles(record['int8'])}  (trtexec's timing run)",
        f"  engine {record['engine_bytes']:,} bytes",
    ]


def _latency_lines(name: str, record: dict[str, Any]) -> list[str]:
    machine = record["machine"]
    lines = [
        f"{name} ({record['where']}: {machine['hostname']}, {machine['cpu']}, {machine['cpu_count']} cpus, "
        f"{machine['interpreter']['package']} {machine['interpreter']['version']})"
    ]
    for key in ("int8", "float"):
        lat = record.get(key)
        if lat:
            figures = "  ".join(f"{q} {ms_text(lat[f'{q}_ms'])}" for q in ("p50", "p90", "p99", "min", "std"))
            lines.append(f"  {key:5} {figures}  ({lat['runs']} runs, {runs_on(lat)})")
    warning = tail_warning(record) if record.get("int8") else None
    if warning:
        lines.append(f"  {warning}")
    if record.get("peak_rss_mb") is not None:
        lines.append(f"  peak RSS {record['peak_rss_mb']:.1f} MiB")
    return lines


def _check_rknn(path: Path, remote: bool) -> None:
    if not remote:
        raise UserInputError("--rknn: a .rknn runs only on a Rockchip board; add --host user@board")
    if not path.is_file():
        raise UserInputError(f"--rknn {path}: file not found; convert with an RKNN target to build it")


def _npu_lines(npu: dict[str, Any] | None) -> list[str]:
    """The .rknn on the board's NPU, or why it was not measured."""
    if npu is None:
        return []
    if not npu.get("measured"):
        return [f"  .rknn not measured on the NPU: {npu.get('reason')}"]
    lat = npu["latency"]
    figures = "  ".join(f"{q} {ms_text(lat[f'{q}_ms'])}" for q in ("p50", "p90", "p99", "min", "std"))
    lines = [f"  npu   {figures}  ({lat['runs']} runs, {npu['runtime']} {npu.get('version')})"]
    accuracy = _accuracy_line(npu.get("accuracy"))
    return lines + ([accuracy] if accuracy else [])


def _accuracy_line(acc: dict[str, Any] | None) -> str | None:
    if not acc:
        return None
    if acc["metric"] == "top1":  # sqnr/mse: the per-output figures below
        return (
            f"  accuracy on {acc['where']} ({acc['samples']} samples): float {100 * acc['float']:.2f}%, "
            f"int8 {100 * acc['int8']:.2f}%, agreement {100 * acc['agreement']:.2f}%"
        )
    sqnr = ", ".join(f"{o['name']} SQNR {o['sqnr_db']:.1f} dB" for o in acc["outputs"])
    return f"  outputs on {acc['where']} ({acc['samples']} samples): {sqnr}"


@click.command(epilog=BOARD_SETUP)
@click.option("--model", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Model to measure.")
@click.option("--float", "float_model", type=click.Path(path_type=Path, dir_okay=False), help="Float reference.")
@click.option(
    "--rknn",
    "rknn_model",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A .rknn built from --model (firmware/<target>/model.rknn): also run it on a Rockchip board's NPU "
    "with rknn-toolkit-lite2 (needs --host).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, dir_okay=False),
    help=".npz of raw samples x (and labels y); several inputs: one array per input, keyed by name.",
)
@click.option(
    "--resize",
    nargs=2,
    metavar="H W",
    type=Bounded(int, 1, "the height and width in pixels to resize samples to", "e.g. --resize 96 96"),
    help="Preprocessing: resize to H W.",
)
@click.option("--scale", type=float, help="Preprocessing: x * scale + offset [the recipe's, else 1].")
@click.option("--offset", type=float, help="Preprocessing offset [the recipe's, else 0].")
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Take the preprocessing (input.resize/scale/offset) from this recipe; --resize/--scale/--offset override.",
)
@click.option("--device", help="Device profile (default: host locally, a generic Linux device with --host).")
@click.option("--host", "ssh_host", metavar="USER@HOST", callback=_host, help="Measure on this device over SSH.")
@click.option(
    "--threads",
    type=Bounded(int, 1, "interpreter threads", "e.g. --threads 4, or leave it out for the profile's (or every core)"),
    help="Interpreter threads [profile's, else every core].",
)
@click.option("--delegate", type=click.Choice(["xnnpack", "none", "edgetpu"]), help="Delegate [profile's].")
@click.option(
    "--trtexec",
    help="trtexec on a TensorRT device (--device jetson-*): the program to run there [the profile's, JetPack's "
    "/usr/src/tensorrt/bin/trtexec].",
)
@click.option(
    "--warmup",
    type=Bounded(int, 0, "untimed runs before timing", "e.g. --warmup 10"),
    default=10,
    show_default=True,
    help="Untimed runs first.",
)
@click.option(
    "--runs",
    type=Bounded(int, 1, "timed runs (at least one)", "e.g. --runs 100"),
    default=100,
    show_default=True,
    help="At least this many timed runs.",
)
@click.option(
    "--min-seconds",
    type=Bounded(float, 0, "the least time to keep timing, in seconds", "e.g. --min-seconds 0.5"),
    default=0.5,
    show_default=True,
    help="And at least this long.",
)
@click.option(
    "--max-runs",
    type=Bounded(int, 1, "the most timed runs (at least one)", "e.g. --max-runs 1000"),
    default=1000,
    show_default=True,
    help="Stop at this many timed runs (or --runs, if more) even before --min-seconds.",
)
@click.option(
    "--top-k",
    type=Bounded(int, 2, "top-k accuracy needs k >= 2 (top-1 is always reported)", "e.g. --top-k 5"),
    help="Also report top-k accuracy.",
)
@_with_ssh_options
@debug_option
def bench(**kw: Any) -> None:
    """Latency (and accuracy with --data and --float) of a .tflite model, here, on a device, or on a fleet."""
    setup_logging(kw["debug"])
    _check_fleet_options(kw)
    _check_insecure(kw)
    if kw["fleet_path"] and kw["rknn_model"]:
        raise click.UsageError("--rknn runs on one Rockchip board: measure it with --host, not --fleet")

    def run() -> int:
        from converter.boards.bench import BenchRequest, run_local, run_remote
        from converter.boards.measure import latency_record
        from converter.devices import load_device

        if kw["device"] and load_device(kw["device"]).runtime == "tensorrt":
            return _bench_tensorrt(kw, load_device(kw["device"]))
        _check_tflite(kw["model"], "--model")
        _input_shapes(kw["model"], "--model")
        if kw["float_model"]:
            _check_tflite(kw["float_model"], "--float")
            _check_pair(kw["model"], kw["float_model"])
        if kw["data"]:
            _check_npz(kw["data"])
        if kw["rknn_model"]:
            _check_rknn(kw["rknn_model"], bool(kw["ssh_host"]))
        if kw["fleet_path"]:
            return _bench_fleet(kw, BenchRequest(
                model=kw["model"], float_model=kw["float_model"], data=kw["data"], preprocess=_bench_preprocess(kw),
                warmup=kw["warmup"], runs=kw["runs"], min_seconds=kw["min_seconds"], max_runs=kw["max_runs"],
                top_k=kw["top_k"],
            ))  # fmt: skip
        name = kw["device"] or ("host" if not kw["ssh_host"] else None)
        profile = load_device(name) if name else _generic_ssh_profile()
        if profile.kind == "ssh" and not kw["ssh_host"]:
            raise UserInputError(f"--device {profile.name} is reached over SSH: add --host user@device")
        if profile.kind != "ssh" and kw["ssh_host"]:
            raise UserInputError(f"--device {profile.name} is a {profile.kind} device; drop --host or pick a device")
        prep = _bench_preprocess(kw)
        if kw["data"]:
            warning = _saturation_warning(kw["model"], kw["data"], prep)
            if warning:
                log.warning("warning: %s", warning)
        request = BenchRequest(
            model=kw["model"],
            float_model=kw["float_model"],
            npu_model=kw["rknn_model"],
            data=kw["data"],
            preprocess=prep,
            threads=kw["threads"] or profile.threads,
            delegate=kw["delegate"] or profile.delegate,
            warmup=kw["warmup"],
            runs=kw["runs"],
            min_seconds=kw["min_seconds"],
            max_runs=kw["max_runs"],
            top_k=kw["top_k"],
            label=profile.name if kw["ssh_host"] else "host",
        )
        if kw["ssh_host"]:
            result = run_remote(request, _bench_target(kw, profile), keep=kw["keep"])
        else:
            result = run_local(request)
        if kw["as_json"]:
            click.echo(json.dumps(result, indent=2))
        else:
            record = latency_record(result, "device" if kw["ssh_host"] else "host")
            lines = _latency_lines(profile.name, record)
            accuracy = _accuracy_line(result.get("accuracy"))
            lines += [accuracy] if accuracy else []
            click.echo("\n".join(lines + _npu_lines(result.get("npu"))))
        return EXIT_OK

    guarded(kw["debug"], run, capture=True)


def _bench_target(kw: dict[str, Any], profile: Any) -> Any:
    """The board ``bench --host`` names, as an ``SSHTarget`` (its ssh options checked as a recipe's are)."""
    from converter.boards.measure import ssh_target
    from converter.recipe import TargetSpec

    options, insecure = _split_options(kw)
    spec = TargetSpec(
        profile.name,
        kw["ssh_host"],
        kw["port"],
        kw["identity"],
        kw["known_hosts"],
        options,
        kw["remote_python"],
        kw["timeout_s"],
    )
    return ssh_target(spec, profile, insecure_options=insecure)


def _bench_tensorrt(kw: dict[str, Any], profile: Any) -> int:
    """A TensorRT device: trtexec builds and times the Q/DQ ONNX model on the board (``boards.trtexec``)."""
    from converter.boards.trtexec import measure

    model: Path = kw["model"]
    made = f"firmware/{profile.name}/model_qdq.onnx (edgeconv convert writes it for a {profile.name} target)"
    if kw["fleet_path"]:
        raise UserInputError(f"--device {profile.name}: TensorRT boards are measured one at a time: use --host")
    if model.suffix.lower() != ".onnx":
        raise UserInputError(f"--model {model}: {profile.name} runs TensorRT, which builds from ONNX: give {made}")
    if not model.is_file():
        raise UserInputError(f"--model {model}: file not found; give {made}")
    if not kw["ssh_host"]:
        raise UserInputError(f"--device {profile.name} is reached over SSH: add --host user@device")
    target = _bench_target(kw, profile)
    program = kw["trtexec"] or profile.tensorrt.trtexec
    result = measure(target, model, program, keep=kw["keep"], version=profile.tensorrt.version)
    click.echo(json.dumps(result, indent=2) if kw["as_json"] else "\n".join(_trtexec_lines(profile.name, result)))
    return EXIT_OK


def _percentiles(latency: dict[str, Any]) -> str:
    """``p50 … p90 … p99 …`` of a trtexec latency record, the ones it printed."""
    return "  ".join(
        f"{q} {ms_text(latency[f'{q}_ms'])}" for q in ("p50", "p90", "p99") if latency.get(f"{q}_ms") is not None
    )


def _trtexec_lines(name: str, result: dict[str, Any]) -> list[str]:
    """trtexec's figures as bench and deploy print them (latency and engine size; accuracy not measured)."""
    return [
        f"{name} ({result['where']}, TensorRT {result.get('tensorrt') or 'version not printed'})",
        f"  int8  {_percentiles(result['latency'])}  (trtexec's timing run: {' '.join(result['command'])})",
        f"  engine {result['engine_bytes']:,} bytes",
        f"  accuracy not measured: {result['accuracy_reason']}",
    ]


def _bench_fleet(kw: dict[str, Any], base: Any) -> int:
    """``bench --fleet``: the model on every board at once; one row per board; exit 0 unless no board measured."""
    import dataclasses

    from converter.boards.bench import run_remote
    from converter.boards.fleet import MEASURED, Board, load_fleet, run_fleet
    from converter.boards.measure import latency_record, ssh_target
    from converter.devices import load_device

    boards = load_fleet(kw["fleet_path"])
    if kw["data"]:
        warning = _saturation_warning(kw["model"], kw["data"], base.preprocess)
        if warning:
            log.warning("warning: %s", warning)

    def measure(board: Board) -> dict[str, Any]:
        profile = load_device(board.device)
        request = dataclasses.replace(
            base,
            threads=kw["threads"] or profile.threads,
            delegate=kw["delegate"] or profile.delegate,
            label=board.name,
        )
        safe, insecure = _split_options(kw)
        target = ssh_target(board.spec(safe, kw["timeout_s"]), profile, name=board.name, insecure_options=insecure)
        return run_remote(request, target, keep=kw["keep"])

    outcomes = run_fleet(boards, measure, _jobs(kw, len(boards)))
    measured = [o for o in outcomes if o.status == MEASURED]
    code = max([EXIT_OK, *(o.exit_code for o in outcomes)])
    if not measured:
        code = EXIT_STEP
    if kw["as_json"]:
        click.echo(
            json.dumps(
                {
                    "boards": [
                        {
                            "name": o.board.name,
                            "device": o.board.device,
                            "host": o.board.host,
                            "port": o.board.port,
                            "status": o.status,
                            "reason": o.reason,
                            "seconds": round(o.seconds, 3),
                            "result": o.value,
                        }
                        for o in outcomes
                    ],
                    "exit_code": code,
                },
                indent=2,
            )
        )
        return code
    rows = []
    for o in outcomes:
        if o.value is not None:
            record = latency_record(o.value, "device")
            rows.append(_board_row(o.board, o.status, record, o.value.get("accuracy")))
        else:
            rows.append(_board_row(o.board, o.status, None, None))
    lines = _fleet_table(rows)
    lines += [f"  {o.board.name}: {o.status}: {o.reason}" for o in outcomes if o.status != MEASURED]
    lines.append(_fleet_verdict(outcomes, code, "bench checks no budgets, so an unreachable board is not a failure"))
    click.echo("\n".join(lines))
    return code


def _fleet_verdict(outcomes: list[Any], code: int, unreachable_rule: str) -> str:
    """The last line of a fleet run: counts, how unreachable boards were judged, and the exit code."""
    from collections import Counter

    counts = Counter(o.status for o in outcomes)
    text = ", ".join(f"{n} {status}" for status, n in counts.items())
    if not counts.get("measured"):
        return f"{text}: no board could be measured; exit {code}"
    why = f" ({unreachable_rule})" if counts.get("unreachable") else ""
    failed = " (a failed board: its error's exit code)" if counts.get("failed") else ""
    return f"{text}{why}; exit {code}{failed}"


@click.command(epilog=BOARD_SETUP)
@recipe_option
@set_option
@out_option
@click.option(
    "--host",
    "ssh_host",
    metavar="USER@HOST",
    callback=_host,
    help="The device to deploy to [the recipe target's host].",
)
@click.option("--device", help="Device profile [the recipe's first SSH target].")
@click.option(
    "--trtexec",
    help="trtexec on a TensorRT board (jetson-*): the program to run there [the profile's, JetPack's "
    "/usr/src/tensorrt/bin/trtexec].",
)
@_with_ssh_options
@debug_option
def deploy(**kw: Any) -> None:
    """Measure a converted recipe's models on a device (or every board of a fleet) and record them in report.json."""
    setup_logging(kw["debug"])
    _check_fleet_options(kw)
    _check_insecure(kw)

    def run() -> int:
        from converter.boards.deploy_recipe import deploy_recipe
        from converter.recipe import load_recipe

        recipe = load_recipe(kw["recipe_path"], list(kw["overrides"]))
        if kw["fleet_path"]:
            return _deploy_fleet(kw, recipe)
        name, record, accuracy, report_path, passed = deploy_recipe(
            recipe,
            kw["out_dir"],
            kw["ssh_host"],
            kw["device"],
            port=kw["port"],
            identity=kw["identity"],
            known_hosts=kw["known_hosts"],
            ssh_options=_split_options(kw)[0],
            python=kw["remote_python"],
            timeout_s=kw["timeout_s"],
            insecure_options=_split_options(kw)[1],
            keep=kw["keep"],
            trtexec=kw["trtexec"],
        )
        if kw["as_json"]:
            click.echo(json.dumps({"latency": record, "accuracy": accuracy}, indent=2))
        else:
            line = _accuracy_line(accuracy)
            lines = (
                _deployed_trtexec_lines(name, record)
                if record.get("engine_bytes") is not None
                else _latency_lines(name, record)
            )
            click.echo("\n".join(lines + ([line] if line else []) + [f"  updated {report_path}"]))
        return EXIT_OK if passed else EXIT_GATE

    guarded(kw["debug"], run, capture=True)


def _deploy_fleet(kw: dict[str, Any], recipe: Any) -> int:
    """``deploy --fleet``: every board measured at once, all recorded in one report.json update.

    Exit code: 1 when a gate failed (an unreachable board fails only when a budget of the recipe needs its
    figure, see ``fleet.unreachable_verdict``), else the worst error of a failed board, else 0; 3 when no
    board could be measured at all.
    """
    from converter.boards.deploy_recipe import deploy_fleet
    from converter.boards.fleet import MEASURED, load_fleet
    from converter.reports.gates import read_report
    from converter.reports.render import gate_line

    boards = load_fleet(kw["fleet_path"])
    done = deploy_fleet(
        recipe,
        kw["out_dir"],
        boards,
        jobs=_jobs(kw, len(boards)),
        ssh_options=_split_options(kw)[0],
        timeout_s=kw["timeout_s"],
        insecure_options=_split_options(kw)[1],
        keep=kw["keep"],
    )
    report = read_report(done.report_path, str(done.report_path))
    code = max([EXIT_OK if done.passed else EXIT_GATE, *(o.exit_code for o in done.outcomes)])
    if not any(o.status == MEASURED for o in done.outcomes):
        code = EXIT_STEP
    if kw["as_json"]:
        names = [o.board.name for o in done.outcomes]
        click.echo(
            json.dumps(
                {
                    "latency": {n: report["latency"].get(n) for n in names},
                    "targets": {n: report["targets"].get(n) for n in names},
                    "gates": report.get("gates"),
                    "exit_code": code,
                },
                indent=2,
            )
        )
        return code
    rows = [
        _board_row(o.board, o.status, report["latency"].get(o.board.name), report["targets"][o.board.name]["accuracy"])
        for o in done.outcomes
    ]
    lines = _fleet_table(rows)
    for o in done.outcomes:
        if o.status != MEASURED:
            lines.append(f"  {o.board.name}: {o.status}: {o.reason} -- {done.verdicts[o.board.name][1]}")
    lines += [f"  {gate_line(g)}" for g in report.get("gates") or [] if g["status"] == "failed"]
    lines.append(f"  updated {done.report_path}")
    rule = "an unreachable board fails the run only when a budget of the recipe needs its figure"
    lines.append(_fleet_verdict(done.outcomes, code, rule) + ("" if done.passed else " (a gate failed)"))
    click.echo("\n".join(lines))
    return code


def _requantizer(report: dict[str, Any], float_tflite: bytes) -> Callable[..., bytes] | None:
    """Re-quantize with the ranges report.json recorded (None for 16x8 and QAT models, which have none)."""
    import functools

    from converter.quantization.tflite_quantizer import quantize_with_ranges

    cal, q = report.get("calibration") or {}, report.get("quantization") or {}
    if cal.get("route") != "edgeconv" or not cal.get("tensors"):
        return None
    ranges = {int(t["index"]): (float(t["range"][0]), float(t["range"][1])) for t in cal["tensors"]}
    return functools.partial(
        quantize_with_ranges,
        float_tflite,
        ranges,
        input_type="float32",  # as convert does: int8 I/O rounding would cap every figure
        output_type="float32",
        per_channel=bool(q.get("per_channel", True)),  # convert's default
    )


@click.command()
@recipe_option
@set_option
@out_option
@click.option(
    "--samples",
    type=Bounded(int, 1, "evaluation samples to compare layer by layer", "e.g. --samples 64"),
    default=64,
    show_default=True,
    help="Evaluation samples to run.",
)
@click.option(
    "--top",
    type=Bounded(int, 1, "layers to print, worst first", "e.g. --top 10 (--json prints every layer)"),
    default=10,
    show_default=True,
    help="Layers to print.",
)
@click.option("--json", "as_json", is_flag=True, help="Print every layer as JSON.")
@debug_option
def analyze(**kw: Any) -> None:
    """Per-layer error of a converted recipe's int8 model against its float reference, worst first."""
    setup_logging(kw["debug"])

    def run() -> int:
        from converter.analysis.analyze import AloneRun, isolate
        from converter.analysis.analyze import analyze as per_layer
        from converter.artifacts import sha256_of, update_outputs
        from converter.calibration.data import check_preprocess, model_inputs, read_samples
        from converter.errors import OutputError
        from converter.recipe import load_recipe
        from converter.reports.gates import read_report
        from converter.reports.report import FLOAT_NAME, INT8_NAME, REPORT_NAME, dumps
        from converter.runtime.model import TFLiteModel

        recipe = load_recipe(kw["recipe_path"], list(kw["overrides"]))
        out = kw["out_dir"] or Path("build") / recipe.name
        read = sha256_of(out / REPORT_NAME)  # before the models: the analysis is recorded only if both still match
        for name in (INT8_NAME, FLOAT_NAME):
            if not (out / name).is_file():
                raise OutputError(f"{out}: no {name}; run edgeconv convert --recipe {recipe.source} first")
        again = f"run edgeconv convert --recipe {recipe.source} again"
        shapes = _input_shapes(out / FLOAT_NAME, str(out), again)
        if _input_shapes(out / INT8_NAME, str(out), again) != shapes:
            raise OutputError(f"{out}: {INT8_NAME} and {FLOAT_NAME} take different inputs; {again}")
        src = recipe.data.evaluation or recipe.data.calibration
        inputs = model_inputs(TFLiteModel(model_path=str(out / FLOAT_NAME), delegate="none"))
        kind = "evaluation" if recipe.data.evaluation else "calibration"
        check_preprocess(recipe.preprocess(), inputs, str(recipe.source))
        x, _ = read_samples(
            src.path, inputs, recipe.preprocess(), where=f"{recipe.source}: data.{kind}", samples=kw["samples"],
            seed=src.seed, layout=recipe.input.layout, reshape=recipe.input.reshape,
        )  # fmt: skip
        float_tflite = (out / FLOAT_NAME).read_bytes()
        report_path = out / REPORT_NAME
        report = read_report(report_path, str(report_path)) if report_path.is_file() else {}
        made_by = (report.get("recipe") or {}).get("name")
        if made_by not in (None, recipe.name):  # convert refuses another recipe's folder too (without --force)
            raise OutputError(
                f"{out}: holds the conversion of recipe '{made_by}', not of {recipe.source} ('{recipe.name}'); "
                f"nothing was written. Analyze it with the recipe that made it, or give --out this recipe's folder"
            )
        q = report.get("quantization") or {}
        if q.get("layer_norm") and (report.get("calibration") or {}).get("route") == "edgeconv":
            from converter.quantization.layer_norm import as_l2_normalization

            float_tflite = as_l2_normalization(float_tflite, x)[0]  # the model convert calibrated, same tensors
        if q.get("equalization") and (report.get("calibration") or {}).get("route") == "edgeconv":
            from converter.calibration.equalize import equalize

            float_tflite = equalize(float_tflite)[0]  # deterministic: the reference convert compared against
        layers = per_layer(float_tflite, (out / INT8_NAME).read_bytes(), x)
        if report:
            requantize = _requantizer(report, float_tflite)
            alone_run = AloneRun(False, "16x8 and QAT models have no ranges of edgeconv's to requantize with")
            if requantize is not None:
                layers, calls = isolate(layers, float_tflite, requantize, x)
                alone_run = AloneRun(True, "edgeconv analyze", calls)
            report["analysis"] = {
                **(report.get("analysis") or {}),
                "samples": len(x),
                "layers": [e.to_json() for e in layers],
                "alone": alone_run.to_json(),
            }
            update_outputs(
                out,
                {REPORT_NAME: dumps(report)},
                where=str(report_path),
                fix=f"Make {out} writable (or copy the folder somewhere writable and analyze it there)",
                again=f"run edgeconv analyze --recipe {recipe.source} again",
                based_on={REPORT_NAME: read},
            )
        if kw["as_json"]:
            click.echo(json.dumps([e.to_json() for e in layers], indent=2))
            return EXIT_OK
        click.echo(
            f"per-layer error on {len(x)} samples, worst first (SQNR lost by the op, its output's SQNR, "
            "model output SQNR with only this op quantized):"
        )
        for e in layers[: kw["top"]]:
            drop = "   n/a" if e.sqnr_drop_db is None else f"{e.sqnr_drop_db:6.1f}"
            alone = "   n/a" if e.alone_sqnr_db is None else f"{e.alone_sqnr_db:6.1f}"
            click.echo(f"  {drop} dB lost  {e.sqnr_db:6.1f} dB  alone {alone} dB  {e.op:18} {layer_label(e.name)}")
        return EXIT_OK

    guarded(kw["debug"], run, capture=True)
