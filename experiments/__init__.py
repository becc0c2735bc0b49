"""The paper's experiments (../shared/PAPER.md) as resumable sweeps with reports.

Each experiment module defines NAME, TITLE and
    points(config)                 -> list of sweep-parameter dicts, one per run
    load_data(config)              -> the data every run shares
    compute(config, data, params)  -> JSON-ready result of one run
    report(config, data, records, directory, env) -> (report.md path, one-line finding)
Configs and presets live in experiments.configs; `experiments.runner` runs them.
"""

MODULES = {
    "E1": "experiments.e1_finite_vs_infinite",
    "E5": "experiments.e5_kernel_regime",
}
