"""The model registry: every version under a base directory, hot-loaded by polling.

BASE/NAME/VERSION/ directories (export.py) are found by scans every
`poll_interval` seconds. A scan first marks every new version LOADING (so the
model is known at once), then loads them, the newest version of each model
first. A loaded version becomes AVAILABLE; one that fails is logged and marked
FAILED with the reason, while the other versions keep serving, and is retried
only when its files change (a half-written copy that is completed later).
Versions removed from disk are unloaded. An empty or missing base directory is
no error: models appear when they are exported. Names that do not match
export.NAME_PATTERN and directories whose real path leaves the base directory
are skipped (logged once per directory, not on every scan).

"latest" is the newest version that is neither FAILED nor removed (the target),
once it is AVAILABLE. While the target loads, the version that was latest before
keeps answering (a hot reload); when there is none (the server just started, or
the base directory was rebuilt) the model answers UNAVAILABLE, never an older
version that happens to load first. Readiness: the overall server is ready when
every version found by the first scan (at `start`) has loaded or failed; a model
is ready while its latest resolves.

Optional labels per model: BASE/NAME/labels.json, {"stable": 3, ...}, label
names like model names and versions positive integers below 10^18 ("latest" is
reserved). A file that breaks these rules is ignored (the labels read before
stay) and logged once, and concerns its model only.
"""

import concurrent.futures
import dataclasses
import json
import logging
import pathlib
import threading

from .errors import NotFound, Unavailable, shown
from .export import NAME_PATTERN, VERSION_PATTERN

log = logging.getLogger("keras_ntk.serving")

LOADING, AVAILABLE, FAILED, UNLOADED = "LOADING", "AVAILABLE", "FAILED", "UNLOADED"
MAX_VERSION = 10**18 - 1  # the largest version VERSION_PATTERN admits
SHOWN_MODELS = 20  # model names listed in a NOT_FOUND message


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


def parse_labels(text):
    """{label: version} from the text of a labels.json; ValueError saying what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object {{label: version}}, got {type(raw).__name__}")
    labels = {}
    for label, version in raw.items():
        if label == "latest":
            raise ValueError("'latest' is reserved: it always means the newest available version")
        if not NAME_PATTERN.match(label):
            raise ValueError(f"label {shown(label)} is not a name of 1-128 letters, digits, '_', '-' or '.'")
        if type(version) is not int or not 1 <= version <= MAX_VERSION:
            raise ValueError(
                f"label {label!r} has version {shown(version)}; expected an integer from 1 to {MAX_VERSION}"
            )
        labels[label] = version
    return labels


class Registry:
    """Loaded versions of every model under `base_dir`.

    Args:
      base_dir: the model base directory (may be empty or not exist yet).
      load: callable (name, version, path) -> servable, raising on failure.
      poll_interval: seconds between scans.
      on_health: callable (name, serving: bool) called when readiness changes: name ""
        for the whole server (every version found at start loaded or failed), else a
        model (its latest resolves).
      load_workers: versions loaded at once.
    """

    def __init__(self, base_dir, load, poll_interval=1.0, on_health=None, load_workers=2):
        self.base_dir = pathlib.Path(base_dir)
        self.load_workers = load_workers
        self._load, self.poll_interval = load, poll_interval
        self._on_health = on_health or (lambda name, serving: None)
        self._models = {}  # name -> {version: VersionRecord}
        self._labels = {}  # name -> {label: version}
        self._latest = {}  # name -> the version last answered as latest
        self._ready = {}  # name ("" for the server) -> bool, last readiness reported
        self._initial = set()  # (name, version) found at start and not loaded or failed yet
        self._warned = {}  # key -> message of a condition logged once
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.polls = 0

    # -- polling --------------------------------------------------------------------
    def start(self):
        """Scan once now (every version found becomes LOADING, so clients get
        UNAVAILABLE, not NOT_FOUND), then load and keep polling in a thread."""
        pending = self._scan()
        with self._lock:
            self._initial = {(name, version) for name, version, _ in pending}
        self._report_health()
        self._thread = threading.Thread(target=self._run, args=(pending,), name="registry-poller", daemon=True)
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

    def _run(self, pending):
        try:
            self._load_all(pending)
        except Exception:  # keep polling whatever the first loads met
            log.exception("model registry: loading %s failed", self.base_dir)
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception:  # keep polling whatever one scan met
                log.exception("model registry: scan of %s failed", self.base_dir)

    def poll(self):
        """One scan of the base directory and the loads it finds: new versions, failed
        ones whose files changed, versions back on disk."""
        pending = self._scan()
        self._report_health()
        self._load_all(pending)
        self.polls += 1

    def _warn_once(self, key, message, seen):
        seen.add(key)
        if self._warned.get(key) != message:
            self._warned[key] = message
            log.warning("model registry: %s", message)

    def _scan(self):
        """List the base directory: versions to load become LOADING (returned newest
        first across models), removed ones UNLOADED, labels are re-read."""
        base = self.base_dir.resolve()
        found, seen = {}, set()
        if base.is_dir():
            for entry in sorted(base.iterdir()):
                if not NAME_PATTERN.match(entry.name) or not entry.is_dir():
                    continue
                if not _inside(entry, base):
                    self._warn_once(("outside", entry.name), f"skipping {entry}, it leaves the base directory", seen)
                    continue
                found[entry.name] = {
                    int(v.name): (v, _signature(v))
                    for v in entry.iterdir()
                    if VERSION_PATTERN.match(v.name) and v.is_dir() and _inside(v, base)
                }
                self._read_labels(entry, seen)
        self._warned = {key: message for key, message in self._warned.items() if key in seen}
        pending, gone = [], []
        with self._lock:
            for name, versions in found.items():
                records = self._models.setdefault(name, {})
                for version, (path, signature) in sorted(versions.items(), reverse=True):
                    record = records.get(version)
                    if record is None or record.state == UNLOADED or (
                        record.state == FAILED and record.signature != signature
                    ):
                        records[version] = VersionRecord(version, LOADING, signature=signature)
                        pending.append((name, version, path))
            for name, records in self._models.items():
                for version, record in records.items():
                    if version not in found.get(name, {}) and record.state not in (UNLOADED, LOADING):
                        gone.append((name, version, record))
                        records[version] = VersionRecord(version, UNLOADED)
                        if self._latest.get(name) == version:
                            del self._latest[name]
        for name, version, record in gone:
            log.info("model registry: %s version %d removed from disk, unloading", name, version)
            if record.servable is not None:
                record.servable.close()
        rank, newer = [], {}
        for name, _, _ in pending:  # each model's versions are in descending order
            rank.append(newer.get(name, 0))
            newer[name] = rank[-1] + 1
        return [item for _, item in sorted(zip(rank, pending), key=lambda pair: (pair[0], pair[1][0]))]

    def _read_labels(self, model_dir, seen):
        path = model_dir / "labels.json"
        if not path.is_file():
            labels = {}
        else:
            try:
                labels = parse_labels(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as error:
                self._warn_once(("labels", model_dir.name), f"ignoring {path}: {error}", seen)
                return
        with self._lock:
            self._labels[model_dir.name] = labels

    def _load_all(self, pending):
        if not pending:
            return
        with concurrent.futures.ThreadPoolExecutor(self.load_workers, thread_name_prefix="registry-load") as pool:
            for future in [pool.submit(self._load_one, *item) for item in pending]:
                future.result()

    def _load_one(self, name, version, path):
        if self._stop.is_set():
            return
        with self._lock:
            signature = self._models[name][version].signature
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
            self._initial.discard((name, version))
        self._report_health()

    def _latest_version(self, name):
        """The version "latest" resolves to (None: none yet; call under the lock) and
        the target version it waits for."""
        records = self._models[name]
        live = [v for v, r in records.items() if r.state in (LOADING, AVAILABLE)]
        target = max(live, default=None)
        if target is not None and records[target].state == AVAILABLE:
            self._latest[name] = target
            return target, target
        return self._latest.get(name), target

    def _report_health(self):
        with self._lock:
            ready = {"": not self._initial}
            for name in self._models:
                latest, _ = self._latest_version(name)
                ready[name] = latest is not None
            changed = {name: value for name, value in ready.items() if self._ready.get(name) != value}
            self._ready.update(changed)
        for name, value in changed.items():
            self._on_health(name, value)

    # -- queries --------------------------------------------------------------------
    def resolve(self, name, version=None, label=None):
        """The servable for a model spec: an int version, a label, or neither (latest).

        Raises NotFound naming what exists, Unavailable for what is still loading.
        """
        with self._lock:
            records = self._models.get(name)
            if not records:
                raise NotFound(f"Model {shown(name)} is not served (models: {self._known()}).")
            available = sorted(v for v, r in records.items() if r.state == AVAILABLE)
            if label is not None and label != "latest":
                labels = self._labels.get(name, {})
                if label not in labels:
                    raise NotFound(
                        f"Model {name!r} has no version label {shown(label)} (labels: latest"
                        f"{''.join(', ' + k for k in sorted(labels))})."
                    )
                version = labels[label]
            if version is None:
                version, target = self._latest_version(name)
                if version is None:
                    if target is not None:
                        raise Unavailable(
                            f"Model {name!r} is loading (version {target} is {records[target].state}); retry shortly."
                        )
                    raise NotFound(f"Model {name!r} has no available version ({self._states(records)}).")
            record = records.get(version)
            if record is not None and record.state == LOADING:
                raise Unavailable(f"Version {version} of model {name!r} is loading; retry shortly.")
            if record is None or record.state != AVAILABLE:
                state = "does not exist" if record is None else f"is {record.state}"
                if record is not None and record.error:
                    state += f" ({record.error})"
                raise NotFound(
                    f"Version {version} of model {name!r} {state}; available versions: "
                    f"{', '.join(map(str, available)) or 'none'}."
                )
            return record.servable

    def _known(self):
        names = sorted(self._models)
        listed = ", ".join(names[:SHOWN_MODELS]) or "none"
        return listed + (f" and {len(names) - SHOWN_MODELS} more" if len(names) > SHOWN_MODELS else "")

    @staticmethod
    def _states(records):
        return ", ".join(f"version {v} {r.state}" for v, r in sorted(records.items()))

    def status(self, name):
        """[VersionRecord] of a model, by version (NotFound for an unknown model)."""
        with self._lock:
            if name not in self._models:
                raise NotFound(f"Model {shown(name)} is not served (models: {self._known()}).")
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
