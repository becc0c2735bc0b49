"""E5, distance to the kernel regime, for MLPs, CNNs and WideResNets.

Per run (architecture, parametrization, depth, width, seed), on `examples`
training inputs X with centered one-hot targets Y (N, K):

- init distance  ||Theta_0 - Theta_inf||_F / ||Theta_inf||_F, trace kernels (N, N),
  Theta_inf = keras_ntk.infinite_width_kernel_fn(model), the limit of the same
  model as every hidden width grows (width-dependent in the standard
  parametrization). For WideResNets ("wrn", width = the width multiplier)
  keras_ntk.models.wide_resnet keeps its stem convolution at 16 channels at
  every multiplier, so their distance need not fall to 0 with the multiplier;
- kernel change  ||Theta_T - Theta_0||_F / ||Theta_0||_F after T full-batch
  gradient-descent steps on 1/(2N) sum_i ||f(x_i) - y_i||^2 with learning rate
  step_fraction * 2N / lambda_max, lambda_max the largest eigenvalue of the full
  (N K, N K) NTK at init (step_fraction 1 is the edge of stability of the
  linearized dynamics);
- linearization error  ||f_T - f_lin,T||_F / ||f_T - f_0||_F on test inputs, the
  linearized network trained by the same steps.

In the kernel regime all three fall like width^(-1/2) (log-log slope -1/2), and at
fixed width they grow with depth (MLPs and CNNs: hidden layers `depths`;
WideResNets: depth `wrn_depth`).
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import numpy as np

import keras_ntk
from . import reporting, training
from keras_ntk import diagnostics

NAME = "E5"
TITLE = "Distance to the kernel regime"
METRICS = (
    ("init_distance", "NTK at init vs infinite width", r"$\|\Theta_0-\Theta_\infty\|_F/\|\Theta_\infty\|_F$"),
    ("kernel_change", "NTK change during training", r"$\|\Theta_T-\Theta_0\|_F/\|\Theta_0\|_F$"),
    ("linearization_error", "trained net vs linearized net", r"$\|f_T-f^{lin}_T\|_F/\|f_T-f_0\|_F$"),
)


ARCHITECTURES = ("mlp", "cnn", "wrn")


def _widths(config, architecture):
    return {"mlp": config.mlp_widths, "cnn": config.cnn_widths, "wrn": config.wrn_widths}[architecture]


def _depths(config, architecture):
    return (config.wrn_depth,) if architecture == "wrn" else config.depths


def points(config):
    """The sweep: one dict per run, in the order they are computed."""
    for architecture in config.architectures:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architectures must be among {ARCHITECTURES}, got {architecture!r}.")
    return [
        dict(architecture=a, parametrization=p, depth=d, width=w, seed=s)
        for a in config.architectures
        for p in config.parametrizations
        for d in _depths(config, a)
        for w in _widths(config, a)
        for s in config.seeds
    ]


def load_data(config):
    """(x_train, y_train, x_test) float32: inputs (N, d) and one-hot targets (N, K), centered."""
    if config.dataset in keras_ntk.data.SKLEARN_DATASETS:
        x, y = keras_ntk.data.load_sklearn(config.dataset)
    else:
        (x, y), _ = getattr(keras_ntk.data, f"load_{config.dataset}")()
        x = x.reshape(len(x), -1).astype(np.float32)
        x = (x - x.mean()) / x.std()
    classes = int(y.max()) + 1
    x, y = keras_ntk.data.subset(x, y, config.examples + config.test_examples, seed=config.data_seed)
    targets = keras_ntk.data.regression_targets(y, classes)
    return x[: config.examples], targets[: config.examples], x[config.examples :]


def _image_shape(features):
    side = int(round(np.sqrt(features)))
    if side * side != features:
        raise ValueError(f"CNN runs need square single-channel images; {features} features are not.")
    return (side, side, 1)


def _model_and_inputs(config, params, x_train, x_test, outputs):
    import keras

    keras.utils.set_random_seed(params["seed"])
    common = dict(
        activation=config.activation,
        parametrization=params["parametrization"],
    )
    if params["architecture"] == "mlp":
        model = keras_ntk.models.mlp(
            params["width"], params["depth"], outputs, input_shape=x_train.shape[1:], **common
        )
        return model, x_train, x_test
    shape = _image_shape(x_train.shape[1])
    if params["architecture"] == "wrn":
        model = keras_ntk.models.wide_resnet(
            params["depth"], params["width"], outputs, input_shape=shape, **common
        )
    else:
        model = keras_ntk.models.cnn(
            params["width"], params["depth"], outputs, input_shape=shape, pooling=config.cnn_pooling, **common
        )
    return model, x_train.reshape(-1, *shape), x_test.reshape(-1, *shape)


def compute(config, data, params):
    """The three distances of one run (see the module docstring), JSON-ready."""
    x_train, y_train, x_test = data
    n = len(x_train)
    model, x, x_star = _model_and_inputs(config, params, x_train, x_test, y_train.shape[1])
    full_0 = keras_ntk.empirical_ntk(model, x, output="full").numpy().astype(np.float64)
    theta_0 = np.einsum("nmkk->nm", full_0) / full_0.shape[-1]
    theta_inf = keras_ntk.infinite_width_kernel_fn(model)(x).numpy()
    flat = full_0.transpose(0, 2, 1, 3).reshape(n * full_0.shape[-1], -1)
    lambda_max = float(np.linalg.eigvalsh(flat)[-1])
    learning_rate = config.step_fraction * 2 * n / lambda_max

    f_0 = model(x_star).numpy()
    linearized = keras_ntk.LinearizedModel(model)
    fit = dict(steps=config.steps, example_weight=1.0 / n)
    trained = training.train_full_batch(model, x, y_train, optimizer=training.sgd(learning_rate), **fit)
    trained_lin = training.train_full_batch(
        linearized, x, y_train, optimizer=training.sgd(learning_rate), **fit
    )
    theta_t = keras_ntk.empirical_ntk(model, x, output="trace").numpy()
    f_t, f_lin = model(x_star).numpy(), linearized(x_star).numpy()
    return {
        "init_distance": diagnostics.relative_distance(theta_0, theta_inf),
        "kernel_change": diagnostics.relative_distance(theta_t, theta_0),
        "linearization_error": float(np.linalg.norm(f_t - f_lin) / np.linalg.norm(f_t - f_0)),
        "learning_rate": learning_rate,
        "lambda_max": lambda_max,
        "train_loss": trained["loss"],
        "train_loss_linearized": trained_lin["loss"],
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
    }


def _summaries(config, records):
    """{(architecture, parametrization, depth): {metric: (widths, means, stds)}}."""
    groups = {}
    for record in records:
        p = record["params"]
        key = (p["architecture"], p["parametrization"], p["depth"])
        groups.setdefault(key, {}).setdefault(p["width"], []).append(record["result"])
    summary = {}
    for key, by_width in groups.items():
        widths = sorted(by_width)
        summary[key] = {
            metric: (
                widths,
                [float(np.mean([r[metric] for r in by_width[w]])) for w in widths],
                [float(np.std([r[metric] for r in by_width[w]])) for w in widths],
            )
            for metric, _, _ in METRICS
        }
    return summary


def _figure(config, summary, metric, label, directory):
    plt = reporting.pyplot()
    panels = [(a, p) for a in config.architectures for p in config.parametrizations]
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False)
    for ax, (architecture, parametrization) in zip(axes.flat, panels):
        depths = _depths(config, architecture)
        colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(depths)))
        for color, depth in zip(colors, depths):
            widths, means, stds = summary[(architecture, parametrization, depth)][metric]
            slope = diagnostics.log_log_slope(widths, means) if len(widths) > 1 else float("nan")
            ax.errorbar(widths, means, yerr=stds, marker="o", color=color, capsize=3,
                        label=f"depth {depth} (slope {slope:.2f})")
        w = np.array(widths, float)
        ax.plot(w, means[0] * (w / w[0]) ** -0.5, "k--", lw=1, label=r"width$^{-1/2}$")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width multiplier" if architecture == "wrn" else "width (units or channels)")
        ax.set_ylabel(label)
        ax.set_title(f"{architecture.upper()}, {parametrization} parametrization")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(f"E5: {dict((m, t) for m, t, _ in METRICS)[metric]}")
    figure.tight_layout()
    return reporting.save_figure(figure, directory, metric)


def report(config, data, records, directory, env):
    """Write figures and report.md; returns (report path, one-paragraph summary)."""
    summary = _summaries(config, records)
    figures = {metric: _figure(config, summary, metric, label, directory / "figures")
               for metric, _, label in METRICS}

    slope_rows, depth_rows = [], []
    for (architecture, parametrization, depth), metrics in sorted(summary.items()):
        slope_rows.append(
            [architecture, parametrization, depth]
            + [diagnostics.log_log_slope(w, m) if len(w) > 1 else float("nan")
               for w, m, _ in (metrics[k] for k, _, _ in METRICS)]
        )
    for architecture in (a for a in config.architectures if a != "wrn"):  # WideResNets: one depth
        for parametrization in config.parametrizations:
            by_depth = [summary[(architecture, parametrization, d)]["init_distance"] for d in config.depths]
            for i, width in enumerate(by_depth[0][0]):
                depth_rows.append([architecture, parametrization, width] + [m[1][i] for m in by_depth])

    grows = [row[3:] == sorted(row[3:]) for row in depth_rows]
    init_slopes = [row[3] for row in slope_rows]
    headline = (
        f"Fitted log-log slopes of the NTK's distance at init against width range from "
        f"{min(init_slopes):.2f} to {max(init_slopes):.2f} (median {np.median(init_slopes):.2f}; "
        f"the kernel regime predicts -0.5). At fixed width the distance grows with depth in "
        f"{sum(grows)} of {len(grows)} (architecture, parametrization, width) cells."
    )
    table_rows = []
    for record in records:
        p, r = record["params"], record["result"]
        table_rows.append([p["architecture"], p["parametrization"], p["depth"], p["width"], p["seed"],
                           r["init_distance"], r["kernel_change"], r["linearization_error"],
                           r["train_loss"], r["learning_rate"]])
    body = "\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Data: {config.dataset}, {config.examples} training and {config.test_examples} test inputs; "
        f"{config.activation} activations; CNN pooling {config.cnn_pooling}; {config.steps} gradient "
        f"steps at step fraction {config.step_fraction}; seeds {list(config.seeds)}.",
        "",
        f"**Finding.** {headline}",
        "",
        *[f"![{title}](figures/{figures[m].name})\n" for m, title, _ in METRICS],
        "## Log-log slopes against width (mean over seeds)",
        "",
        reporting.markdown_table(
            ["architecture", "parametrization", "depth", "init distance", "kernel change", "linearization error"],
            slope_rows,
        ),
        "## Distance at init by depth (mean over seeds)",
        "",
        reporting.markdown_table(
            ["architecture", "parametrization", "width"] + [f"depth {d}" for d in config.depths], depth_rows
        ),
        "## Every run",
        "",
        reporting.markdown_table(
            ["arch", "param", "depth", "width", "seed", "init distance", "kernel change",
             "linearization error", "final loss", "learning rate"],
            table_rows,
        ),
    ])
    return reporting.write_report(directory, f"E5: {TITLE}", body, env), headline
