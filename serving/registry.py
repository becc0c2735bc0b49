"""The model registry: every version under a base directory, hot-loaded by polling.

BASE/NAME/VERSION/ directories (export.py) are found by a poller thread every
`poll_interval` seconds. Each new version is loaded (safely, see loading.py)
and becomes AVAILABLE; one that fails is logged and marked FAILED with the
reason, while the other versions keep serving, and is retried only when its
files change (a half-written copy that is completed later). Versions removed
from disk are unloaded. An empty or missing base directory is no error: models
appear when they are exported. Names that do not match export.NAME_PATTERN and
directories whose real path leaves the base directory are skipped.

Optional labels per model: BASE/NAME/labels.json, {"stable": 3, ...}; the label
"latest" always means the highest AVAILABLE version.
"""

import concurrent.futures
import dataclasses
import json
import logging
import pathlib
import threading

from .errors import NotFound
from .export import NAME_PATTERN, VERSION_PATTERN

log = logging.getLogger("keras_ntk.serving")

LOADING, AVAILABLE, FAILED, UNLOADED = "LOADING", "AVAILABLE", "FAILED", "UNLOADED"


@dataclasses.dataclass
class VersionRecord:
    version: int
    state: str
    error: str = ""
    signature: tuple = ()
    servable: object = None


def _signature(directory):
    """(name, size, mtime_ns) of every entry of a version directory: changes when files do."""
    try:
        return tuple(sorted((p.name, p.lstat().st_size, p.lstat().st_mtime_ns) for p in directory.iterdir()))
    except OSError:
        return ()


def _inside(path, base):
    try:
        return path.resolve().is_relative_to(base)
    except OSError:
        return False


class Registry:
    """Loaded versions of every model under `base_dir`.

    Args:
      base_dir: the model base directory (may be empty or not exist yet).
      load: callable (name, version, path) -> servable, raising on failure.
      poll_interval: seconds between scans.
      load_workers: versions loaded at once.
      on_health: callable (name, serving: bool) called when a model's readiness
        (at least one AVAILABLE version) changes.
    """

    def __init__(self, base_dir, load, poll_interval=1.0, on_health=None, load_workers=2):
        self.base_dir = pathlib.Path(base_dir)
        self.load_workers = load_workers
        self._load, self.poll_interval = load, poll_interval
        self._on_health = on_health or (lambda name, serving: None)
        self._models = {}  # name -> {version: VersionRecord}
        self._labels = {}  # name -> {label: version}
        self._ready = {}  # name -> bool, last readiness reported
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.polls = 0

    # -- polling --------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="registry-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop polling and close every loaded version."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            records = [r for versions in self._models.values() for r in versions.values()]
        for record in records:
            if record.servable is not None:
                record.servable.close()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # keep polling whatever one scan met
                log.exception("model registry: scan of %s failed", self.base_dir)
            self._stop.wait(self.poll_interval)

    def poll(self):
        """One scan of the base directory: load new versions, retry changed failed
        ones, unload removed ones."""
        base = self.base_dir.resolve()
        found = {}
        if base.is_dir():
            for entry in sorted(base.iterdir()):
                if not NAME_PATTERN.match(entry.name) or not entry.is_dir():
                    continue
                if not _inside(entry, base):
                    log.warning("model registry: skipping %s, it leaves the base directory", entry)
                    continue
                found[entry.name] = {
                    int(v.name): v
                    for v in entry.iterdir()
                    if VERSION_PATTERN.match(v.name) and v.is_dir() and _inside(v, base)
                }
                self._read_labels(entry)
        candidates = [(n, v, p) for n, versions in found.items() for v, p in sorted(versions.items())]
        with concurrent.futures.ThreadPoolExecutor(self.load_workers, thread_name_prefix="registry-load") as pool:
            for future in [pool.submit(self._consider, *candidate) for candidate in candidates]:
                future.result()
        if self._stop.is_set():
            return
        with self._lock:
            gone = [
                (name, version, record)
                for name, records in self._models.items()
                for version, record in records.items()
                if version not in found.get(name, {}) and record.state != UNLOADED
            ]
            for name, version, record in gone:
                log.info("model registry: %s version %d removed from disk, unloading", name, version)
                self._models[name][version] = VersionRecord(version, UNLOADED)
        for _, _, record in gone:
            if record.servable is not None:
                record.servable.close()
        self._report_health()
        self.polls += 1

    def _read_labels(self, model_dir):
        path = model_dir / "labels.json"
        if not path.is_file():
            labels = {}
        else:
            try:
                raw = json.loads(path.read_text())
                labels = {str(k): int(v) for k, v in raw.items() if k != "latest"}
            except (OSError, ValueError, TypeError, AttributeError) as error:
                log.warning("model registry: ignoring %s: %s", path, error)
                return
        with self._lock:
            self._labels[model_dir.name] = labels

    def _consider(self, name, version, path):
        if self._stop.is_set():
            return
        signature = _signature(path)
        with self._lock:
            record = self._models.get(name, {}).get(version)
            if record is not None:
                retry = record.state == UNLOADED or (record.state == FAILED and record.signature != signature)
                if not retry:
                    return
            self._models.setdefault(name, {})[version] = VersionRecord(version, LOADING, signature=signature)
        try:
            servable = self._load(name, version, path)
        except Exception as error:  # any failure: this version is skipped, others serve
            message = f"{type(error).__name__}: {error}"
            log.warning("model registry: %s version %d not loaded: %s", name, version, message)
            new = VersionRecord(version, FAILED, message, signature)
        else:
            log.info("model registry: %s version %d loaded from %s", name, version, path)
            new = VersionRecord(version, AVAILABLE, "", signature, servable)
        with self._lock:
            self._models[name][version] = new
        self._report_health()

    def _report_health(self):
        with self._lock:
            ready = {
                name: any(r.state == AVAILABLE for r in records.values()) for name, records in self._models.items()
            }
            changed = {name: value for name, value in ready.items() if self._ready.get(name) != value}
            self._ready.update(changed)
        for name, value in changed.items():
            self._on_health(name, value)

    # -- queries --------------------------------------------------------------------
    def resolve(self, name, version=None, label=None):
        """The servable for a model spec: an int version, a label, or neither (latest).

        Raises NotFound naming what exists.
        """
        with self._lock:
            records = self._models.get(name)
            if not records:
                known = ", ".join(sorted(self._models)) or "none"
                raise NotFound(f"Model {name!r} is not served (models: {known}).")
            available = sorted(v for v, r in records.items() if r.state == AVAILABLE)
            if label is not None and label != "latest":
                labels = self._labels.get(name, {})
                if label not in labels:
                    raise NotFound(
                        f"Model {name!r} has no version label {label!r} (labels: latest"
                        f"{''.join(', ' + k for k in sorted(labels))})."
                    )
                version = labels[label]
            if version is None:
                if not available:
                    raise NotFound(f"Model {name!r} has no available version yet ({self._states(records)}).")
                version = available[-1]
            record = records.get(version)
            if record is None or record.state != AVAILABLE:
                state = "does not exist" if record is None else f"is {record.state}"
                if record is not None and record.error:
                    state += f" ({record.error})"
                raise NotFound(
                    f"Version {version} of model {name!r} {state}; available versions: "
                    f"{', '.join(map(str, available)) or 'none'}."
                )
            return record.servable

    @staticmethod
    def _states(records):
        return ", ".join(f"version {v} {r.state}" for v, r in sorted(records.items()))

    def status(self, name):
        """[VersionRecord] of a model, by version (NotFound for an unknown model)."""
        with self._lock:
            if name not in self._models:
                raise NotFound(f"Model {name!r} is not served (models: {', '.join(sorted(self._models)) or 'none'}).")
            return [dataclasses.replace(r) for _, r in sorted(self._models[name].items())]

    def labels(self, name):
        with self._lock:
            return dict(self._labels.get(name, {}))

    def names(self):
        with self._lock:
            return sorted(self._models)

    def available_versions(self, name):
        with self._lock:
            return sorted(v for v, r in self._models.get(name, {}).items() if r.state == AVAILABLE)
