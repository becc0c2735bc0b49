"""E4, continual learning: does width reduce catastrophic forgetting?

Each run trains one network on a stream of T tasks in order, one Keras `fit`
per task with plain SGD (softmax cross-entropy, minibatches reshuffled every
epoch), under one of two regimes:

- budget: `budget_epochs` epochs per task (one, as Mirzadeh et al. 2022), so
  tasks are not trained to high accuracy;
- converge: each task until the running training accuracy of an epoch reaches
  `target_accuracy`, at most `max_epochs` epochs.

Measured after every task on every task's test set: the accuracy matrix R
(R[i, j] = accuracy on task j after training task i), average accuracy (mean of
R's last row), learning accuracy (mean of R's diagonal: how well each task was
learned), average forgetting (for each old task j, max over l in j..T-2 of
R[l, j] minus R[T-1, j], averaged), and the relative change of the empirical NTK
(trace over outputs) on a fixed probe set across each task,
||Theta_end - Theta_start||_F / ||Theta_start||_F: small values mean lazy,
kernel-regime training. The kernel regime predicts that wider networks forget
less; the paper's finding is that this holds only when tasks are trained briefly.
The report's finding is computed from the runs: per regime, the average
forgetting of the narrowest minus that of the widest network (median and range
over the architecture / stream cells) and whether width helps more under the
small budget than when tasks are trained to the target.
"""

from keras_ntk import _tf_quiet  # noqa: F401  (before TensorFlow: its start-up lines stay off the screen)
import dataclasses

import keras
import numpy as np
import tensorflow as tf

import keras_ntk
from keras_ntk import continual
from . import reporting

NAME = "E4"
TITLE = "Continual learning: width and forgetting"
ARCHITECTURES = ("mlp", "wrn")
REGIMES = ("budget", "converge")
HEADS = ("auto", "multi", "single")
DATASETS = ("auto", "fashion_mnist", "mnist", "digits", "cifar10", "cifar100")
DIGITS_TEST_FRACTION = 0.3


@dataclasses.dataclass
class Stream:
    """One benchmark: training and test tasks with coded labels (continual.head_labels)."""

    dataset: str
    train: list
    test: list
    heads: int
    classes_per_head: int
    probe: np.ndarray

    @property
    def outputs(self):
        return self.heads * self.classes_per_head


def _streams(config, architecture):
    return {"mlp": config.mlp_streams, "wrn": config.wrn_streams}[architecture]


def _widths(config, architecture):
    return {"mlp": config.mlp_widths, "wrn": config.wrn_widths}[architecture]


def _check(config):
    for architecture in config.architectures:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architectures must be among {ARCHITECTURES}, got {architecture!r}.")
        for stream in _streams(config, architecture):
            if stream not in keras_ntk.data.STREAMS:
                raise ValueError(f"{architecture}_streams must be among {keras_ntk.data.STREAMS}, got {stream!r}.")
    for regime in config.regimes:
        if regime not in REGIMES:
            raise ValueError(f"regimes must be among {REGIMES}, got {regime!r}.")
    if config.heads not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, got {config.heads!r}.")
    for dataset in (config.mlp_dataset, config.wrn_dataset):
        if dataset not in DATASETS:
            raise ValueError(f"datasets must be among {DATASETS}, got {dataset!r}.")
    if config.tasks < 2:
        raise ValueError(f"tasks must be at least 2 (forgetting needs an old task), got {config.tasks}.")


def points(config):
    """The sweep: one dict per run, in the order they are computed."""
    _check(config)
    return [
        dict(architecture=a, stream=s, parametrization=p, regime=r, width=w, seed=seed)
        for a in config.architectures
        for s in _streams(config, a)
        for p in config.parametrizations
        for r in config.regimes
        for w in _widths(config, a)
        for seed in config.seeds
    ]


def _digits(seed):
    """scikit-learn digits as 8x8 images in [0, 1], split 70/30 by a seeded permutation."""
    x, y = keras_ntk.data.load_sklearn("digits", standardized=False)
    x, y = keras_ntk.data.subset((x / 16.0).reshape(-1, 8, 8, 1), y, len(x), seed=seed)
    test = int(round(DIGITS_TEST_FRACTION * len(x)))
    return (x[test:], y[test:]), (x[:test], y[:test])


def _load_images(name, seed):
    """(name actually used, ((x_train, y_train), (x_test, y_test))), x (N, H, W, C) in [0, 1]."""
    if name == "auto":
        try:
            return "fashion_mnist", keras_ntk.data.load_fashion_mnist(download=False)
        except FileNotFoundError:
            return "digits", _digits(seed)
    if name == "digits":
        return name, _digits(seed)
    return name, getattr(keras_ntk.data, f"load_{name}")()


def _limit(task, size, seed):
    x, y = task
    return keras_ntk.data.subset(x, y, min(size, len(x)), seed=seed)


def _stream(config, kind, dataset):
    used, (train, test) = _load_images(dataset, config.data_seed)
    multi = config.heads == "multi" or (config.heads == "auto" and kind == "split")
    seed = config.data_seed
    if kind == "split":
        train_tasks, test_tasks = keras_ntk.data.task_stream(
            "split", train, test, config.tasks, classes_per_task=config.classes_per_task, remap_labels=multi
        )
        train_tasks = [_limit(t, config.train_examples, seed + i) for i, t in enumerate(train_tasks)]
        test_tasks = [_limit(t, config.test_examples, seed + i) for i, t in enumerate(test_tasks)]
        classes = config.classes_per_task if multi else config.classes_per_task * config.tasks
    else:
        train_tasks, test_tasks = keras_ntk.data.task_stream(
            kind, _limit(train, config.train_examples, seed), _limit(test, config.test_examples, seed),
            config.tasks, seed=seed, rotation_step=config.rotation_step,
        )
        classes = int(train[1].max()) + 1
    code = (lambda t, y: continual.head_labels(y, t, classes)) if multi else (lambda t, y: y)
    mean, std = float(np.mean(train[0])), float(np.std(train[0]))
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    per_task = -(-config.probe_examples // config.tasks)
    return Stream(
        dataset=used,
        train=[(scale(x), code(t, y)) for t, (x, y) in enumerate(train_tasks)],
        test=[(scale(x), code(t, y)) for t, (x, y) in enumerate(test_tasks)],
        heads=config.tasks if multi else 1,
        classes_per_head=classes,
        probe=scale(np.concatenate([x[:per_task] for x, _ in test_tasks])[: config.probe_examples]),
    )


def load_data(config):
    """{(architecture, stream kind): Stream} for every stream the sweep trains on."""
    _check(config)
    dataset = {"mlp": config.mlp_dataset, "wrn": config.wrn_dataset}
    return {
        (a, s): _stream(config, s, dataset[a]) for a in config.architectures for s in _streams(config, a)
    }


_MODELS = {}  # architecture key -> the compiled model every run of that shape reuses


def _model(config, params, stream):
    """A compiled model with freshly drawn weights for `params["seed"]`.

    One model per architecture (type, width, parametrization, outputs) is compiled
    and kept; each run copies into it the weights of a model built from the run's
    seed, so its compiled training step and its compiled NTK are traced once.
    The optimizer is plain SGD, which has no state to carry between runs.
    """
    keras.utils.set_random_seed(params["seed"])
    common = dict(parametrization=params["parametrization"], input_shape=stream.probe.shape[1:])
    if params["architecture"] == "mlp":
        fresh = keras_ntk.models.mlp(params["width"], config.mlp_depth, stream.outputs, **common)
    else:
        fresh = keras_ntk.models.wide_resnet(config.wrn_depth, params["width"], stream.outputs, **common)
    learning_rate = {"standard": config.learning_rate_standard, "ntk": config.learning_rate_ntk}[
        params["parametrization"]
    ]
    key = (params["architecture"], params["width"], params["parametrization"], stream.outputs,
           stream.probe.shape[1:], stream.classes_per_head, learning_rate, config.mlp_depth, config.wrn_depth)
    model = _MODELS.get(key)
    if model is None:
        model = _MODELS[key] = fresh
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate),
            loss=continual.MultiHeadCrossEntropy(stream.classes_per_head),
            metrics=[continual.MultiHeadAccuracy(stream.classes_per_head)],
            steps_per_execution=32,
            jit_compile=False,
        )
    else:
        model.set_weights(fresh.get_weights())
    return model


def compute(config, data, params):
    """Train one network through its stream; the metrics of the module docstring."""
    stream = data[(params["architecture"], params["stream"])]
    model = _model(config, params, stream)
    matrix = continual.AccuracyMatrixCallback(stream.test, stream.classes_per_head)
    kernel = continual.NTKChangeCallback(stream.probe)
    epochs, reached, train_accuracy = [], [], []
    for t, (x, y) in enumerate(stream.train):
        batches = (
            tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=1000 * params["seed"] + t, reshuffle_each_iteration=True)
            .batch(config.batch_size)
        )
        callbacks = [matrix, kernel]
        if params["regime"] == "converge":
            stop = continual.TargetAccuracyStopping(config.target_accuracy)
            callbacks.append(stop)
        history = model.fit(
            batches, epochs=config.max_epochs if params["regime"] == "converge" else config.budget_epochs,
            shuffle=False, verbose=0, callbacks=callbacks,
        )
        epochs.append(len(history.epoch))
        train_accuracy.append(float(history.history["accuracy"][-1]))
        reached.append(bool(train_accuracy[-1] >= config.target_accuracy))
    r = matrix.matrix
    return {
        "accuracy_matrix": r.tolist(),
        "average_accuracy": continual.average_accuracy(r),
        "learning_accuracy": continual.learning_accuracy(r),
        "average_forgetting": continual.average_forgetting(r),
        "forgetting": continual.forgetting(r).tolist(),
        "ntk_changes": kernel.changes,
        "ntk_change": float(np.mean(kernel.changes)),
        "ntk_change_total": kernel.total_change(),
        "epochs": epochs,
        "train_accuracy": train_accuracy,
        "target_reached": reached,
        "dataset": stream.dataset,
        "heads": stream.heads,
        "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
    }


# ---------------------------------------------------------------------------- report

METRICS = ("average_forgetting", "average_accuracy", "learning_accuracy", "ntk_change")


def _summaries(records):
    """{(architecture, stream, parametrization, regime): {width: {metric: (mean, std)}}}."""
    groups = {}
    for record in records:
        p = record["params"]
        key = (p["architecture"], p["stream"], p["parametrization"], p["regime"])
        groups.setdefault(key, {}).setdefault(p["width"], []).append(record["result"])
    return {
        key: {
            width: {
                **{m: (float(np.mean([r[m] for r in runs])), float(np.std([r[m] for r in runs]))) for m in METRICS},
                "epochs": float(np.mean([np.mean(r["epochs"]) for r in runs])),
                "reached": float(np.mean([np.mean(r["target_reached"]) for r in runs])),
            }
            for width, runs in sorted(by_width.items())
        }
        for key, by_width in groups.items()
    }


def _panels(config):
    return [(a, s) for a in config.architectures for s in _streams(config, a)]


def _width_figure(config, summary, rows, directory, stem, title):
    """One column per (architecture, stream), one row per metric; lines per regime x parametrization."""
    plt = reporting.pyplot()
    panels = _panels(config)
    figure, axes = plt.subplots(len(rows), len(panels), figsize=(4.6 * len(panels), 3.4 * len(rows)), squeeze=False)
    styles = {"budget": "o-", "converge": "s--"}
    colors = dict(zip(config.parametrizations, plt.get_cmap("tab10").colors))
    for column, (architecture, stream) in enumerate(panels):
        for row, (metric, label, log) in enumerate(rows):
            ax = axes[row, column]
            for parametrization in config.parametrizations:
                for regime in config.regimes:
                    by_width = summary[(architecture, stream, parametrization, regime)]
                    widths = list(by_width)
                    ax.errorbar(widths, [by_width[w][metric][0] for w in widths],
                                yerr=[by_width[w][metric][1] for w in widths], fmt=styles[regime], capsize=3,
                                color=colors[parametrization], label=f"{regime}, {parametrization}")
            ax.set_xscale("log", base=2)
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("width multiplier" if architecture == "wrn" else "width (units)")
            ax.set_ylabel(label)
            ax.set_title(f"{architecture.upper()}, {stream}")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.02))
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return reporting.save_figure(figure, directory, stem)


def _matrix_figure(config, records, architecture, stream, parametrization, directory):
    """Accuracy matrices of the first seed: rows regimes, columns widths."""
    plt = reporting.pyplot()
    widths, seed = _widths(config, architecture), config.seeds[0]
    chosen = {(p["regime"], p["width"]): record["result"]["accuracy_matrix"]
              for record in records for p in [record["params"]]
              if (p["architecture"], p["stream"], p["parametrization"], p["seed"]) == (architecture, stream, parametrization, seed)}
    figure, axes = plt.subplots(len(config.regimes), len(widths), figsize=(3.0 * len(widths), 2.9 * len(config.regimes)),
                                squeeze=False, layout="constrained")
    for i, regime in enumerate(config.regimes):
        for j, width in enumerate(widths):
            ax, r = axes[i, j], np.array(chosen[(regime, width)])
            image = ax.imshow(r, vmin=0.0, vmax=1.0, cmap="viridis")
            if len(r) <= 10:
                for (row, col), value in np.ndenumerate(r):
                    ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if value < 0.6 else "black")
            ax.set_title(f"{regime}, width {width}", fontsize=9)
            if i == len(config.regimes) - 1:
                ax.set_xlabel("evaluated task")
            if j == 0:
                ax.set_ylabel("after training task")
    figure.colorbar(image, ax=axes, shrink=0.8, label="test accuracy")
    figure.suptitle(f"E4 accuracy matrices: {architecture.upper()}, {stream}, {parametrization}, seed {seed}")
    return reporting.save_figure(figure, directory, f"accuracy_matrices_{architecture}_{stream}_{parametrization}")


def _width_effects(summary):
    """Per regime: [forgetting at the narrowest minus at the widest width] over the cells."""
    effects = {}
    for (_, _, _, regime), by_width in summary.items():
        widths = list(by_width)
        if len(widths) > 1:
            effects.setdefault(regime, []).append(
                by_width[widths[0]]["average_forgetting"][0] - by_width[widths[-1]]["average_forgetting"][0]
            )
    return effects


def _finding(config, summary):
    effects = _width_effects(summary)
    if not effects:
        return "Every cell of the sweep has a single width, so the effect of width is not measured."
    learned = {regime: np.mean([s[w]["learning_accuracy"][0] for key, s in summary.items() if key[3] == regime
                                for w in s]) for regime in config.regimes}
    parts = [
        f"{regime} {100 * np.median(values):+.1f} points (median of {len(values)} architecture/stream "
        f"cells, range {100 * min(values):+.1f} to {100 * max(values):+.1f}; tasks learned to "
        f"{100 * learned[regime]:.1f}% test accuracy on average)"
        for regime, values in effects.items()
    ]
    text = ("Average forgetting of the narrowest minus that of the widest network (positive: the wider "
            "forgets less): " + "; ".join(parts) + ".")
    if {"budget", "converge"} <= set(effects):
        more = np.median(effects["budget"]) > np.median(effects["converge"])
        text += (" Width reduces forgetting more when each task gets a small budget than when it is trained "
                 "to the target accuracy." if more else
                 " Width does not reduce forgetting more under the small budget than when each task is "
                 "trained to the target accuracy.")
    return text


def _sizes(tasks):
    low, high = min(len(x) for x, _ in tasks), max(len(x) for x, _ in tasks)
    return str(low) if low == high else f"{low}-{high}"


def report(config, data, records, directory, env):
    """Write figures and report.md; returns (report path, one-paragraph finding)."""
    summary = _summaries(records)
    figures = directory / "figures"
    key_plot = _width_figure(config, summary, [("average_forgetting", "average forgetting", False),
                                               ("learning_accuracy", "learning accuracy", False)],
                             figures, "forgetting_vs_width", "E4: forgetting vs width, by training regime")
    ntk_plot = _width_figure(config, summary, [("ntk_change", "NTK change per task", True)], figures,
                             "ntk_change_vs_width", "E4: relative change of the empirical NTK across a task")
    matrices = [_matrix_figure(config, records, a, s, p, figures)
                for a, s in _panels(config) for p in config.parametrizations]
    finding = _finding(config, summary)

    data_lines = [
        f"- {a.upper()} on {kind}: {s.dataset}, {len(s.train)} tasks, {_sizes(s.train)} training and "
        f"{_sizes(s.test)} test examples per task, "
        f"{'one head per task' if s.heads > 1 else 'one shared head'} of {s.classes_per_head} classes, "
        f"probe set of {len(s.probe)} test inputs from all tasks"
        for (a, kind), s in data.items()
    ]
    summary_rows = [
        [a, s, p, regime, width] + [f"{v[m][0]:.3f} ± {v[m][1]:.3f}" for m in METRICS] + [v["epochs"], v["reached"]]
        for (a, s, p, regime), by_width in sorted(summary.items()) for width, v in by_width.items()
    ]
    run_rows = [
        [p["architecture"], p["stream"], p["parametrization"], p["regime"], p["width"], p["seed"],
         r["average_forgetting"], r["average_accuracy"], r["learning_accuracy"], r["ntk_change"],
         r["ntk_change_total"], sum(r["epochs"]), r["parameters"], f"{record['seconds']:.1f}"]
        for record in records for p, r in [(record["params"], record["result"])]
    ]
    body = "\n".join([
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        "Data:",
        *data_lines,
        "",
        f"Training: SGD, batch size {config.batch_size}, learning rate {config.learning_rate_standard} "
        f"(standard parametrization) / {config.learning_rate_ntk} (NTK parametrization); MLPs of depth "
        f"{config.mlp_depth}, WRN-{config.wrn_depth}-k; budget = {config.budget_epochs} epoch(s) per task; "
        f"converge = until the epoch's running training accuracy reaches {config.target_accuracy}, at most "
        f"{config.max_epochs} epochs; seeds {list(config.seeds)}.",
        "",
        f"**Finding.** {finding}",
        "",
        f"![forgetting vs width](figures/{key_plot.name})\n",
        f"![NTK change vs width](figures/{ntk_plot.name})\n",
        *[f"![accuracy matrices](figures/{path.name})\n" for path in matrices],
        "## Mean ± std over seeds",
        "",
        reporting.markdown_table(
            ["arch", "stream", "param", "regime", "width", "forgetting", "average accuracy", "learning accuracy",
             "NTK change per task", "epochs per task", "fraction reaching target"],
            summary_rows,
        ),
        "## Every run",
        "",
        reporting.markdown_table(
            ["arch", "stream", "param", "regime", "width", "seed", "forgetting", "average accuracy",
             "learning accuracy", "NTK change per task", "NTK change over the stream", "epochs", "parameters",
             "seconds"],
            run_rows,
        ),
    ])
    return reporting.write_report(directory, f"E4: {TITLE}", body, env), finding
