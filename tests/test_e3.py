"""E3 (neural contextual bandits): sweep, resumable runs, summaries and report."""

import io
import json

import numpy as np
import pytest

from keras_ntk.experiments import configs, e3_bandits, runner

TINY = dict(datasets="wine", widths="4", seeds="0,1", rounds="20", retrain_every="10", train_steps="5",
            agents="greedy,neural_ucb_diag,neural_ucb_exact,laplace_ucb_last_layer", gamma_grid="0.5,2",
            exact_max_parameters="60", evidence_steps="2")


def test_the_sweep_runs_neural_agents_once_per_exploration_scale_and_rejects_unknown_names():
    config = configs.override(configs.preset("E3", "quick"), TINY)
    points = e3_bandits.points(config)
    scales = {(p["agent"], p["exploration"]) for p in points}
    assert scales == {("greedy", "-"), ("laplace_ucb_last_layer", "-")} | {
        (a, s) for a in ("neural_ucb_diag", "neural_ucb_exact") for s in ("theory", "0.5", "2.0")}
    assert len(points) == 2 * 8
    with pytest.raises(ValueError, match="Unknown agents.*laplace_ucb_kron"):
        e3_bandits.points(configs.override(config, {"agents": "ucb"}))
    with pytest.raises(ValueError, match="Unknown datasets.*covertype"):
        e3_bandits.points(configs.override(config, {"datasets": "iris"}))
    assert configs.preset("E3", "paper").rounds > config.rounds


def test_a_tiny_run_reports_means_standard_errors_and_the_tuned_scale_and_resumes(tmp_path):
    config = configs.override(configs.preset("E3", "quick"), TINY)
    out = io.StringIO()
    report = runner.run_experiment("E3", config, tmp_path, out=out)
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "E3" / "runs").glob("*.json"))]
    assert len(runs) == 16
    skipped = [r for r in runs if "skipped" in r["result"]]
    assert {r["params"]["agent"] for r in skipped} == {"neural_ucb_exact"}  # P = 4 * 39 + 4 + 5 = 165 > 60
    done = [r for r in runs if "skipped" not in r["result"]]
    for r in done:
        curve = np.array(r["result"]["cumulative_regret"])
        assert np.all(np.diff(curve) >= 0) and np.all(np.diff(curve) <= np.diff(r["result"]["rounds"]))
        assert curve[-1] == r["result"]["final_regret"] and r["result"]["rounds"][-1] == 20
        assert len(r["result"]["retrainings"]) == 1
    laplace = [r for r in done if r["params"]["agent"] == "laplace_ucb_last_layer"]
    assert all(r["result"]["retrainings"][0]["noise_variance"] > 0 for r in laplace)
    theory_runs = [r for r in done if r["params"]["exploration"] == "theory"]
    assert all(r["result"]["final_exploration_scale"] > 1e3 for r in theory_runs)

    summaries = e3_bandits._summaries(config, runs)[("wine", 4)]
    finals = {s: [r["result"]["final_regret"] for r in done
                  if r["params"]["agent"] == "neural_ucb_diag" and r["params"]["exploration"] == s]
              for s in ("0.5", "2.0")}
    best = min(finals, key=lambda s: np.mean(finals[s]))
    tuned = summaries["neural_ucb_diag (tuned)"]
    assert tuned["gamma"] == best and tuned["final"] == pytest.approx(np.mean(finals[best]))
    assert tuned["final_error"] == pytest.approx(np.std(finals[best], ddof=1) / np.sqrt(2))

    text = report.read_text()
    assert "**Finding.**" in text and "neural_ucb_diag (tuned)" in text and "P = 165 > exact_max_parameters" in text
    for figure in ("regret_wine", "hyperparameters_wine"):
        assert (tmp_path / "E3" / "figures" / f"{figure}.png").stat().st_size > 0
    assert json.loads((tmp_path / "E3" / "summary.json").read_text())["finding"] in text

    again = io.StringIO()
    runner.run_experiment("E3", config, tmp_path, out=again)
    assert "16 of 16 runs already finished, 0 to go" in again.getvalue()


def test_the_paper_preset_reads_local_files_and_names_the_missing_ones(tmp_path, monkeypatch):
    """No UCI table or MNIST file on the machine and no network: the paper preset's data
    fails naming the file and where to fetch it; a covtype.data put in --data-dir is read."""
    from keras_ntk.data import sources

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(sources, "network_available", lambda *args, **kwargs: False)
    paper = configs.preset("E3", "paper")
    with pytest.raises(FileNotFoundError, match=r"covertype bandit needs the UCI file covtype\.data.*"
                                               r"archive\.ics\.uci\.edu.*covtype\.data\.gz.*gunzip"):
        e3_bandits.load_data(paper)
    with pytest.raises(FileNotFoundError, match=r"MNIST not found.*mnist\.npz"):
        e3_bandits.load_data(configs.override(paper, {"datasets": "mnist"}))

    rows = [[i % 5, (i * 7) % 3, 0.5 * i, 1 + i % 7] for i in range(21)]  # 3 features, label 1..7
    (tmp_path / "covtype.data").write_text("\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    x, y = e3_bandits.load_data(configs.override(paper, {"datasets": "covertype", "data_dir": str(tmp_path)}))[
        "covertype"]
    assert x.shape == (21, 3) and sorted(set(y.tolist())) == list(range(7))
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-6)  # standardized per column
