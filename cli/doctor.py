"""``trainforge doctor``: print :func:`trainforge.run.doctor.doctor` as one screen or as JSON."""

from __future__ import annotations

import json
from typing import Any

import click


def _lines(r: dict[str, Any]) -> list[str]:
    t, d, o, m, s, p = r["torch"], r["driver"], r["onnxruntime"], r["cuda_majors"], r["mlflow"], r["plugins"]
    gpus = ", ".join(f"cuda:{g['index']} {g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in t["gpus"])
    driver = (f"driver {d['version'] or '?'} (CUDA up to {d['cuda_version'] or '?'}), {d['gpus']} GPU(s)"
              if d["loaded"] else d["error"])
    writable = {True: "writable", False: "NOT writable", None: "writability not checked"}[s["writable"]]
    kinds = ", ".join(f"{n} {k}s" for k, n in p["by_kind"].items())
    plugins = (f"{p['registered']} registered ({kinds})" if p["registered"] is not None
               else f"registry error: {p['error']}")
    lines = [
        f"torch          {t['version']} ({t['build']} build); CUDA available: {'yes' if t['cuda_available'] else 'no'}",
        f"GPUs           {gpus or 'none'}; {driver}",
        f"onnxruntime    {o['distribution']} {o['version']}"
        + (f" (built for CUDA {o['cuda_version']})" if o["cuda_version"] else "")
        + f"; providers: {', '.join(o['providers'])}",
        f"CUDA EP: {o['cuda_ep']}",
        f"CUDA majors    torch {m['torch'] or '-'}, onnxruntime {m['onnxruntime'] or '-'}, driver {m['driver'] or '-'}: "
        f"{m['note']}",
        f"MLflow store   {s['tracking_uri']}: {writable} ({s['detail']})",
        f"plugins        {plugins}; entry points: {p['entry_points']}, broken: {p['broken']}",
    ]
    lines += [f"  broken       {b['name']} ({b['distribution'] or '?'}): {b['error']}" for b in p["broken_list"]]
    sm = r["system_metrics"]
    lines.append("system metrics psutil " + ("yes" if sm["psutil"] else "no") + ", nvidia-ml-py "
                 + ("yes" if sm["nvidia-ml-py"] else "no (no GPU metrics; pip install 'trainforge[gpu]')"))
    lines.append("runs on        " + "; ".join(f"{k}: {v}" for k, v in r["runs_on"].items()))
    lines += [f"MISSING        {item}" for item in r["missing"]]
    return lines


@click.command(epilog="""\b
Examples:
  trainforge doctor
  trainforge doctor --json
  trainforge doctor --require-gpu     # exit 1 unless torch and onnxruntime can both use a GPU""")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--require-gpu", is_flag=True, help="Exit 1 unless torch trains on a GPU and the CUDA EP loads.")
@click.option("--tracking-uri", help="MLflow tracking URI to check (default: $MLFLOW_TRACKING_URI, else "
                                     "sqlite:///mlruns/mlflow.db)")
def doctor(as_json: bool, require_gpu: bool, tracking_uri: str | None) -> None:
    """Say what will run where: torch and its CUDA, GPUs and driver, onnxruntime's providers, MLflow, plugins."""
    from trainforge.run.doctor import doctor as run_doctor

    report = run_doctor(tracking_uri=tracking_uri, require_gpu=require_gpu)
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        for line in _lines(report):
            click.echo(line)
    if report["missing"]:
        click.echo(f"Error: --require-gpu: {'; '.join(report['missing'])}", err=True)
        raise SystemExit(1)
