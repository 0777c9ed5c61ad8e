"""``edgeconv matrix`` and ``edgeconv report merge``: the CI system's job matrix fans out, edgeconv merges.

The work is in ``matrix`` and ``report_merge``; this module parses options, prints and picks exit codes
(0 ok, 1 a gate failed, 2 bad input). Neither command imports TensorFlow: the plan and merge jobs of a
workflow need only the lean install.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from converter.cli.common import EXIT_GATE, EXIT_OK, debug_option, guarded


@click.command()
@click.argument("recipes", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--targets",
    "targets",
    multiple=True,
    metavar="NAMES",
    help="Only these targets: device profiles or runtimes (litert, tflm, edgetpu, ethos-u, rknn, tensorrt), "
    "comma-separated or repeated [every target of every recipe].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("build"),
    show_default=True,
    help="Parent of the jobs' output folders (<out>/<recipe name>-<group>).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["github", "gitlab"]),
    default="github",
    show_default=True,
    help='github: {"include": [...]} on one line for fromJSON; gitlab: a child pipeline YAML.',
)
@click.option("--image", default="python:3.11", show_default=True, help="--format gitlab: the jobs' image.")
@debug_option
def matrix(
    recipes: tuple[Path, ...], targets: tuple[str, ...], out_dir: Path, fmt: str, image: str, debug: bool
) -> None:
    """Print the CI job list: one job per recipe x target group, with its output folder and cache key.

    A target group is the recipe's targets that share a device runtime (what the job must install),
    SSH boards apart (a runner must reach them). Each job runs
    edgeconv convert --recipe R --out O --set targets=[...].
    """

    def run() -> int:
        from converter.reports.matrix import github_matrix, gitlab_pipeline, plan

        jobs = plan(list(recipes), targets, out_dir)
        if fmt == "github":
            click.echo(github_matrix(jobs))
        else:
            again = ["edgeconv", "matrix", *map(str, recipes), *(f"--targets={t}" for t in targets)]
            again += ["--out", out_dir.as_posix()]
            click.echo(gitlab_pipeline(jobs, again, image), nl=False)
        return EXIT_OK

    guarded(debug, run)


@click.group()
def report() -> None:
    """Work with the reports of many jobs."""


@report.command()
@click.argument("reports", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--matrix",
    "matrix_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The JSON edgeconv matrix printed: every job's report is expected, and one that is absent is listed.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("build"),
    show_default=True,
    help="Where summary.md, junit.xml and index.html go.",
)
@debug_option
def merge(reports: tuple[Path, ...], matrix_path: Path | None, out_dir: Path, debug: bool) -> None:
    """Merge the jobs' report.json files into summary.md, junit.xml and index.html.

    Exit 0 when every gate passed, 1 when a gate failed, 2 for a bad or missing report.
    summary.md is appended to $GITHUB_STEP_SUMMARY when that is set.
    """

    def run() -> int:
        from converter.errors import UserInputError
        from converter.reports.report_merge import SUMMARY_NAME, merge, write

        merged = merge(list(reports), matrix_path, out_dir)
        write(out_dir, merged.files)
        summary = merged.files[SUMMARY_NAME].decode()
        click.echo(summary)
        _step_summary(summary)
        click.echo(f"wrote {', '.join(sorted(merged.files))} to {out_dir}/", err=True)
        if merged.missing:
            names = ", ".join(str(p) for p in merged.missing)
            raise UserInputError(
                f"--matrix {matrix_path}: {len(merged.missing)} job(s) wrote no report: {names}; their jobs failed "
                "before converting (see their logs); the summary lists them"
            )
        return EXIT_GATE if merged.failed_gates else EXIT_OK

    guarded(debug, run)


def _step_summary(text: str) -> None:
    """Append to GitHub's job summary; a summary that cannot be written is a warning, the gates decide."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    try:
        with Path(target).open("a", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError as e:
        click.echo(
            f"warning: GITHUB_STEP_SUMMARY {target}: cannot append the summary to it ({e.strerror or e}); "
            "point the variable at a writable file or unset it",
            err=True,
        )
