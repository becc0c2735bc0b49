"""The `keras-ntk` command."""

import argparse
import sys


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def demo(widths, depths, seeds, examples, out=sys.stdout, wrn_widths=(), wrn_examples=16):
    """Distance of the empirical NTK at init to the infinite-width NTK, by width and depth.

    MLPs in NTK parametrization on `examples` standardized inputs of scikit-learn's
    bundled diabetes data; the distance is ||Theta_emp - Theta_inf||_F / ||Theta_inf||_F
    of the trace kernels (N, N), averaged over `seeds` initializations. Prints a
    table and the log-log slope per depth (about -1/2 in the kernel regime).
    Then, for each width multiplier in `wrn_widths`, the same distance for a
    WideResNet-10 (keras_ntk.models.wide_resnet, LayerNorm, ReLU) on
    `wrn_examples` standardized 8x8 digit images of scikit-learn, its limit from
    keras_ntk.infinite_width_kernel_fn; the WideResNet's stem keeps 16 channels at
    every multiplier, so its distance does not vanish as the multiplier grows.

    Returns {depth: [mean distance per width]}, and "wrn": [mean distance per
    multiplier] when `wrn_widths` is not empty.
    """
    import keras
    import numpy as np
    from sklearn.datasets import load_diabetes, load_digits

    import keras_ntk
    from keras_ntk import diagnostics

    x = load_diabetes().data[:examples]
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    print(
        f"Empirical vs infinite-width NTK at init: MLP (NTK parametrization, ReLU), "
        f"{examples} diabetes inputs, mean over {seeds} seeds.",
        file=out,
    )
    print(f"{'width':>8} " + " ".join(f"{'depth ' + str(d):>12}" for d in depths), file=out)
    distances = {depth: [] for depth in depths}
    for width in widths:
        for depth in depths:
            analytic = keras_ntk.infinite_width_kernel(x, depth=depth).numpy()
            per_seed = []
            for seed in range(seeds):
                keras.utils.set_random_seed(seed)
                model = keras_ntk.models.mlp(width, depth, 1, input_shape=x.shape[1:])
                kernel = keras_ntk.empirical_ntk(model, x, output="trace").numpy()
                per_seed.append(diagnostics.relative_distance(kernel, analytic))
            distances[depth].append(float(np.mean(per_seed)))
        row = " ".join(f"{distances[d][-1]:>12.4f}" for d in depths)
        print(f"{width:>8} {row}", file=out, flush=True)
    if len(widths) > 1:
        slopes = " ".join(f"{diagnostics.log_log_slope(widths, distances[d]):>12.2f}" for d in depths)
        print(f"{'slope':>8} {slopes}   (log-log in width; -0.5 expected)", file=out)
    if wrn_widths:
        images = load_digits().data[:wrn_examples]
        images = ((images - images.mean()) / images.std()).reshape(-1, 8, 8, 1).astype(np.float32)
        print(
            f"\nWideResNet-10 (LayerNorm, ReLU, NTK parametrization) vs its infinite-width limit, "
            f"{wrn_examples} 8x8 digit images, mean over {seeds} seeds (its stem stays at 16 "
            "channels, so the distance does not vanish):",
            file=out,
        )
        print(f"{'multiplier':>10} {'distance':>12}", file=out)
        distances["wrn"] = []
        for multiplier in wrn_widths:
            per_seed = []
            for seed in range(seeds):
                keras.utils.set_random_seed(seed)
                model = keras_ntk.models.wide_resnet(10, multiplier, 1, input_shape=(8, 8, 1))
                limit = keras_ntk.infinite_width_kernel_fn(model)(images).numpy()
                kernel = keras_ntk.empirical_ntk(model, images, output="trace").numpy()
                per_seed.append(diagnostics.relative_distance(kernel, limit))
            distances["wrn"].append(float(np.mean(per_seed)))
            print(f"{multiplier:>10} {distances['wrn'][-1]:>12.4f}", file=out, flush=True)
    return distances


def _run_demo(args):
    demo(args.widths, args.depths, args.seeds, args.examples, wrn_widths=args.wrn_widths)


def _parser():
    from keras_ntk.experiments import cli as experiments_cli
    from keras_ntk.serving import cli as serving_cli

    parser = argparse.ArgumentParser(prog="keras-ntk", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="empirical vs infinite-width NTK across widths and depths")
    p.add_argument("--widths", type=_int_list, default=[64, 256, 1024, 4096])
    p.add_argument("--depths", type=_int_list, default=[1, 2, 4])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--wrn-widths", type=_int_list, default=[1, 2], help="WideResNet-10 width multipliers")
    p.set_defaults(handler=_run_demo)
    # Each further subcommand sets `handler`, called with the parsed arguments.
    for add_commands in (experiments_cli.add_commands, serving_cli.add_commands):
        add_commands(commands)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    from keras_ntk import _tf_quiet  # noqa: F401  (TensorFlow quietly, once the arguments are good)

    return args.handler(args) or 0


if __name__ == "__main__":
    sys.exit(main())
