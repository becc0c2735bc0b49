"""E1, finite vs infinite width (Figure 1 of Wenger, Dangel and Kristiadi, arXiv 2310.00137).

1-D regression: `train_points` noisy samples y = g(x) + eps, eps ~ N(0, s^2), of a
wiggly g on [-1, 1] with no data inside `gap`. Each MLP (width, depth,
parametrization, seed) is trained by full-batch Adam with a learning rate decaying
to zero (the report lists the final train RMSE and gradient norm) on

    1/2 sum_i (f(x_i) - y_i)^2 + s^2/2 ||theta - theta_0||^2,

whose minimizer for the linearized network is the NTK-GP posterior mean with the
network's own f_0 as prior mean. The kernel regime therefore predicts the trained
network to be
    m_inf(x*) = f_0(x*) + Theta_inf(x*, X) (Theta_inf(X, X) + s^2 I)^-1 (y - f_0(X)),
Theta_inf the analytic NTK in the same parametrization. Per run: the trained
network on a grid, its linearized-Laplace band (function-space, prior precision 1
and noise s^2: the posterior of the same objective) and m_inf; the metric is
||f_T - m_inf|| / ||m_inf|| on the grid. The reference GP in the figures is the
zero-mean infinite-width NTK-GP (f_0 averaged out over initializations).
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import functools

import numpy as np

import keras_ntk
from . import reporting, training
from keras_ntk import diagnostics

NAME = "E1"
TITLE = "Finite vs infinite width"


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


def compute(config, data, params):
    """Train one network; return its grid predictions, band, kernel-regime prediction."""
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
    initial = keras.models.clone_model(model)
    initial.set_weights(model.get_weights())
    kernel_regime = NTKGP(_kernel(config, params), x, y, noise, mean_fn=lambda t: initial(t).numpy())
    m_inf = kernel_regime.predict(grid).mean().numpy()[:, 0]

    fit = training.train_full_batch(
        model,
        x,
        y,
        steps=config.steps,
        optimizer=training.adam_to_convergence(config.learning_rate, config.steps),
        anchor_penalty=noise,
    )
    laplace = Laplace(
        model, "regression", structure="function_space", prior_precision=1.0, noise_variance=noise
    ).fit((x, y))
    predictive = laplace.predict(grid)
    f_t = predictive.mean().numpy()[:, 0]
    return {
        "distance_to_kernel_regime": float(np.linalg.norm(f_t - m_inf) / np.linalg.norm(m_inf)),
        "prediction": f_t.tolist(),
        "laplace_std": predictive.stddev().numpy()[:, 0].tolist(),
        "kernel_regime_prediction": m_inf.tolist(),
        "initial_prediction": initial(grid).numpy()[:, 0].tolist(),
        "initial_train_prediction": initial(x).numpy()[:, 0].tolist(),
        "train_loss": fit["loss"],
        "gradient_norm": fit["gradient_norm"],
        "train_rmse": float(np.sqrt(np.mean((model(x).numpy() - y) ** 2))),
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
            f = np.array(result["prediction"])
            band = 2 * np.array(result["laplace_std"])
            ax.fill_between(g, f - band, f + band, color="tab:blue", alpha=0.25, label="Laplace ±2σ")
            ax.plot(g, f, color="tab:blue", lw=1.5, label=f"trained net (seed {seed})")
            ax.plot(g, result["kernel_regime_prediction"], "--", color="tab:orange", lw=1.2,
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
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    return reporting.save_figure(figure, directory, f"functions_depth{depth}")


def _distance_summary(config, records):
    """{(parametrization, depth): (widths, means, stds)} of distance_to_kernel_regime."""
    summary = {}
    for parametrization in config.parametrizations:
        for depth in config.depths:
            values = [[r["result"]["distance_to_kernel_regime"] for r in records
                       if r["params"]["parametrization"] == parametrization
                       and r["params"]["depth"] == depth and r["params"]["width"] == w]
                      for w in config.widths]
            summary[(parametrization, depth)] = (
                list(config.widths), [float(np.mean(v)) for v in values], [float(np.std(v)) for v in values]
            )
    return summary


def _distance_figure(config, summary, directory):
    plt = reporting.pyplot()
    figure, ax = plt.subplots(figsize=(5.2, 3.8))
    for (parametrization, depth), (widths, means, stds) in summary.items():
        ax.errorbar(widths, means, yerr=stds, marker="o", capsize=3, label=f"{parametrization}, depth {depth}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel(r"$\|f_T - m_\infty\| / \|m_\infty\|$ on the grid")
    ax.set_title("E1: distance of trained nets to the kernel-regime prediction")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return reporting.save_figure(figure, directory, "distance_vs_width")


def report(config, data, records, directory, env):
    """Write figures and report.md; returns (report path, one-paragraph summary)."""
    figures_dir = directory / "figures"
    function_figures = [_functions_figure(config, data, records, d, figures_dir) for d in config.depths]
    summary = _distance_summary(config, records)
    distance_figure = _distance_figure(config, summary, figures_dir)
    rows, slopes = [], []
    for (parametrization, depth), (widths, means, stds) in summary.items():
        slope = diagnostics.log_log_slope(widths, means) if len(widths) > 1 else float("nan")
        slopes.append(slope)
        rows += [[parametrization, depth, w, m, s] for w, m, s in zip(widths, means, stds)]
    widest = max(config.widths)
    at_widest = [means[-1] for _, means, _ in summary.values()]
    headline = (
        f"At width {widest} the trained networks still differ from the kernel-regime prediction by "
        f"{100 * min(at_widest):.0f}-{100 * max(at_widest):.0f}% (relative L2 on the grid). Log-log slopes "
        f"of the distance against width: {', '.join(f'{s:.2f}' for s in slopes)} (in the kernel regime "
        f"it would vanish like width^(-1/2))."
    )
    run_rows = [[r["params"]["parametrization"], r["params"]["depth"], r["params"]["width"], r["params"]["seed"],
                 r["result"]["distance_to_kernel_regime"], r["result"]["train_rmse"], r["result"]["gradient_norm"]]
                for r in records]
    body = "\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Settings: {config.train_points} points, noise std {config.noise_std}, gap {list(config.gap)}, "
        f"{config.activation} MLPs (w_std {config.w_std:.3g}, b_std {config.b_std:.3g}), Adam at {config.learning_rate} with cosine decay over {config.steps} "
        f"full-batch steps, seeds {list(config.seeds)}.",
        "",
        f"**Finding.** {headline}",
        "",
        *[f"![functions]({figures_dir.name}/{p.name})\n" for p in function_figures],
        f"![distance]({figures_dir.name}/{distance_figure.name})\n",
        "## Distance to the kernel-regime prediction (mean and std over seeds)",
        "",
        reporting.markdown_table(["parametrization", "depth", "width", "mean", "std"], rows),
        "## Every run",
        "",
        reporting.markdown_table(
            ["parametrization", "depth", "width", "seed", "distance", "train RMSE", "final gradient norm"],
            run_rows,
        ),
    ])
    return reporting.write_report(directory, f"E1: {TITLE}", body, env), headline
