"""Multi-objective ``trainforge tune``: measured onnxruntime latency, int8 as a search dimension, the Pareto
front and ``--select``. Real trials (iris, a few epochs), the real journal storage and MLflow store; the
Optuna side is read with Optuna's API, the MLflow side with ``MlflowClient``, the shipped files with
onnx/onnxruntime and ``trainforge predict``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pandas as pd
import pytest
import yaml
from conftest import error_line, last_json, mlflow_client
from optuna.trial import TrialState

import trainforge
from trainforge import ConfigError, TrainforgeError
from trainforge.tuning import selection

JOURNAL = Path("mlruns") / "optuna" / "journal.log"
QUICK = ("--model", "mlp", "--dataset", "iris", "--epochs", "3", "--quiet")


def load(root: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(root / JOURNAL)))
    return optuna.load_study(study_name=name, storage=storage)


def dominated(a: list[float], b: list[float], signs: list[float]) -> bool:
    """``a`` is dominated by ``b`` (signs: +1 maximise, -1 minimise)."""
    better_or_equal = all(s * y >= s * x for x, y, s in zip(a, b, signs, strict=True))
    return better_or_equal and any(s * y > s * x for x, y, s in zip(a, b, signs, strict=True))


def test_two_objective_study_front_select_resume_and_export(cli, workdir):
    out = last_json(cli("tune", *QUICK, "--objective", "val_accuracy", "--objective", "latency_ms",
                        "--study", "mo", "--n-trials", "3", "--seed", "1", "--json").output)
    study = load(workdir, "mo")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    client = mlflow_client(workdir)
    for t in trials:  # every value is the figure logged on the trial's child run; no pruning reports
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert t.intermediate_values == {}
        assert t.values[1] == pytest.approx(run.data.metrics["latency_ms_p50"]) and t.values[1] > 0
        assert run.data.metrics["latency_ms_p90"] >= run.data.metrics["latency_ms_p50"]
        assert run.data.metrics["model_bytes"] > 1000 and run.data.metrics["params"] > 0
        assert t.values[0] == pytest.approx(max(m.value for m in client.get_metric_history(run.info.run_id,
                                                                                           "val_accuracy")))
        assert run.data.tags["trainforge.trial_state"] == "COMPLETE" and run.data.tags["trainforge.quantize"] == "none"

    # the front, recomputed here from the trials' values
    signs = [1.0, -1.0]
    front = {t.number for t in trials if not any(dominated(t.values, o.values, signs) for o in trials)}
    assert {p["trial"] for p in out["pareto"]} == front
    by_number = {t.number: t for t in trials}
    for p in out["pareto"]:
        assert p["values"] == {"val_accuracy": by_number[p["trial"]].values[0],
                               "latency_ms": by_number[p["trial"]].values[1]}
        assert p["run_id"] == by_number[p["trial"]].user_attrs["mlflow_run_id"]
    top = max(by_number[n].values[0] for n in front)  # default choice: best first objective on the front
    assert out["selected"] == min((n for n in front if by_number[n].values[0] == top),
                                  key=lambda n: (by_number[n].values[1], n))
    for key in ("study", "best_value", "best_params", "parent_run_id", "onnx_path", "model_version"):
        assert key in out
    parent = client.get_run(out["parent_run_id"])
    csv = pd.read_csv(client.download_artifacts(parent.info.run_id, "pareto.csv"))
    assert set(csv["trial"]) == front and {"val_accuracy", "latency_ms", "run_id"} <= set(csv.columns)
    assert any(a.path == "plots/pareto_front.png" for a in client.list_artifacts(parent.info.run_id, "plots"))
    version = client.get_model_version("mo", out["model_version"])
    chosen = by_number[out["selected"]]
    assert float(version.tags["trainforge.objective.latency_ms"]) == pytest.approx(chosen.values[1], rel=1e-5)
    assert version.tags["trainforge.trial"] == str(chosen.number)

    # resume: one more trial in the same study and parent run; a constraint no front point meets is one
    # error line that lists the front, after the study is logged and its parent run ended
    result = cli("tune", "--study", "mo", "--n-trials", "1", "--quiet", "--select", "latency_ms<=0.000001", ok=False)
    line = error_line(result)
    study = load(workdir, "mo")
    assert len(study.trials) == 4 and study.trials[3].state == TrialState.COMPLETE
    assert study.user_attrs["mlflow_parent_run_id"] == out["parent_run_id"]
    assert "latency_ms<=1e-06" in line
    for t in study.best_trials:
        assert f"#{t.number} val_accuracy=" in line
    assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"
    assert client.get_run(study.trials[3].user_attrs["mlflow_run_id"]).data.tags["trainforge.trial_state"] == "COMPLETE"

    # without --trial, export takes the selected trial (the failed --select above chose none); with --trial
    # any front member goes through the gate
    cli("export", "--study", "mo", "--output", "selected.onnx")
    assert trainforge.exporting.exporter.read_metadata("selected.onnx")["mlflow_run_id"] == \
        by_number[out["selected"]].user_attrs["mlflow_run_id"]
    member = max(study.best_trials, key=lambda t: t.number)
    cli("export", "--study", "mo", "--trial", str(member.number), "--output", "member.onnx")
    assert trainforge.exporting.exporter.read_metadata("member.onnx")["mlflow_run_id"] == \
        member.user_attrs["mlflow_run_id"]


def test_quantized_trial_is_scored_and_shipped_as_int8(cli, workdir):
    Path("q.yaml").write_text(yaml.safe_dump({"search_space": {"export.quantize": {"choices": ["int8"]}}}))
    out = last_json(cli("tune", *QUICK, "--config", "q.yaml", "--search-quantization", "--objective",
                        "val_accuracy", "--objective", "val_loss", "--study", "q", "--n-trials", "1", "--seed", "0", "--json").output)
    (trial,) = load(workdir, "q").get_trials()
    assert trial.params["export.quantize"] == "int8" and out["selected"] == trial.number
    client = mlflow_client(workdir)
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["trainforge.quantize"] == "int8"

    # the shipped file is the int8 one
    shipped = out["onnx_path"]
    proto = onnx.load(shipped)
    assert "trainforge.quantization" in {p.key for p in proto.metadata_props}
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer) >= 2
    assert run.data.metrics["model_bytes"] == pytest.approx(Path(shipped).stat().st_size, rel=0.01)

    # the trial's objectives are that int8 file's validation accuracy and loss, measured here
    cli("data", "--run", run.info.run_id, "--split", "val", "--output", "val.csv")
    scored = last_json(cli("predict", shipped, "--input", "val.csv", "--target", "target", "--output", "p.csv",
                           "--json").output)
    assert trial.values[0] == pytest.approx(scored["metrics"]["accuracy"])
    frame = pd.read_csv("val.csv")
    x = frame.drop(columns=["target"]).to_numpy(np.float32)
    classes = trainforge.exporting.exporter.read_metadata(shipped)["class_names"]
    y = np.array([classes.index(str(v)) for v in frame["target"]])
    logits = ort.InferenceSession(shipped, providers=["CPUExecutionProvider"]).run(["logits"], {"input": x})[0]
    shifted = logits - logits.max(1, keepdims=True)
    loss = float(np.mean(np.log(np.exp(shifted).sum(1)) - shifted[np.arange(len(y)), y]))
    assert trial.values[1] == pytest.approx(loss, rel=1e-5)
    assert run.data.metrics["int8_val_loss"] == pytest.approx(loss, rel=1e-5)
    fp32_loss = trial.user_attrs["val_loss"]  # the trainer's, at the best epoch (seed 0: 0.1% away)
    assert abs(fp32_loss - loss) > 1e-4 * loss, "int8 and fp32 agree too closely here to tell them apart"


def _study(values: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="s")
    for v in values:
        study.add_trial(optuna.trial.create_trial(values=v, params={}, distributions={}))
    return study


def test_select_rules_on_a_known_front():
    # a front of 4 points and one dominated point (#4): accuracy up, latency up
    study = _study([[0.90, 1.0], [0.95, 2.0], [0.97, 8.0], [0.99, 10.0], [0.90, 5.0]])
    names = ["val_accuracy", "latency_ms"]
    assert [t.number for t in selection.front(study)] == [3, 2, 1, 0]
    assert selection.choose(study, names, selection.parse_select(None, names)).number == 3
    assert selection.choose(study, names, selection.parse_select("latency_ms<=5", names)).number == 1
    assert selection.choose(study, names, selection.parse_select("latency_ms<5,val_accuracy>=0.95", names)).number == 1
    # Das's knee: normalised over the front, (0.95, 2.0) -> x = (0.99-0.95)/0.09 = 0.44, y = 1/9 = 0.11: the
    # farthest below the line x + y = 1 between the extreme points
    assert selection.choose(study, names, selection.parse_select("knee", names)).number == 1
    with pytest.raises(TrainforgeError, match=r"no Pareto-front trial .* meets latency_ms<0.5; the front: #3"):
        selection.choose(study, names, selection.parse_select("latency_ms<0.5", names))
    for bad in ("latency<=1", "latency_ms=<1", "knee,latency_ms<1"):
        with pytest.raises(ConfigError):
            selection.parse_select(bad, names)
    with pytest.raises(ConfigError, match="exactly two objectives"):
        selection.parse_select("knee", ["a", "b", "c"])


@pytest.mark.parametrize("args, message", [
    (("--objective", "val_accuracy", "--objective", "speed"), "unknown objective 'speed'"),
    (("--objective", "val_accuracy", "--objective", "latency_ms", "--pruner", "median"), "pruning needs a single"),
    (("--objective", "val_accuracy", "--select", "knee"), "--select picks from a Pareto front"),
    (("--objective", "val_accuracy", "--objective", "latency_ms:fast"), "must be max or min"),
    (("--objective", "val_accuracy", "--objective", "latency_ms", "--select", "bytes<1"), "not an objective"),
    (("--objective", "val_accuracy", "--objective", "latency_ms", "--provider", "cuda"), "CUDA"),
    (("--latency-batch", "64",), "nothing is timed"),
    (("--objective", "latency_ms", "--pruner", "hyperband"), "pruning needs a single objective that is"),
])
def test_bad_objective_settings_are_one_error_line_before_any_trial(cli, args, message):
    assert message in error_line(cli("tune", *QUICK, "--n-trials", "1", *args, ok=False))
    assert not JOURNAL.exists() or "trial" not in JOURNAL.read_text()
