"""Figures (PNG and PDF), markdown tables and reports, the environment they ran in."""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform

from keras_ntk import atomic

PACKAGES = ("keras-ntk", "tensorflow", "keras", "tensorflow-probability", "numpy", "matplotlib")


def environment():
    """Package versions, Python, platform and the devices TensorFlow sees, as a dict."""
    import tensorflow as tf

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    devices = [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_logical_devices()]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "devices": devices,
        "packages": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def environment_markdown(env):
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    return (
        "## Environment\n\n"
        f"- Python {env['python']} on {env['platform']}, {env['cpu_count']} CPU cores\n"
        f"- Devices: {', '.join(env['devices'])}\n"
        f"- Packages: {packages}\n"
        f"- Report written {env['date']}\n"
    )


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, directory, stem):
    """Save `figure` as directory/stem.png and .pdf; returns the PNG path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figure.savefig(directory / f"{stem}.png", dpi=130, bbox_inches="tight")
    figure.savefig(directory / f"{stem}.pdf", bbox_inches="tight")
    pyplot().close(figure)
    return directory / f"{stem}.png"


def markdown_table(header, rows):
    """A markdown table; floats are printed with 4 significant digits."""

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(directory, title, body, env):
    """Write directory/report.md (title, body, environment) atomically; returns its path."""
    text = f"# {title}\n\n{body.rstrip()}\n\n{environment_markdown(env)}"
    return atomic.write_text(pathlib.Path(directory) / "report.md", text)


def write_index(out_dir, names, env):
    """OUT/index.md linking the report of every experiment in `names` that has one."""
    out_dir = pathlib.Path(out_dir)
    lines = ["# keras-ntk: reproduction of the experiments\n"]
    for name in names:
        try:
            summary = json.loads((out_dir / name / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        lines.append(f"## [{name}: {summary['title']}]({name}/{summary['report']})\n\n{summary['finding']}\n")
    path = atomic.write_text(out_dir / "index.md", "\n".join(lines) + "\n" + environment_markdown(env))
    atomic.write_json(out_dir / "environment.json", env, indent=1, allow_nan=True)
    return path
