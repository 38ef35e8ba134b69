"""Which values must never be written down: API keys, tokens, passwords."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, MutableMapping

# A name is secret when one of its `_`-separated words ends in one of these (API_KEY, HF_TOKEN,
# APIKEY, DB_PASSWORDS), not when a word merely starts with one (TOKENIZERS_PARALLELISM, KEYBOARD).
_SECRET_WORD = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION)S?$", re.IGNORECASE)
REDACTED = "<redacted>"
# How a parent launcher (`launcher sweep`) hands its secret overrides to a child `launcher run`:
# in the child's environment, read and removed by the child, so never in an argv (ps), a record
# or a log line.
SECRET_OVERRIDES_VARIABLE = "LAUNCHER_SECRET_OVERRIDES"


@functools.lru_cache(maxsize=4096)  # the same few names, once per node of a plan of thousands
def is_secret_name(name: str) -> bool:
    return any(_SECRET_WORD.search(word) for word in re.split(r"[_\-.]+", name))


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_name(k) else v) for k, v in env.items()}


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Values to scrub from any text we write (long enough to be recognisable)."""
    return [v for k, v in env.items() if is_secret_name(k) and len(v) >= 6]


def split_secret_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """(overrides to write down, secret environment variables): `cluster.env.HF_TOKEN=abc`, or a
    secret key of a `cluster.env={...}` / `cluster={env: {...}}` mapping, leaves the override and
    becomes a variable that reaches the job through its environment instead of a script."""
    public, secrets = [], {}
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if not sep or not key.startswith("cluster"):
            public.append(arg)
            continue
        if key.startswith("cluster.env.") and is_secret_name(key[len("cluster.env."):]):
            secrets[key[len("cluster.env."):]] = _env_value(value)
            continue
        if key not in ("cluster.env", "cluster"):
            public.append(arg)
            continue
        import yaml

        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = None
        env = parsed.get("env") if key == "cluster" and isinstance(parsed, dict) else parsed
        if not isinstance(env, dict) or not any(isinstance(k, str) and is_secret_name(k) for k in env):
            public.append(arg)
            continue
        secrets.update({k: _env_value(v) for k, v in env.items() if isinstance(k, str) and is_secret_name(k)})
        kept = {k: v for k, v in env.items() if not (isinstance(k, str) and is_secret_name(k))}
        rest = {**parsed, "env": kept} if key == "cluster" else kept
        public.append(f"{key}={yaml.safe_dump(rest, default_flow_style=True, width=10**6).strip()}")
    return public, secrets


def _env_value(value) -> str:
    """A variable's text: a quoted YAML string unquoted, anything else as written."""
    if isinstance(value, str) and value[:1] in ("'", '"'):
        import yaml

        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return loaded if isinstance(loaded, str) else value
    return value if isinstance(value, str) else str(value)


def secret_overrides_environment(secrets: Mapping[str, str]) -> dict[str, str]:
    """The variable that gives a child `launcher run` these secret variables as cluster.env overrides."""
    return {SECRET_OVERRIDES_VARIABLE: json.dumps([f"cluster.env.{k}={json.dumps(v)}" for k, v in secrets.items()])}


def take_secret_overrides(environ: MutableMapping[str, str]) -> list[str]:
    """The secret overrides a parent launcher handed down, removed from `environ` (the ranks, which
    get the variables themselves, need no second copy)."""
    text = environ.pop(SECRET_OVERRIDES_VARIABLE, "")
    try:
        overrides = json.loads(text) if text else []
    except json.JSONDecodeError:
        return []
    return [o for o in overrides if isinstance(o, str)] if isinstance(overrides, list) else []
