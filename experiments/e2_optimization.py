"""E2, second-order optimization in the kernel regime, for MLPs and CNNs.

Zhang et al. (2019) prove that natural gradient descent (NGD; Gauss-Newton for
the squared loss) converges at a rate independent of the data's conditioning
when (i) the Gram G = J J^T of the training set at init has lambda_0 =
lambda_min(G) > 0 and (ii) ||J(theta) - J(theta_0)||_2 <= (C/3) sqrt(lambda_0)
on the ball ||theta - theta_0||_2 <= 3 ||y - f(theta_0)|| / sqrt(lambda_0) with
C <= 1/2. Per run (architecture, parametrization, depth, width, seed), on N
training inputs with centered one-hot targets (N, K):

- lambda_min and the condition number of G (N K, N K) at init (float64);
- the empirical stability constant C' = 3 max_t ||J_t - J_0||_2 / sqrt(lambda_0)
  over the iterates of the tuned NGD run inside the ball (||J_t - J_0||_2 by
  Lanczos on Jacobian-vector products);
- the training loss 1/(2N) sum_i ||f(x_i) - y_i||^2 against step and wall-clock
  time of full-batch NGD (damped Gauss-Newton in function space,
  dtheta = -eta J^T (G + lambda I)^-1 r, Levenberg-Marquardt damping), gradient
  descent and Adam, each with the learning rate of its grid that reaches the
  lowest final loss.

The report's finding is computed from the run records: in how many runs each
condition holds, the width from which C' <= 1/2 in every run, and how many runs
each optimizer takes to the loss threshold (steps, seconds) or ends lowest.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import math
import time

import keras
import numpy as np
import tensorflow as tf

import keras_ntk
from keras_ntk import diagnostics
from keras_ntk.optimizers import NaturalGradient
from . import reporting

NAME = "E2"
TITLE = "Second-order optimization in the kernel regime"
OPTIMIZERS = (("ngd", "NGD (Gauss-Newton)"), ("gd", "gradient descent"), ("adam", "Adam"))


def points(config):
    """The sweep: one dict per run, in the order they are computed."""
    widths = {"mlp": config.mlp_widths, "cnn": config.cnn_widths}
    for architecture in config.architectures:
        if architecture not in widths:
            raise ValueError(f"architectures must be 'mlp' or 'cnn', got {architecture!r}.")
    return [
        dict(architecture=a, parametrization=p, depth=d, width=w, seed=s)
        for a in config.architectures
        for p in config.parametrizations
        for d in config.depths
        for w in widths[a]
        for s in config.seeds
    ]


def load_data(config):
    """(x, y): N inputs (N, d) or images (N, H, W, C), float32 standardized, and
    centered one-hot targets (N, K)."""
    if config.dataset in keras_ntk.data.SKLEARN_DATASETS:
        x, labels = keras_ntk.data.load_sklearn(config.dataset)
    elif hasattr(keras_ntk.data, f"load_{config.dataset}"):
        (x, labels), _ = getattr(keras_ntk.data, f"load_{config.dataset}")()
        x = ((x - x.mean()) / x.std()).astype(np.float32)
    else:
        raise ValueError(
            f"Unknown dataset {config.dataset!r}: use one of scikit-learn's "
            f"{', '.join(keras_ntk.data.SKLEARN_DATASETS)} or mnist, fashion_mnist, cifar10."
        )
    if np.issubdtype(labels.dtype, np.floating):
        raise ValueError(f"E2 needs a classification dataset for its one-hot targets; {config.dataset!r} is not.")
    classes = int(labels.max()) + 1
    x, labels = keras_ntk.data.subset(x, labels, config.examples, seed=config.data_seed)
    return x, keras_ntk.data.regression_targets(labels, classes)


def _images(x):
    if x.ndim == 4:
        return x
    side = int(round(math.sqrt(x.shape[1])))
    if side * side != x.shape[1]:
        raise ValueError(f"CNN runs need images or square single-channel inputs; {x.shape[1]} features are not.")
    return x.reshape(-1, side, side, 1)


def _model_and_inputs(config, params, x, outputs):
    keras.utils.set_random_seed(params["seed"])
    common = dict(activation=config.activation, parametrization=params["parametrization"])
    if params["architecture"] == "mlp":
        return keras_ntk.models.mlp(params["width"], params["depth"], outputs,
                                    input_shape=x.shape[1:], **common), x
    x = _images(x)
    model = keras_ntk.models.cnn(params["width"], params["depth"], outputs, input_shape=x.shape[1:],
                                 pooling=config.cnn_pooling, **common)
    return model, x


class _Clock:
    """Cumulative wall-clock and CPU seconds of the timed calls only."""

    def __init__(self):
        self.wall, self.cpu = [0.0], [0.0]

    def time(self, function):
        wall, cpu = time.perf_counter(), time.process_time()
        value = function()
        self.wall.append(self.wall[-1] + time.perf_counter() - wall)
        self.cpu.append(self.cpu[-1] + time.process_time() - cpu)
        return value


def _ngd_curve(ngd, x, y, steps, stability=None):
    """Losses L(theta_t), t = 0..steps, of NGD steps timed one by one (diagnostics untimed)."""
    clock, losses, damping, accepted = _Clock(), [], [], []
    for _ in range(steps):
        result = clock.time(lambda: ngd.step(x, y))
        losses.append(float(result["loss"]))
        damping.append(float(result["damping"]))
        accepted.append(float(result["accepted"]))
        if stability is not None:
            stability.measure()
    losses.append(float(ngd.batch_loss(x, y)) / len(x))
    return dict(loss=losses, seconds=clock.wall, cpu_seconds=clock.cpu, damping=damping, accepted=accepted)


def _first_order_loop(model, x, y, optimizer):
    """Compiled run(count) -> (losses (count,), final loss): `count` full-batch steps of
    `optimizer` on L."""
    variables = model.trainable_variables

    def loss():
        residual = tf.reshape(model(x), (len(x), -1)) - y
        return 0.5 * tf.reduce_mean(tf.reduce_sum(residual**2, axis=1))

    @tf.function
    def run(count):
        losses = tf.TensorArray(tf.float32, size=count)
        for t in tf.range(count):
            with tf.GradientTape() as tape:
                value = loss()
            optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
            losses = losses.write(t, value)
        return losses.stack(), loss()

    run(tf.constant(0))  # trace once, outside the timed calls
    return run


def _first_order_curve(run, steps, calls=30):
    """Losses L(theta_t), t = 0..steps, from about `calls` timed compiled calls; each
    call's time is spread evenly over its steps (they all cost the same)."""
    clock, losses, chunk = _Clock(), [], max(1, -(-steps // calls))
    seconds, cpu_seconds, final = [0.0], [0.0], None
    for start in range(0, steps, chunk):
        count = min(chunk, steps - start)
        values, final = clock.time(lambda: run(tf.constant(count)))
        losses += map(float, values.numpy())
        for record, clocked in ((seconds, clock.wall), (cpu_seconds, clock.cpu)):
            record += list(clocked[-2] + (clocked[-1] - clocked[-2]) * np.arange(1, count + 1) / count)
    return dict(loss=[*losses, float(final)], seconds=seconds, cpu_seconds=cpu_seconds)


def _reset(optimizer, learning_rate):
    """Zero a Keras optimizer's state (iterations, moments) and set its learning rate."""
    for variable in optimizer.variables:
        variable.assign(tf.zeros_like(variable))
    optimizer.learning_rate = learning_rate


def _tuned(curves, grid):
    """The grid's curve with the lowest finite final loss, with the grid's final losses."""
    finals = [c["loss"][-1] for c in curves]
    finite = [i for i, v in enumerate(finals) if math.isfinite(v)]
    best = min(finite, key=lambda i: finals[i]) if finite else 0
    return {**curves[best], "learning_rate": grid[best], "grid": list(grid),
            "grid_final_losses": [v if math.isfinite(v) else None for v in finals]}


def _reached(curve, threshold):
    """(steps, seconds) at which the loss first is <= threshold, or (None, None)."""
    for t, value in enumerate(curve["loss"]):
        if value <= threshold:
            return t, curve["seconds"][t]
    return None, None


def compute(config, data, params):
    """Conditioning at init, C' along the tuned NGD run, and the three training curves."""
    x_data, y = data
    model, x = _model_and_inputs(config, params, x_data, y.shape[1])
    x, y = tf.constant(x), tf.constant(y)
    theta_0 = model.get_weights()
    stability = diagnostics.JacobianStability(model, x.numpy(), y.numpy(), tolerance=config.lanczos_tolerance)
    spectrum = stability.initial
    damping = config.ngd_damping * float(np.trace(stability.gram_0)) / spectrum.size

    # float64 Grams, like the stability diagnostics: one engine (and its one-off checks) per model
    ngd = NaturalGradient(model, damping=damping, min_damping=min(1e-8, damping), gram_dtype="float64")
    ngd.step(x, y)  # trace once, outside the timed steps

    def run_ngd(learning_rate, tracker=None):
        model.set_weights(theta_0)
        ngd.damping.assign(damping)
        ngd.learning_rate.assign(learning_rate)
        return _ngd_curve(ngd, x, y, config.ngd_steps, tracker)

    curves = {"ngd": _tuned([run_ngd(r) for r in config.ngd_learning_rates], config.ngd_learning_rates)}
    run_ngd(curves["ngd"]["learning_rate"], stability)  # the same trajectory, now measured

    n = len(y)
    gd_grid = [f * 2 * n / spectrum.lambda_max for f in config.gd_step_fractions]
    for name, optimizer, grid, steps in (
        ("gd", keras.optimizers.SGD(), gd_grid, config.gd_steps),
        ("adam", keras.optimizers.Adam(), config.adam_learning_rates, config.adam_steps),
    ):
        optimizer.build(model.trainable_variables)
        run = _first_order_loop(model, x, y, optimizer)
        runs = []
        for learning_rate in grid:
            model.set_weights(theta_0)
            _reset(optimizer, learning_rate)
            runs.append(_first_order_curve(run, steps))
        curves[name] = _tuned(runs, grid)
    curves["gd"]["step_fraction"] = config.gd_step_fractions[curves["gd"]["grid"].index(curves["gd"]["learning_rate"])]

    threshold = config.loss_threshold * curves["ngd"]["loss"][0]
    for curve in curves.values():
        curve["steps_to_threshold"], curve["seconds_to_threshold"] = _reached(curve, threshold)
    trajectory = stability.records
    return {
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "lambda_min": spectrum.lambda_min,
        "lambda_max": spectrum.lambda_max,
        "condition_number": spectrum.condition_number,
        "lambda_min_positive": spectrum.positive_definite,
        "initial_damping": damping,
        "residual_norm": stability.residual_norm_0,
        "radius": stability.radius,
        "stability_constant": stability.stability_constant,
        "jacobian_stable": stability.conditions()["jacobian_stable"],
        "trajectory": {
            "parameter_distance": [r.parameter_distance for r in trajectory],
            "inside_ball": [r.inside_ball for r in trajectory],
            "jacobian_distance": [r.jacobian_distance for r in trajectory],
            "ntk_change": [r.ntk_change for r in trajectory],
            "lambda_min": [r.lambda_min for r in trajectory],
        },
        "loss_threshold": threshold,
        "curves": curves,
    }


# -- report -------------------------------------------------------------------------------
def _groups(records):
    """{(architecture, parametrization, depth): {width: [results over seeds]}}."""
    groups = {}
    for record in records:
        p = record["params"]
        key = (p["architecture"], p["parametrization"], p["depth"])
        groups.setdefault(key, {}).setdefault(p["width"], []).append(record["result"])
    return groups


def _panels(config):
    return [(a, p) for a in config.architectures for p in config.parametrizations]


def _by_width_figure(config, groups, metric, label, stem, directory, bound=None):
    plt = reporting.pyplot()
    panels = _panels(config)
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(config.depths)))
    for ax, (architecture, parametrization) in zip(axes.flat, panels):
        for color, depth in zip(colors, config.depths):
            by_width = groups[(architecture, parametrization, depth)]
            widths = sorted(by_width)
            values = [[r[metric] for r in by_width[w]] for w in widths]
            ax.errorbar(widths, [np.mean(v) for v in values], yerr=[np.std(v) for v in values],
                        marker="o", color=color, capsize=3, label=f"depth {depth}")
        if bound is not None:
            ax.axhline(bound, color="k", ls="--", lw=1, label=f"theory: C <= {bound:g}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (units or channels)")
        ax.set_ylabel(label)
        ax.set_title(f"{architecture.upper()}, {parametrization} parametrization")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    figure.tight_layout()
    return reporting.save_figure(figure, directory, stem)


def _training_figure(config, groups, key, directory):
    """Loss vs step (top) and vs wall-clock seconds (bottom), one column per width (first seed)."""
    plt = reporting.pyplot()
    by_width = groups[key]
    widths = sorted(by_width)
    figure, axes = plt.subplots(2, len(widths), figsize=(3.4 * len(widths), 6.2), squeeze=False)
    colors = dict(zip((name for name, _ in OPTIMIZERS), ("C3", "C0", "C2")))
    for column, width in enumerate(widths):
        result = by_width[width][0]
        for name, label in OPTIMIZERS:
            curve = result["curves"][name]
            text = f"{label}, lr {curve['learning_rate']:.3g}"
            axes[0, column].plot(np.arange(len(curve["loss"])), curve["loss"], color=colors[name], label=text)
            axes[1, column].plot(curve["seconds"], curve["loss"], color=colors[name], label=text)
        for row, xlabel in enumerate(("step", "wall-clock seconds (shared CPU)")):
            ax = axes[row, column]
            ax.axhline(result["loss_threshold"], color="k", ls=":", lw=1)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
        axes[0, column].set_title(f"width {width}")
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("training loss")
    architecture, parametrization, depth = key
    figure.suptitle(f"E2: {architecture.upper()}, {parametrization} parametrization, depth {depth} "
                    f"(dotted: {config.loss_threshold:g} x initial loss)")
    figure.tight_layout()
    return reporting.save_figure(figure, directory, f"training_{architecture}_{parametrization}_depth{depth}")


def _median(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else float("nan")


def _stable_from(records):
    """{architecture: the smallest swept width from which C' <= 1/2 in every run of that
    width and every wider one (None: not even at the widest)}, over all depths and
    parametrizations: the width at which the theory's condition (ii) starts to hold here."""
    widths = {}
    for record in records:
        key = (record["params"]["architecture"], record["params"]["width"])
        widths.setdefault(key, []).append(bool(record["result"]["jacobian_stable"]))
    found = {}
    for architecture in dict.fromkeys(a for a, _ in sorted(widths)):
        swept = sorted(w for a, w in widths if a == architecture)
        found[architecture] = None
        for width in reversed(swept):
            if not all(widths[architecture, width]):
                break
            found[architecture] = width
    return found


def _finding(config, records):
    results = [r["result"] for r in records]
    runs = len(results)
    stable = sum(r["jacobian_stable"] for r in results)
    positive = sum(r["lambda_min_positive"] for r in results)
    constants = [r["stability_constant"] for r in results]
    reached = {name: [r["curves"][name]["steps_to_threshold"] for r in results] for name, _ in OPTIMIZERS}
    seconds = {name: [r["curves"][name]["seconds_to_threshold"] for r in results] for name, _ in OPTIMIZERS}
    lowest = {name: sum(min(OPTIMIZERS, key=lambda o: r["curves"][o[0]]["loss"][-1])[0] == name for r in results)
              for name, _ in OPTIMIZERS}
    speed = "; ".join(
        f"{label} in {sum(s is not None for s in reached[name])} (median {_median(reached[name]):.3g} steps, "
        f"{_median(seconds[name]):.3g} s)"
        for name, label in OPTIMIZERS
    )
    from_width = "; ".join(
        f"{architecture} {'at no swept width' if width is None else f'from width {width} up'}"
        for architecture, width in _stable_from(records).items()
    )
    return (
        f"Zhang et al.'s stability condition C' <= 1/2 holds in {stable} of {runs} runs "
        f"(C' from {min(constants):.3g} to {max(constants):.3g}, median {np.median(constants):.3g}; "
        f"in every run {from_width}); "
        f"lambda_min(G) > 0 holds numerically in {positive} of {runs}. "
        f"Runs reaching {config.loss_threshold:g} x the initial loss: {speed}. "
        f"Lowest final loss: NGD in {lowest['ngd']}, GD in {lowest['gd']}, Adam in {lowest['adam']} of {runs} runs "
        f"({config.ngd_steps} NGD steps, {config.gd_steps} GD steps, {config.adam_steps} Adam steps)."
    )


def report(config, data, records, directory, env):
    """Write figures and report.md; returns (report path, one-paragraph finding)."""
    figures_dir = directory / "figures"
    groups = _groups(records)
    lambda_figure = _by_width_figure(config, groups, "lambda_min", r"$\lambda_{min}(J_0 J_0^T)$",
                                     "lambda_min", figures_dir)
    stability_figure = _by_width_figure(config, groups, "stability_constant", r"empirical $C'$",
                                        "stability_constant", figures_dir, bound=diagnostics.STABILITY_BOUND)
    training_figures = [_training_figure(config, groups, key, figures_dir) for key in sorted(groups)]
    finding = _finding(config, records)

    rows = []
    for record in records:
        p, r = record["params"], record["result"]
        curves = r["curves"]
        rows.append([
            p["architecture"], p["parametrization"], p["depth"], p["width"], p["seed"], r["parameters"],
            r["lambda_min"], r["condition_number"], r["stability_constant"],
            sum(r["trajectory"]["inside_ball"]), len(r["trajectory"]["inside_ball"]),
            curves["ngd"]["learning_rate"], curves["gd"]["step_fraction"], curves["adam"]["learning_rate"],
            *(curves[name]["loss"][-1] for name, _ in OPTIMIZERS),
            *("-" if curves[name]["steps_to_threshold"] is None else curves[name]["steps_to_threshold"]
              for name, _ in OPTIMIZERS),
        ])
    body = "\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Data: {config.dataset}, N = {config.examples} training inputs, K = {len(data[1][0])} outputs; "
        f"{config.activation} activations; CNN pooling {config.cnn_pooling}; seeds {list(config.seeds)}. "
        f"NGD: {config.ngd_steps} full-batch steps, initial damping {config.ngd_damping:g} x the mean "
        f"eigenvalue of G, adapted by Levenberg-Marquardt. Learning-rate grids (chosen per run by the "
        f"lowest final loss, values in the table): NGD eta in {list(config.ngd_learning_rates)}; GD "
        f"({config.gd_steps} steps) eta = f x 2N / lambda_max(G) with f in {list(config.gd_step_fractions)}; "
        f"Adam ({config.adam_steps} steps) eta in {list(config.adam_learning_rates)}. Wall-clock times were "
        "measured on the machine named below and include its other load.",
        "",
        f"**Finding.** {finding}",
        "",
        f"![lambda_min](figures/{lambda_figure.name})\n",
        f"![stability constant](figures/{stability_figure.name})\n",
        *[f"![training curves](figures/{f.name})\n" for f in training_figures],
        "## Every run",
        "",
        "C' counts the NGD iterates inside the ball (inside / measured); lr: the chosen learning rate "
        "(GD: its fraction f); steps: to reach the dotted threshold (- = not reached).",
        "",
        reporting.markdown_table(
            ["arch", "param", "depth", "width", "seed", "P", "lambda_min", "cond(G)", "C'", "inside",
             "measured", "NGD lr", "GD f", "Adam lr", "NGD loss", "GD loss", "Adam loss",
             "NGD steps", "GD steps", "Adam steps"],
            rows,
        ),
    ])
    return reporting.write_report(directory, f"E2: {TITLE}", body, env), finding
