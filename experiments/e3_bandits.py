"""E3, neural contextual bandits: is NTK-theory exploration useful?

Each dataset becomes a bandit with one arm per class (reward 1 for the true class,
so the regret is exactly the number of misclassified rounds;
`keras_ntk.bandits.environment`). Every agent uses the same reward network (an MLP
on the arm input, width m, `depth` hidden layers), retrains it every
`retrain_every` rounds by `train_steps` full-batch steps on all rounds so far,
and differs only in how it explores:

- greedy: the network's estimate alone;
- NeuralUCB (Zhou et al. 2020) and NeuralTS (Zhang et al. 2021) with Z^-1 diagonal
  (the reference code's approximation) or exact (Sherman-Morrison, small
  networks only), exploration scale gamma_t / nu_t set by NTK theory ("theory")
  or a constant from `gamma_grid`, the best in hindsight per (dataset, width)
  reported as "tuned" (the protocol of both papers' experiments);
- linearized-Laplace UCB (mean + beta std) and Thompson sampling with the
  last-layer, diagonal and K-FAC posteriors, whose prior precision and noise
  variance are tuned by the Laplace evidence at every retraining and which
  condition on every round in between (`keras_ntk.bandits.posterior`).

Greedy, NeuralUCB and NeuralTS change their reward estimate only when they
retrain (as the algorithms prescribe); the Laplace agents also move theirs
between retrainings, by conditioning the linearized network on each round. With
long retraining intervals part of the Laplace agents' advantage is this online
update, not only their uncertainty.

Metric: cumulative regret against rounds (mean and standard error over seeds).
The report's finding is computed from the runs: in how many (dataset, width)
cells the best evidence-tuned Laplace agent ends with less regret than the best
NeuralUCB / NeuralTS with theory-set and with hindsight-tuned exploration, the
median ratios of their final regrets, and the theory scales reached.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import time

import numpy as np
import tensorflow as tf

from keras_ntk import bandits
from keras_ntk.bandits import agents as agents_lib
from . import reporting

NAME = "E3"
TITLE = "Neural contextual bandits: NTK-theory exploration vs evidence-tuned Laplace"
THEORY = "theory"


def points(config):
    """The sweep: one dict per run; NeuralUCB / NeuralTS once per exploration scale."""
    unknown = [a for a in config.agents if a not in agents_lib.RULES]
    if unknown:
        raise ValueError(f"Unknown agents {unknown}; expected names from {', '.join(agents_lib.RULES)}.")
    unknown = [d for d in config.datasets if d not in bandits.datasets.DATASETS]
    if unknown:
        raise ValueError(f"Unknown datasets {unknown}; expected names from {', '.join(bandits.datasets.DATASETS)}.")
    runs = []
    for dataset in config.datasets:
        for width in config.widths:
            for seed in config.seeds:
                for agent in config.agents:
                    scales = [THEORY] + [str(g) for g in config.gamma_grid] if agent in agents_lib.NEURAL else ["-"]
                    runs += [dict(dataset=dataset, width=width, agent=agent, exploration=s, seed=seed) for s in scales]
    return runs


def load_data(config):
    """{dataset name: (x (N, d) float32, y (N,) int64)}."""
    return {name: bandits.datasets.load(name, config.data_dir or None, config.image_pool) for name in config.datasets}


def _theory_constants(config, width):
    return bandits.TheoryConstants(
        width=width, depth=config.depth, rounds=config.rounds, steps=config.train_steps, lam=config.lam,
        nu=config.theory_nu, delta=config.theory_delta, norm_bound=config.theory_norm_bound,
        c1=config.theory_c1, c2=config.theory_c2, c3=config.theory_c3, eta=config.theory_eta or None,
    )


def _exploration(config, params):
    if params["agent"] in agents_lib.LAPLACE:
        return config.laplace_beta
    if params["exploration"] in (THEORY, "-"):
        return 1.0
    return float(params["exploration"])


def _checkpoints(config):
    step = max(1, config.rounds // config.curve_points)
    return sorted(set(range(step, config.rounds + 1, step)) | {config.rounds})


def compute(config, data, params):
    """One agent on one bandit: its regret curve, retraining log and timings."""
    x, y = data[params["dataset"]]
    bandit = bandits.ClassificationBandit(x, y, config.rounds, encoding=config.encoding,
                                          noise_std=config.reward_noise, normalization=config.normalization,
                                          seed=params["seed"])
    model, spec = bandits.network.build_model(
        config.encoding, bandit.context_dim, bandit.arms, params["width"], config.depth,
        parametrization=config.parametrization, activation=config.activation, w_std=config.w_std,
        b_std=config.b_std, seed=params["seed"])
    parameters = bandits.network.parameter_count(model)
    constants = _theory_constants(config, params["width"]) if params["exploration"] == THEORY else None
    rule = agents_lib.RULES[params["agent"]](constants)
    if getattr(rule, "inverse", None) == "exact" and parameters > config.exact_max_parameters:
        return {"skipped": f"P = {parameters} > exact_max_parameters = {config.exact_max_parameters}",
                "parameters": parameters}
    agent = bandits.Agent(
        rule, model, spec, config.rounds, config.retrain_every, steps=config.train_steps,
        learning_rate=config.learning_rate, optimizer=config.optimizer, lam=config.lam,
        exploration=_exploration(config, params), prior_precision=config.prior_precision,
        noise_variance=config.noise_variance, evidence_steps=config.evidence_steps,
        evidence_learning_rate=config.evidence_learning_rate, exact_max_parameters=config.exact_max_parameters,
        seed=params["seed"])
    cpu = time.process_time()
    run = bandits.simulation.run(bandit, agent)
    cpu = time.process_time() - cpu
    cumulative = np.cumsum(run["regret"])
    checkpoints = _checkpoints(config)
    result = {
        "rounds": checkpoints,
        "cumulative_regret": [float(cumulative[t - 1]) for t in checkpoints],
        "final_regret": float(cumulative[-1]),
        "retrainings": [{k: v for k, v in log.items() if isinstance(v, (int, float))} for log in run["retrainings"]],
        "seconds": run["seconds"],
        "cpu_seconds": cpu,
        "parameters": parameters,
        "arms": bandit.arms,
    }
    if constants is not None:
        scale = rule.scale(agent.state, tf.constant(config.rounds))
        result["final_exploration_scale"] = float(scale)
    return result


def _label(agent, exploration):
    if agent in agents_lib.NEURAL:
        return f"{agent} ({'theory' if exploration == THEORY else 'tuned'})"
    return agent


def _stats(values):
    values = np.asarray(values, float)
    error = values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), error


def _summaries(config, records):
    """{(dataset, width): {label: {"curve", "error", "final", "final_error", "gamma", "records"}}}, with the
    tuned NeuralUCB / NeuralTS the grid value of least mean final regret."""
    groups = {}
    for record in records:
        p, r = record["params"], record["result"]
        if "skipped" in r:
            continue
        groups.setdefault((p["dataset"], p["width"]), {}).setdefault((p["agent"], p["exploration"]), []).append(r)
    summaries = {}
    for cell, by_agent in groups.items():
        rows = {}
        for (agent, exploration), results in by_agent.items():
            curve, error = _stats([r["cumulative_regret"] for r in results])
            final, final_error = _stats([[r["final_regret"]] for r in results])
            entry = dict(curve=curve, error=error, final=float(final[0]), final_error=float(final_error[0]),
                         gamma=exploration, results=results)
            label = _label(agent, exploration)
            if label not in rows or entry["final"] < rows[label]["final"]:
                rows[label] = entry
        summaries[cell] = rows
    return summaries


def _order(labels):
    ranking = {name: i for i, name in enumerate(agents_lib.RULES)}
    return sorted(labels, key=lambda label: (ranking[label.split(" ")[0]], label))


def _regret_figure(config, summaries, dataset, directory):
    plt = reporting.pyplot()
    widths = [w for w in config.widths if (dataset, w) in summaries]
    figure, axes = plt.subplots(1, len(widths), figsize=(4.6 * len(widths), 3.8), squeeze=False, sharey=True)
    labels = _order({label for w in widths for label in summaries[(dataset, w)]})
    palette = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    colors = dict(zip(labels, palette))
    rounds = np.array(_checkpoints(config))
    for ax, width in zip(axes[0], widths):
        for label in labels:
            entry = summaries[(dataset, width)].get(label)
            if entry is None:
                continue
            style = "--" if "theory" in label else "-." if label == "greedy" else ":" if "_ts_" in label else "-"
            ax.plot(rounds, entry["curve"], style, color=colors[label], lw=1.4, label=label)
            ax.fill_between(rounds, entry["curve"] - entry["error"], entry["curve"] + entry["error"],
                            color=colors[label], alpha=0.15)
        ax.set_title(f"{dataset}, width {width}")
        ax.set_xlabel("round")
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("cumulative regret (mean ± s.e.)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.tight_layout(rect=(0, 0.16, 1, 1))
    figure.legend(handles, names, loc="lower center", ncol=4, fontsize=7, frameon=False)
    return reporting.save_figure(figure, directory, f"regret_{dataset}")


def _trajectory_figure(config, records, dataset, directory):
    plt = reporting.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    traces = {}
    for record in records:
        p, r = record["params"], record["result"]
        if p["dataset"] != dataset or p["agent"] not in agents_lib.LAPLACE or "skipped" in r:
            continue
        traces.setdefault((p["agent"], p["width"]), []).append(r["retrainings"])
    for (agent, width), runs in sorted(traces.items()):
        rounds = [0] + [log["round"] for log in runs[0]]
        for ax, key in zip(axes, ("prior_precision", "noise_variance")):
            start = np.log(getattr(config, key))
            values = np.exp(np.mean([[start] + [np.log(log[key]) for log in logs] for logs in runs], axis=0))
            ax.plot(rounds, values, marker=".", lw=1, label=f"{agent}, width {width}")
    for ax, title in zip(axes, ("prior precision δ", "noise variance s²")):
        ax.set_yscale("log")
        ax.set_xlabel("round of the retraining")
        ax.set_title(f"{dataset}: evidence-tuned {title} (geometric mean over seeds)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    figure.tight_layout()
    return reporting.save_figure(figure, directory, f"hyperparameters_{dataset}")


def _finding(summaries):
    cells, ratios_theory, ratios_tuned, beats_theory, beats_tuned = [], [], [], 0, 0
    scales = {"neural_ucb": [], "neural_ts": []}
    for cell, rows in sorted(summaries.items()):
        laplace = [rows[l]["final"] for l in rows if l.startswith("laplace")]
        theory_rows = {l: rows[l] for l in rows if l.endswith("(theory)")}
        tuned = [rows[l]["final"] for l in rows if l.endswith("(tuned)")]
        if not (laplace and theory_rows and tuned):
            continue
        best_laplace = min(laplace)
        best_theory = min(r["final"] for r in theory_rows.values())
        cells.append(cell)
        ratios_theory.append(best_theory / max(best_laplace, 1.0))
        ratios_tuned.append(min(tuned) / max(best_laplace, 1.0))
        beats_theory += best_laplace < best_theory
        beats_tuned += best_laplace < min(tuned)
        for label, row in theory_rows.items():
            kind = "neural_ucb" if label.startswith("neural_ucb") else "neural_ts"
            scales[kind] += [r["final_exploration_scale"] for r in row["results"]]
    if not cells:
        return "Not enough agents ran to compare theory-set exploration with the Laplace agents."
    reached = "; ".join(f"{'gamma_T' if kind == 'neural_ucb' else 'nu_T'} {min(v):.3g} to {max(v):.3g}"
                        for kind, v in scales.items() if v)
    return (
        f"Over {len(cells)} (dataset, width) cells the best evidence-tuned Laplace agent ends with less "
        f"cumulative regret than the best NeuralUCB/NeuralTS with NTK-theory exploration in {beats_theory} "
        f"(those end with a median {np.median(ratios_theory):.2f}x the Laplace regret; theory scales at the "
        f"last round: {reached}), and than NeuralUCB/NeuralTS with gamma tuned in hindsight in {beats_tuned} "
        f"(median {np.median(ratios_tuned):.2f}x)."
    )


def report(config, data, records, directory, env):
    """Write figures and report.md; returns (report path, finding)."""
    summaries = _summaries(config, records)
    figures = directory / "figures"
    regret_figures = [_regret_figure(config, summaries, d, figures) for d in config.datasets
                      if any(cell[0] == d for cell in summaries)]
    laplace_ran = any(a in agents_lib.LAPLACE for a in config.agents)
    trajectory_figures = [_trajectory_figure(config, records, d, figures) for d in config.datasets] if laplace_ran else []
    finding = _finding(summaries)
    table = []
    for (dataset, width), rows in sorted(summaries.items()):
        for label in _order(rows):
            entry = rows[label]
            gamma = entry["gamma"] if label.endswith("(tuned)") else ""
            table.append([dataset, width, label, gamma, entry["final"], entry["final_error"],
                          len(entry["results"]), entry["results"][0]["parameters"]])
    skipped = sorted({(r["params"]["dataset"], r["params"]["width"], r["params"]["agent"], r["result"]["skipped"])
                      for r in records if "skipped" in r["result"]})
    cpu = sum(r["result"].get("cpu_seconds", 0.0) for r in records)
    trajectory_rows = []
    for record in records:
        p, r = record["params"], record["result"]
        if p["agent"] in agents_lib.LAPLACE and "skipped" not in r and r["retrainings"]:
            last = r["retrainings"][-1]
            trajectory_rows.append([p["dataset"], p["width"], p["agent"], p["seed"], last["prior_precision"],
                                    last["noise_variance"], last["log_marginal_likelihood"], last["jitter"]])
    body = "\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Settings: {config.rounds} rounds, retraining every {config.retrain_every} rounds with "
        f"{config.train_steps} {config.optimizer} steps at learning rate {config.learning_rate}; "
        f"{config.encoding} arm encoding, {config.parametrization} parametrization, depth {config.depth}, "
        f"lambda {config.lam}, reward noise {config.reward_noise}; gamma grid {list(config.gamma_grid)}; "
        f"Laplace beta {config.laplace_beta}, {config.evidence_steps} evidence steps per retraining; "
        f"seeds {list(config.seeds)}. Total CPU time of the runs: {cpu:.0f} s.",
        "",
        f"**Finding.** {finding}",
        "",
        *[f"![regret]({figures.name}/{path.name})\n" for path in regret_figures],
        *[f"![hyperparameters]({figures.name}/{path.name})\n" for path in trajectory_figures],
        "## Final cumulative regret (mean and standard error over seeds)",
        "",
        "Random play would lose (A - 1) / A per round. 'tuned' rows keep the grid value of least mean regret.",
        "",
        reporting.markdown_table(["dataset", "width", "agent", "tuned gamma", "final regret", "s.e.", "seeds", "P"],
                                 table),
        "## Laplace hyperparameters at the last retraining",
        "",
        reporting.markdown_table(["dataset", "width", "agent", "seed", "prior precision", "noise variance",
                                  "log evidence", "jitter"], trajectory_rows) if trajectory_rows else "(no Laplace agent ran)\n",
        "## Runs not made",
        "",
        "\n".join(f"- {d}, width {w}, {a}: {why}" for d, w, a, why in skipped) or "none",
    ])
    return reporting.write_report(directory, f"E3: {TITLE}", body, env), finding
