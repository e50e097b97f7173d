"""Run every benchmark and write ``benchmarks/RESULTS.md`` (what ``make bench`` runs).

    python benchmarks/run_all.py                     # all, default repeats (about 6-8 minutes on 2 cores)
    python benchmarks/run_all.py --only trainer startup --repeats 3
    python benchmarks/run_all.py --quick             # 3 repeats, smaller files: a smoke run (~3 minutes)

Everything runs in a temporary working directory with its own MLflow store, so nothing is written to
the repository except RESULTS.md (``--output`` to write elsewhere). Exit code 0 even when a target is
missed: the table says so; ``--strict`` exits 1 then.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Section, log, machine  # noqa: E402

ORDER = ("startup", "trainer", "run", "inference", "predict", "rawpredict")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these benchmarks")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement (>= 5 for RESULTS.md)")
    parser.add_argument("--threads", type=int, default=None, help="torch/onnxruntime threads (default: all CPUs)")
    parser.add_argument("--quick", action="store_true", help="3 repeats and 20k/200k-row predict files (20k raw rows)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    selected = [name for name in ORDER if not args.only or name in args.only]

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("mlflow", "alembic", "onnxruntime", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    info = machine()
    started = time.perf_counter()
    sections: list[Section] = []
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="trainforge-bench-") as tmp:
        os.chdir(tmp)  # the MLflow store and artifacts of the benchmark runs live here
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
        try:
            for name in selected:
                t0 = time.perf_counter()
                log(f"== {name}")
                try:
                    section = _run_one(name, repeats, args)
                except Exception:  # one broken benchmark must not lose the others' figures
                    section = Section(f"{name}: FAILED")
                    section.add("```", traceback.format_exc().rstrip(), "```")
                    log(traceback.format_exc())
                section.seconds = time.perf_counter() - t0
                sections.append(section)
                log(f"== {name} done in {section.seconds:.0f} s")
        finally:
            os.chdir(cwd)
    info["load average at end (1/5/15 min)"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = render(info, sections, repeats, time.perf_counter() - started, args)
    args.output.write_text(text)
    print(text)
    log(f"wrote {args.output}")
    missed = [c for s in sections for c in s.checks if not c.ok]
    failed = [s for s in sections if s.title.endswith("FAILED")]
    return 1 if failed or (args.strict and missed) else 0


def _run_one(name: str, repeats: int, args: argparse.Namespace) -> Section:
    if name == "startup":
        import bench_startup

        return bench_startup.run(repeats=max(repeats, 7) if not args.quick else repeats)
    if name == "trainer":
        import bench_trainer

        return bench_trainer.run(repeats=3 * repeats, threads=args.threads)  # noisy short fits: more rounds
    if name == "run":
        import bench_run

        return bench_run.run(repeats=repeats)
    if name == "inference":
        import bench_inference

        return bench_inference.run(repeats=repeats, threads=args.threads)
    if name == "rawpredict":
        import bench_rawpredict

        return bench_rawpredict.run(repeats=repeats, rows=20_000 if args.quick else 100_000)
    import bench_predict

    sizes = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    return bench_predict.run(repeats=repeats, sizes=sizes)


def render(info: dict[str, str], sections: list[Section], repeats: int, seconds: float,
           args: argparse.Namespace) -> str:
    command = "python benchmarks/run_all.py " + " ".join(sys.argv[1:] if args is not None else [])
    lines = [
        "# trainforge benchmarks",
        "",
        f"Generated by `{command.strip()}` (`make bench`) in {seconds / 60:.1f} minutes. Every comparison "
        f"ran side by side in this one process run, interleaved, {repeats} repeats unless a section says "
        "otherwise; cells are median (min–max). What each benchmark does: [README.md](README.md).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        "## Targets",
        "",
        "| target | measured (median) | goal | status | notes |",
        "|---|---|---|---|---|",
        *[c.row() for s in sections for c in s.checks],
        "",
    ]
    for s in sections:
        lines.append(s.markdown())
        lines.append(f"_Section time: {s.seconds:.0f} s._")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
