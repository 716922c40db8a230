"""Which W&B mode a run takes (`wandb.mode=auto`) and the W&B group of a sweep's runs."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

from nstexp.errors import NstexpError


def wandb_credentials_configured() -> bool:
    """True when an API key is available from the environment or ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """auto: WANDB_MODE if set, else online with credentials, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    if env is not None:
        # W&B itself would fail on it with a long traceback.
        raise NstexpError(f"WANDB_MODE={env!r} is not valid (allowed: online, offline, disabled, or unset)")
    return "online" if wandb_credentials_configured() else "offline"


def sweep_group(group: str | None, sweep: str | None, sweep_dir: str) -> str:
    """The W&B group of a sweep: the sweep's name and its start time, read off its directory."""
    if group:
        return group
    stamp = "_".join(os.path.normpath(sweep_dir).split(os.sep)[-2:])
    return f"{sweep or 'multirun'}-{stamp}"
