"""Resumable sweeps: each finished run is one JSON file, written atomically.

Layout of an experiment's output directory OUT/NAME/:
    runs/<key>.json   one finished run: {"params", "settings", "result", "seconds", "finished_at"}
    report.md, figures/*.png|pdf   written by the experiment's `report`

A run is reused when its file exists, parses, and was made with the same settings
(the config fields that are not sweep axes); anything else is recomputed. A
killed sweep therefore resumes at the first unfinished run and loses nothing.
"""

import datetime
import json
import math
import pathlib
import sys
import time

from keras_ntk import atomic


def run_key(params):
    """File-name-safe key of one sweep point, e.g. 'architecture=mlp_depth=2_width=64'."""
    parts = []
    for name, value in params.items():
        text = str(value).replace("/", "-").replace(" ", "")
        parts.append(f"{name}={text}")
    return "_".join(parts)


def write_json_atomically(path, data):
    """Write `data` as JSON to `path` atomically (keras_ntk.atomic.write_json)."""
    atomic.write_json(path, data, indent=1, allow_nan=True)


class RunStore:
    """The finished runs of one experiment, one JSON file per run under `directory`."""

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)

    def path(self, key):
        return self.directory / f"{key}.json"

    def load(self, key, settings):
        """The stored record of run `key`, or None if missing, unreadable or made with other settings."""
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("settings") == settings else None

    def save(self, key, record):
        write_json_atomically(self.path(key), record)


def _duration(seconds):
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def run_sweep(name, points, settings, compute, store, resume=True, out=sys.stdout):
    """Compute every sweep point not already in `store`, saving each as soon as it finishes.

    Args:
      name: the experiment's name, for progress lines.
      points: list of dicts (sweep parameters of each run, JSON-ready).
      settings: JSON-ready dict shared by all runs; stored with each run.
      compute: function(params) -> JSON-ready result dict.
      store: a RunStore.
      resume: reuse the stored runs; False recomputes them all.
    Returns:
      list of records, one per point, in the order of `points`.
    """
    records = [store.load(run_key(p), settings) if resume else None for p in points]
    done = sum(r is not None for r in records)
    todo = len(points) - done
    if done:
        print(f"[{name}] resuming: {done} of {len(points)} runs already finished, {todo} to go", file=out)
    started, computed = time.perf_counter(), 0
    for i, params in enumerate(points):
        if records[i] is not None:
            continue
        begin = time.perf_counter()
        result = compute(params)
        seconds = time.perf_counter() - begin
        record = {
            "params": params,
            "settings": settings,
            "result": result,
            "seconds": seconds,
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        store.save(run_key(params), record)
        records[i] = record
        computed += 1
        elapsed = time.perf_counter() - started
        remaining = elapsed / computed * (todo - computed)
        filled = int(20 * (done + computed) / len(points))
        label = " ".join(f"{k}={v}" for k, v in params.items())
        print(
            f"[{name}] [{'#' * filled}{'.' * (20 - filled)}] {done + computed}/{len(points)} "
            f"{label} ({seconds:.1f}s, about {_duration(remaining)} left)",
            file=out,
            flush=True,
        )
    return records
