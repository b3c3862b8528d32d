"""How this hospital reaches its coordinators: an explicit HTTPS proxy and the dead-link timeout.

They live in the hospital home (``HOME/network.toml``, core.home), so ``dopamine join``/``leave`` and
the app, which runs the same client in the same home, use one setting::

    proxy = "http://proxy.hospital.example:3128"   # "" (the default): connect directly
    timeout_s = 60.0

The proxy is only ever the explicit one given here (``--proxy`` overrides it for one command): the
machine's proxy variables and CA bundle stay ignored (core.federation.transport), and the TLS session
to the coordinator runs through the proxy's CONNECT tunnel, still verified against the federation CA
pinned from the invitation. A proxy that inspects TLS is therefore refused; its IT must exempt the
coordinator's host:port from inspection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.home import HospitalHome

DIRECT = ("", "none", "direct")  # what --proxy takes for "no proxy"
DEFAULT_TIMEOUT_S = 60.0


@dataclass
class NetworkSettings:
    schema_version: int = 1
    # http://[user:password@]host:port of the HTTPS proxy (CONNECT) this hospital must use; "": direct.
    proxy: str = ""
    # A connection to the coordinator that stays silent this long past the expected answer (a long poll's
    # wait included) is declared dead, closed, and the request retried on a new one.
    timeout_s: float = DEFAULT_TIMEOUT_S

    def check(self) -> NetworkSettings:
        self.proxy = check_proxy_url(self.proxy)
        self.timeout_s = check_timeout(self.timeout_s)
        return self


def check_proxy_url(url: str | None) -> str:
    """``url`` as the transport uses it ("" for a direct connection); ConfigError when it cannot be a proxy."""
    text = (url or "").strip()
    if text.lower() in DIRECT:
        return ""
    if "://" not in text:
        text = "http://" + text  # proxy.example:3128, as IT usually writes it
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise ConfigError(f"The proxy {url!r} is not of the form http://host:port (or "
                          "http://user:password@host:port); ask IT for the HTTPS proxy's address.")
    return text.rstrip("/")


def check_timeout(value: float) -> float:
    timeout = float(value)
    if not math.isfinite(timeout) or not 1.0 <= timeout <= 3600.0:
        raise ConfigError(f"The network timeout must be between 1 and 3600 seconds, not {value!r}.")
    return timeout


def shown_proxy(url: str) -> str:
    """The proxy's address without a password, for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.hostname else url


def load_network_settings(home: HospitalHome) -> NetworkSettings:
    """The home's network settings (defaults when it has none); ConfigError when the file is unusable."""
    from core.config import load_toml

    path = home.network_settings
    if not path.exists():
        return NetworkSettings()
    settings = load_toml(NetworkSettings, path)
    try:
        return settings.check()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def save_network_settings(home: HospitalHome, settings: NetworkSettings) -> None:
    from core.config import save_toml

    save_toml(settings.check(), home.ensure().network_settings)


def network_for(home: HospitalHome, *, proxy: str | None = None, timeout_s: float | None = None) -> NetworkSettings:
    """The home's settings with this command's overrides (None: the home's)."""
    settings = load_network_settings(home)
    if proxy is not None:
        settings.proxy = check_proxy_url(proxy)
    if timeout_s is not None:
        settings.timeout_s = check_timeout(timeout_s)
    return settings
