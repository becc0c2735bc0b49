"""E1, finite vs infinite width (Figure 1 of Wenger, Dangel, Kristiadi, arXiv 2310.00137).

1-D regression: `train_points` noisy samples y = g(x) + eps, eps ~ N(0, s^2), of a
wiggly g on [-1, 1] with no data inside `gap`. For each MLP (width, depth,
parametrization, seed) the network f and its linearization around theta_0,
f_lin(x; theta) = f_0(x) + J_0(x) (theta - theta_0), are trained from theta_0 by the
same trust-region Newton-CG method on

    L(theta) = 1/2 sum_i (f(x_i) - y_i)^2 + s^2/2 ||theta - theta_0||^2

until ||grad L|| <= gradient_tolerance ||grad L(theta_0)|| or max_steps steps (each
run reports which, and the final gradient norms). For f_lin, L is a convex
quadratic whose minimizer is the NTK-GP posterior mean with the empirical NTK at
theta_0, m_0(x*) = f_0(x*) + Theta_0(x*, X) (Theta_0(X, X) + s^2 I)^-1 (y - f_0(X)).
The kernel regime (width -> infinity) predicts the trained network to be

    m_inf(x*) = f_0(x*) + Theta_inf(x*, X) (Theta_inf(X, X) + s^2 I)^-1 (y - f_0(X)),

Theta_inf the analytic NTK in the same parametrization. Per run, on the grid and
on the training inputs, with ||.|| the 2-norm over the points of that set:

    net vs kernel regime         ||f_T - m_inf|| / ||m_inf||
    linearized vs kernel regime  ||f_lin,T - m_inf|| / ||m_inf||
    net vs linearized            ||f_T - f_lin,T|| / ||m_inf||

(one denominator, so the three obey the triangle inequality), and the linearized
net's optimization error ||f_lin,T - m_0|| / ||m_inf||. The first is the
disconnect; the second is how far the finite-width kernel Theta_0 is from
Theta_inf in function space; the third is the network's non-linearity. The
figures also show the trained network's linearized-Laplace band (function
space, prior precision 1 and noise s^2: the posterior of the same objective) and
the zero-mean infinite-width NTK-GP (f_0 averaged out over initializations).
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import functools

import numpy as np

import keras_ntk
from . import reporting, training
from keras_ntk import diagnostics

NAME = "E1"
TITLE = "Finite vs infinite width"

DISTANCES = (
    ("net_vs_kernel_regime", "net", "kernel_regime", "net vs kernel regime"),
    ("linearized_vs_kernel_regime", "linearized", "kernel_regime", "linearized vs kernel regime"),
    ("net_vs_linearized", "net", "linearized", "net vs linearized"),
    ("linearized_vs_minimizer", "linearized", "linearized_minimizer", "linearized vs its exact minimizer"),
)
"""(key, curve, reference curve, label) of each distance; all are divided by ||m_inf||."""

DOMAINS = (("grid", "prediction grid"), ("train", "training inputs"))


def points(config):
    """The sweep: one dict per run, in the order they are computed."""
    return [
        dict(parametrization=p, depth=d, width=w, seed=s)
        for p in config.parametrizations
        for d in config.depths
        for w in config.widths
        for s in config.seeds
    ]


def target_function(x):
    """The wiggly regression function g(x) = sin(3 pi x / 2) + 0.5 sin(5 pi x) x."""
    return np.sin(1.5 * np.pi * x) + 0.5 * np.sin(5 * np.pi * x) * x


def load_data(config):
    """(x_train (n, 1), y_train (n, 1), x_grid (grid_points, 1)) float32, by data_seed."""
    low, high = config.gap
    if not -1 < low < high < 1:
        raise ValueError(f"gap must be an interval inside (-1, 1), got {config.gap}.")
    rng = np.random.default_rng(config.data_seed)
    x = rng.uniform(-1, 1 - (high - low), size=config.train_points)
    x = np.where(x >= low, x + (high - low), x)
    y = target_function(x) + config.noise_std * rng.normal(size=x.shape)
    grid = np.linspace(-1.5, 1.5, config.grid_points)
    as_column = functools.partial(np.asarray, dtype=np.float32)
    return as_column(x[:, None]), as_column(y[:, None]), as_column(grid[:, None])


def _kernel(config, params):
    return functools.partial(
        keras_ntk.infinite_width_kernel,
        depth=params["depth"],
        activation=config.activation,
        w_std=config.w_std,
        b_std=config.b_std,
        parametrization=params["parametrization"],
        width=params["width"],
    )


def relative_distances(curves):
    """{key: ||curves[a] - curves[b]|| / ||curves["kernel_regime"]||} for the DISTANCES.

    `curves` maps "net", "linearized", "kernel_regime", "linearized_minimizer" to
    (M,) arrays of predictions on one set of M points.
    """
    scale = np.linalg.norm(curves["kernel_regime"])
    return {
        key: float(np.linalg.norm(np.asarray(curves[a]) - np.asarray(curves[b])) / scale)
        for key, a, b, _ in DISTANCES
    }


def _fit_summary(fit):
    return {**fit, "relative_gradient_norm": fit["gradient_norm"] / fit["initial_gradient_norm"]}


def compute(config, data, params):
    """Train one network and its linearization; their predictions, distances, convergence."""
    import keras

    from keras_ntk.predictive import NTKGP, Laplace

    x, y, grid = data
    noise = config.noise_std**2
    keras.utils.set_random_seed(params["seed"])
    model = keras_ntk.models.mlp(
        params["width"],
        params["depth"],
        1,
        activation=config.activation,
        w_std=config.w_std,
        b_std=config.b_std,
        parametrization=params["parametrization"],
        input_shape=(1,),
    )
    linearized = keras_ntk.LinearizedModel(model)
    initial = linearized.model_at_init
    both = np.concatenate([grid, x])
    kernel_regime = NTKGP(_kernel(config, params), x, y, noise, mean_fn=lambda t: initial(t).numpy())
    curves = {
        "kernel_regime": kernel_regime.predict(both).mean().numpy()[:, 0],
        "linearized_minimizer": NTKGP.empirical(model, x, y, noise).predict(both).mean().numpy()[:, 0],
        "initial": initial(both).numpy()[:, 0],
    }
    fit = dict(
        anchor_penalty=noise,
        tolerance=config.gradient_tolerance,
        max_steps=config.max_steps,
        max_cg_iterations=config.max_cg_iterations,
    )
    fits = {
        "linearized": _fit_summary(training.trust_region_newton(linearized, x, y, **fit)),
        "net": _fit_summary(training.trust_region_newton(model, x, y, **fit)),
    }
    curves["net"] = model(both).numpy()[:, 0]
    curves["linearized"] = linearized(both).numpy()[:, 0]
    laplace = Laplace(
        model, "regression", structure="function_space", prior_precision=1.0, noise_variance=noise
    ).fit((x, y))
    m = len(grid)
    grid_curves = {k: v[:m] for k, v in curves.items()}
    train_curves = {k: v[m:] for k, v in curves.items()}
    return {
        "distances": {"grid": relative_distances(grid_curves), "train": relative_distances(train_curves)},
        "grid": {k: v.tolist() for k, v in grid_curves.items()},
        "train": {k: v.tolist() for k, v in train_curves.items()},
        "laplace_std": laplace.predict(grid).stddev().numpy()[:, 0].tolist(),
        "training": fits,
        "train_rmse": float(np.sqrt(np.mean((train_curves["net"] - y[:, 0]) ** 2))),
    }


def _reference_gp(config, data, parametrization, depth, width):
    """Mean and std on the grid of the zero-mean infinite-width NTK-GP posterior."""
    from keras_ntk.predictive import NTKGP

    x, y, grid = data
    params = dict(parametrization=parametrization, depth=depth, width=width)
    gp = NTKGP(_kernel(config, params), x, y, config.noise_std**2)
    predictive = gp.predict(grid)
    return predictive.mean().numpy()[:, 0], predictive.stddev().numpy()[:, 0]


def _functions_figure(config, data, records, depth, directory):
    plt = reporting.pyplot()
    x, y, grid = data
    g = grid[:, 0]
    rows, cols = len(config.parametrizations), len(config.widths)
    figure, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), sharex=True, sharey=True,
                                squeeze=False)
    seed = config.seeds[0]
    by_key = {(r["params"]["parametrization"], r["params"]["width"], r["params"]["seed"]): r["result"]
              for r in records if r["params"]["depth"] == depth}
    for i, parametrization in enumerate(config.parametrizations):
        for j, width in enumerate(config.widths):
            ax = axes[i, j]
            mean, std = _reference_gp(config, data, parametrization, depth, width)
            ax.fill_between(g, mean - 2 * std, mean + 2 * std, color="0.85", label="NTK-GP (inf. width) ±2σ")
            ax.plot(g, mean, color="0.3", lw=1.2, label="NTK-GP mean")
            result = by_key[(parametrization, width, seed)]
            f = np.array(result["grid"]["net"])
            band = 2 * np.array(result["laplace_std"])
            ax.fill_between(g, f - band, f + band, color="tab:blue", alpha=0.25, label="Laplace ±2σ")
            ax.plot(g, f, color="tab:blue", lw=1.5, label=f"trained net (seed {seed})")
            ax.plot(g, result["grid"]["linearized"], ":", color="tab:green", lw=1.5,
                    label="trained linearized net")
            ax.plot(g, result["grid"]["kernel_regime"], "--", color="tab:orange", lw=1.2,
                    label="kernel regime, same f_0")
            ax.scatter(x[:, 0], y[:, 0], s=5, color="k", zorder=3, label="data")
            ax.axvspan(*config.gap, color="tab:red", alpha=0.06)
            ax.set_ylim(-3, 3)
            ax.set_title(f"width {width}, {parametrization}", fontsize=9)
            if j == 0:
                ax.set_ylabel("f(x)")
            if i == rows - 1:
                ax.set_xlabel("x")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.suptitle(f"E1: trained MLPs (depth {depth}) vs the infinite-width NTK-GP; red: the gap in the data")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    return reporting.save_figure(figure, directory, f"functions_depth{depth}")


def distance_summary(config, records):
    """{(parametrization, depth, domain, key): (widths, means, stds)} over seeds, for
    every distance key of DISTANCES and domain "grid" | "train"."""
    summary = {}
    for parametrization in config.parametrizations:
        for depth in config.depths:
            for domain, _ in DOMAINS:
                for key, *_ in DISTANCES:
                    values = [[r["result"]["distances"][domain][key] for r in records
                               if r["params"]["parametrization"] == parametrization
                               and r["params"]["depth"] == depth and r["params"]["width"] == w]
                              for w in config.widths]
                    summary[(parametrization, depth, domain, key)] = (
                        list(config.widths), [float(np.mean(v)) for v in values],
                        [float(np.std(v)) for v in values],
                    )
    return summary


_COLORS = {"net_vs_kernel_regime": "tab:blue", "linearized_vs_kernel_regime": "tab:green",
           "net_vs_linearized": "tab:purple"}


def _distance_figure(config, summary, directory):
    plt = reporting.pyplot()
    cols = len(config.parametrizations)
    figure, axes = plt.subplots(len(DOMAINS), cols, figsize=(4.6 * cols, 3.4 * len(DOMAINS)), sharex=True,
                                squeeze=False)
    markers = "osD^v"
    for i, (domain, domain_label) in enumerate(DOMAINS):
        for j, parametrization in enumerate(config.parametrizations):
            ax = axes[i, j]
            for d, depth in enumerate(config.depths):
                for key, _, _, label in DISTANCES[:3]:
                    widths, means, stds = summary[(parametrization, depth, domain, key)]
                    ax.errorbar(widths, means, yerr=stds, marker=markers[d % len(markers)], capsize=3,
                                color=_COLORS[key], label=f"{label}, depth {depth}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{parametrization} parametrization, {domain_label}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel(r"$\|a - b\| / \|m_\infty\|$")
            if i == len(DOMAINS) - 1:
                ax.set_xlabel("width")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.suptitle("E1: distances between trained net, trained linearized net and kernel-regime prediction")
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return reporting.save_figure(figure, directory, "distance_vs_width")


def _two_digits(value):
    """Two significant digits without an exponent: 0.0022, 14, 140."""
    return f"{value:.2g}" if value < 100 else f"{value:.0f}"


def _percent_range(values):
    low, high = _two_digits(100 * min(values)), _two_digits(100 * max(values))
    return f"{low}%" if low == high else f"{low}-{high}%"


def _slopes(config, summary, key):
    if len(config.widths) < 2:
        return []
    return [diagnostics.log_log_slope(*summary[(p, d, "grid", key)][:2])
            for p in config.parametrizations for d in config.depths]


def finding(config, records, summary):
    """The report's finding, computed from the runs' distances and convergence."""
    grid = [r["result"]["distances"]["grid"] for r in records]
    fits = [r["result"]["training"] for r in records]
    n = len(records)
    nets = sum(f["net"]["converged"] for f in fits)
    lins = sum(f["linearized"]["converged"] for f in fits)
    means = {key: [m for (_, _, domain, k), (_, ms, _) in summary.items() if domain == "grid" and k == key
                   for m in ms] for key, *_ in DISTANCES}
    nonlinear_dominates = all(a > b for a, b in zip(means["net_vs_linearized"],
                                                    means["linearized_vs_kernel_regime"]))
    slopes = _slopes(config, summary, "linearized_vs_kernel_regime")
    trend = (f" (log-log slopes against width {', '.join(f'{s:.2f}' for s in slopes)}; "
             "the kernel regime has -1/2)" if slopes else "")
    text = (
        f"Trained by the same optimizer, the linearized nets end {_percent_range([g['linearized_vs_minimizer'] for g in grid])} "
        f"from their exact minimizer and {_percent_range([g['linearized_vs_kernel_regime'] for g in grid])} from the "
        f"kernel-regime prediction{trend}; the trained nets stay "
        f"{_percent_range([g['net_vs_kernel_regime'] for g in grid])} from it and "
        f"{_percent_range([g['net_vs_linearized'] for g in grid])} from their own linearization "
        f"(relative L2 on the grid, per run). "
    )
    text += (
        "At every width the network's non-linearity (net vs linearized) is the larger part of the disconnect. "
        if nonlinear_dominates else
        "The network's non-linearity (net vs linearized) is not the larger part of the disconnect at every width. "
    )
    tolerance = f"||grad L|| <= {config.gradient_tolerance:g} ||grad L(theta_0)||"
    if nets == n and lins == n:
        text += (f"All {n} nets and linearized nets reached {tolerance}, so the distances are not "
                 "optimization error.")
    else:
        worst = max(f["net"]["relative_gradient_norm"] for f in fits)
        text += (f"{nets} of {n} nets and {lins} of {n} linearized nets reached {tolerance} within "
                 f"{config.max_steps} steps (the worst net stopped at {worst:.2g} ||grad L(theta_0)||); "
                 "for the others the distances include optimization error.")
    return text


def _percent(value):
    return f"{100 * value:.2f}"


def _mean_std(widths_means_stds, i):
    _, means, stds = widths_means_stds
    return f"{100 * means[i]:.2f} ± {100 * stds[i]:.2f}"


def _convergence(fit):
    flag = "yes" if fit["converged"] else "**no**"
    return f"{flag}, {fit['steps']} steps, {fit['relative_gradient_norm']:.1e}"


def report(config, data, records, directory, env):
    """Write figures and report.md; returns (report path, one-paragraph summary)."""
    figures_dir = directory / "figures"
    function_figures = [_functions_figure(config, data, records, d, figures_dir) for d in config.depths]
    summary = distance_summary(config, records)
    distance_figure = _distance_figure(config, summary, figures_dir)
    headline = finding(config, records, summary)
    width_rows = [
        [p, d, w] + [_mean_std(summary[(p, d, domain, key)], i) for domain, _ in DOMAINS
                     for key, *_ in DISTANCES[:3]]
        for p in config.parametrizations for d in config.depths for i, w in enumerate(config.widths)
    ]
    run_rows = []
    for r in records:
        distances, fits = r["result"]["distances"]["grid"], r["result"]["training"]
        run_rows.append([
            r["params"]["parametrization"], r["params"]["depth"], r["params"]["width"], r["params"]["seed"],
            *[_percent(distances[key]) for key, *_ in DISTANCES],
            _convergence(fits["net"]), _convergence(fits["linearized"]), r["result"]["train_rmse"],
        ])
    labels = [label for _, _, _, label in DISTANCES]
    body = "\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Settings: {config.train_points} points, noise std {config.noise_std}, gap {list(config.gap)}, "
        f"{config.activation} MLPs (w_std {config.w_std:.3g}, b_std {config.b_std:.3g}), trust-region "
        f"Newton-CG until ||grad L|| <= {config.gradient_tolerance:g} ||grad L(theta_0)|| or {config.max_steps} "
        f"steps (at most {config.max_cg_iterations} Hessian-vector products each), seeds {list(config.seeds)}.",
        "",
        f"**Finding.** {headline}",
        "",
        *[f"![functions]({figures_dir.name}/{p.name})\n" for p in function_figures],
        f"![distance]({figures_dir.name}/{distance_figure.name})\n",
        "## Distances per width (%, mean ± std over seeds)",
        "",
        reporting.markdown_table(
            ["parametrization", "depth", "width"]
            + [f"{label}, {domain}" for domain, _ in DOMAINS for label in labels[:3]],
            width_rows,
        ),
        "## Every run (distances in % on the grid; convergence: reached the tolerance, Newton steps, "
        "final ||grad L|| / ||grad L(theta_0)||)",
        "",
        reporting.markdown_table(
            ["parametrization", "depth", "width", "seed", *labels, "net converged", "linearized converged",
             "net train RMSE"],
            run_rows,
        ),
    ])
    return reporting.write_report(directory, f"E1: {TITLE}", body, env), headline
