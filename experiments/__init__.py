"""The paper's experiments as resumable sweeps with reports (`keras_ntk.experiments`).

Each experiment module defines NAME, TITLE and
    points(config)                 -> list of sweep-parameter dicts, one per run
    load_data(config)              -> the data every run shares
    compute(config, data, params)  -> JSON-ready result of one run
    report(config, data, records, directory, env) -> (report.md path, one-line finding)
Its configuration lives in configs/<name>.py (light to import, for `--help`);
`runner` runs experiments and writes their reports and the index.
"""

# Experiment name -> its module in this package; configs/<name lowercased>.py holds its Config.
EXPERIMENTS = {
    "E1": "e1_finite_vs_infinite",
    "E2": "e2_optimization",
    "E3": "e3_bandits",
    "E4": "e4_continual",
    "E5": "e5_kernel_regime",
}
