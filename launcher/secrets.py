"""Which values must never be written down: API keys, tokens, passwords."""

from __future__ import annotations

import re
from collections.abc import Mapping

# A name is secret when one of its `_`-separated words ends in one of these (API_KEY, HF_TOKEN,
# APIKEY, DB_PASSWORDS), not when a word merely starts with one (TOKENIZERS_PARALLELISM, KEYBOARD).
_SECRET_WORD = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION)S?$", re.IGNORECASE)
REDACTED = "<redacted>"


def is_secret_name(name: str) -> bool:
    return any(_SECRET_WORD.search(word) for word in re.split(r"[_\-.]+", name))


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_name(k) else v) for k, v in env.items()}


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Values to scrub from any text we write (long enough to be recognisable)."""
    return [v for k, v in env.items() if is_secret_name(k) and len(v) >= 6]
