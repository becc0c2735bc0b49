"""`keras-ntk reproduce` and `keras-ntk run NAME`: the experiments as commands."""

import argparse
import pathlib

from . import EXPERIMENTS, configs

DEFAULT_OUT = "results"


def _names(text):
    names = [n.strip().upper() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if not names or unknown:
        raise ValueError(f"--only takes experiment names from {', '.join(EXPERIMENTS)}, got {text!r}.")
    return names


def _reproduce(args):
    index = pathlib.Path(args.out) / "index.md"
    from . import runner

    runner.reproduce(_names(args.only), args.preset, args.out, resume=not args.no_resume)
    print(f"Index report: {index.resolve()}")


def _run(args):
    from . import runner

    config = configs.preset(args.experiment, args.preset)
    overrides = {
        f.name: getattr(args, f.name)
        for f in configs.fields(type(config))
        if getattr(args, f.name) is not None
    }
    config = configs.override(config, overrides)
    runner.run_experiment(args.experiment, config, args.out, resume=not args.no_resume)
    print(f"Index report: {(pathlib.Path(args.out) / 'index.md').resolve()}")


def _common_options(parser):
    parser.add_argument("--preset", choices=configs.PRESETS, default="quick",
                        help="quick: CPU minutes on bundled data; paper: GPU scale (default quick)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--no-resume", action="store_true",
                        help="recompute runs that already finished instead of reusing them")


def add_commands(commands):
    """Register `reproduce` and `run` on an argparse subparsers object."""
    p = commands.add_parser("reproduce", help="run the paper's experiments and write reports and an index")
    _common_options(p)
    p.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated experiments (default all)")
    p.set_defaults(handler=_reproduce)

    p = commands.add_parser("run", help="run one experiment, overriding any field of its config")
    experiments = p.add_subparsers(dest="experiment", required=True)
    for name in EXPERIMENTS:
        config_class = configs.config_class(name)
        q = experiments.add_parser(name, help=config_class.__doc__.splitlines()[0],
                                   description=config_class.__doc__)
        _common_options(q)
        for field in configs.fields(config_class):
            q.add_argument(
                f"--{configs.option_name(field.name)}",
                dest=field.name,
                type=_field_parser(field),
                help=f"{configs.describe(field.type)}; quick preset: {_shown(getattr(config_class(), field.name))}",
            )
        q.set_defaults(handler=_run)


def _field_parser(field):
    def parse(text):
        try:
            return configs.parse_value(field, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error))

    return parse


def _shown(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
