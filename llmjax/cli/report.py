"""`llmjax-report SWEEP_DIR`: the table of a sweep's runs and its plots (PNG, beside it)."""

from __future__ import annotations

from pathlib import Path

from absl import app

from llmjax.cli.app import run as run_app


def main(argv) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: llmjax-report SWEEP_DIR")
    from llmjax.sweep.report import report  # noqa: PLC0415

    text, plots = report(Path(argv[1]).expanduser())
    print(text)
    print("\nplots:\n" + "\n".join(f"  {p}" for p in plots))


def run() -> None:
    run_app(main)


if __name__ == "__main__":
    run()
