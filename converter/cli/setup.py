"""``edgeconv setup``: provision the environments of vendor toolkits that cannot share edgeconv's.

Kept out of ``cli`` so that module stays a list of commands; the work is in ``rknn_setup`` and
``onnx_setup`` (both through ``venv_setup``).
"""

from __future__ import annotations

from pathlib import Path

import click

from converter.cli.common import EXIT_OK, debug_option, guarded, setup_logging


@click.group()
def setup() -> None:
    """Set up a vendor toolkit's own environment (once per machine)."""


@setup.command()
@click.option(
    "--venv",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to create it (default: $EDGECONV_RKNN_VENV, else the cache folder's rknn/); convert finds a "
    "folder given here through $EDGECONV_RKNN_VENV.",
)
@click.option(
    "--python", "python", default=None, help="A CPython 3.11 to base it on (default: this one, or python3.11)."
)
@click.option(
    "--torch-index-url",
    default=None,
    help="Index with torch's CPU-only wheel, e.g. https://download.pytorch.org/whl/cpu (default: pip's own settings).",
)
@click.option("--force", is_flag=True, help="Rebuild it even when it is already set up.")
@debug_option
def rknn(venv: Path | None, python: str | None, torch_index_url: str | None, force: bool, debug: bool) -> None:
    """Rockchip rknn-toolkit2 2.5.0 (RKNN targets) in a virtualenv of its own, every package pinned."""
    setup_logging(debug)

    def run() -> int:
        from converter.targets.rknn_setup import provision

        done = provision(venv, python=python, torch_index_url=torch_index_url, force=force)
        state = "created" if done.created else "already set up"
        click.echo(
            f"rknn-toolkit2 {done.toolkit} {state} in {done.venv} ({done.bytes / 1e9:.1f} GB, {done.seconds:.0f} s)"
        )
        return EXIT_OK

    guarded(debug, run)


@setup.command()
@click.option(
    "--venv",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to create it (default: $EDGECONV_ONNX_VENV, else the cache folder's onnx/); convert finds a "
    "folder given here through $EDGECONV_ONNX_VENV.",
)
@click.option(
    "--python", "python", default=None, help="A CPython 3.11 to base it on (default: this one, or python3.11)."
)
@click.option("--force", is_flag=True, help="Rebuild it even when it is already set up.")
@debug_option
def onnx(venv: Path | None, python: str | None, force: bool, debug: bool) -> None:
    """onnx2tf 1.29.24 (ONNX models as sources) in a virtualenv of its own, every package pinned."""
    setup_logging(debug)

    def run() -> int:
        from converter.sources.onnx_setup import provision

        done = provision(venv, python=python, force=force)
        state = "created" if done.created else "already set up"
        click.echo(f"onnx2tf {done.toolkit} {state} in {done.venv} ({done.bytes / 1e9:.1f} GB, {done.seconds:.0f} s)")
        return EXIT_OK

    guarded(debug, run)
