"""Run experiments: resume their sweeps, write their reports and the index."""

import functools
import importlib
import pathlib
import sys

from . import EXPERIMENTS, configs, harness, reporting


def run_experiment(name, config, out_dir, resume=True, out=sys.stdout):
    """Run (or resume) experiment `name` with `config` under out_dir/name.

    Writes out_dir/name/report.md and summary.json, then refreshes out_dir/index.md.
    resume=False recomputes every run (each file is replaced when its run finishes).
    Returns the report path.
    """
    module = importlib.import_module(f".{EXPERIMENTS[name]}", __package__)
    directory = pathlib.Path(out_dir) / name
    print(f"[{name}] {module.TITLE}: results in {directory}", file=out, flush=True)
    data = module.load_data(config)
    records = harness.run_sweep(
        name,
        module.points(config),
        configs.settings(config),
        functools.partial(module.compute, config, data),
        harness.RunStore(directory / "runs"),
        resume=resume,
        out=out,
    )
    env = reporting.environment()
    path, finding = module.report(config, data, records, directory, env)
    harness.write_json_atomically(
        directory / "summary.json", {"title": module.TITLE, "finding": finding, "report": path.name}
    )
    print(f"[{name}] report: {path}", file=out, flush=True)
    reporting.write_index(out_dir, EXPERIMENTS, env)
    return path


def reproduce(names, preset, out_dir, resume=True, out=sys.stdout):
    """Run the experiments `names` with `preset`; returns the path of out_dir/index.md."""
    for name in names:
        run_experiment(name, configs.preset(name, preset), out_dir, resume=resume, out=out)
    return pathlib.Path(out_dir) / "index.md"
