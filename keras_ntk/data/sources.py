"""Where dataset files come from: the Keras cache, and a download when one can work.

A download goes through ``keras.datasets`` and is attempted only when
:func:`network_available` finds the download host (or the HTTPS proxy urllib would
use for it) accepting TCP connections; otherwise :func:`download_or_fail` raises a
``FileNotFoundError`` at once whose message says where the loader looked, why no
download happened, and how to fetch the files by hand.
"""

import os
import socket
import urllib.parse
import urllib.request

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
NETWORK_TIMEOUT = 2.0


def keras_cache_dir(cache_dir=None):
    """The directory keras.datasets stores downloads in: ``<keras home>/datasets``.

    The Keras home is ``cache_dir`` when given, else ``$KERAS_HOME``, else ``~/.keras``.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(os.path.expanduser(os.fspath(cache_dir)), "datasets")


def _connection_target(host, port):
    """``(host, port)`` to connect to: the HTTPS proxy urllib uses for ``host``, if any."""
    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(host):
        return host, port
    parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if parsed.hostname is None:
        return host, port
    return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)


def network_available(host, port=443, timeout=NETWORK_TIMEOUT):
    """True if a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    When an HTTPS proxy is configured (``https_proxy`` and the like, as urllib and
    therefore keras.datasets read them) and ``host`` is not exempt, the proxy is
    probed instead, since that is where a download would connect. The connection
    attempt is bounded by ``timeout``; the name lookup before it is bounded by the
    system resolver's own limits (offline it fails at once).
    """
    target = _connection_target(host, port)
    try:
        with socket.create_connection(target, timeout=timeout):
            return True
    except OSError:
        return False


def download_or_fail(name, host, keras_loader, convert, searched, how_to_fetch, download=True):
    """Download through keras.datasets if allowed and ``host`` is reachable.

    Args:
      name: the dataset's name for the message, e.g. "MNIST".
      host: the download host keras.datasets connects to.
      keras_loader: no-argument callable returning keras.datasets' arrays.
      convert: callable turning those arrays into the loader's result.
      searched: the locations already searched (for the message).
      how_to_fetch: sentence(s) saying which files to fetch and where to put them.
      download: False raises at once, without probing the network.
    Returns:
      ``convert(keras_loader())``.
    Raises:
      FileNotFoundError: no download was allowed, possible or successful.
    """
    if not download:
        reason = "downloading was switched off (download=False)"
    elif network_available(host):
        try:
            return convert(keras_loader())
        except Exception as err:  # network flakiness, bad hash, ...
            reason = f"the download through keras.datasets failed: {err!r}"
    else:
        reason = (
            f"{host}:443 is not reachable within {NETWORK_TIMEOUT:g} s, so no download was attempted"
        )
    raise FileNotFoundError(
        f"{name} not found. Looked in: {', '.join(searched)}; {reason}. {how_to_fetch}"
    )
