"""Keep credentials out of everything the CLI prints: the dry-run JSON, notes and error lines.

Three kinds of secret are hidden (replaced by ``<redacted>``):
  * every value given to a secret flag (``--logger.wandb.key``, 0.9.x's ``--use_wandb``, any flag whose
    last name segment is ``key`` / ``token`` / ``secret`` / ``password`` / ``api_key`` ...), including
    the surplus tokens after it (the second half of a key pasted with a space) and the values a YAML
    preset gives it;
  * the user-info part of a URL (``https://user:S3CRET@host/...``);
  * URL query parameters that carry a credential (``?token=...``, ``&api_key=...``, ``&sig=...``).
Long echoed input is cut to about 80 characters (``shorten_tokens``). Standard library only.
"""

from __future__ import annotations

import re
from typing import Any, Collection, Iterable, Mapping, Optional, Sequence, Set

REDACTED = "<redacted>"
ECHO_LIMIT = 80

# The last segment of a flag name that holds a secret (``logger.wandb.key``, ``hf_token``, ``api_key``).
SECRET_LEAF = re.compile(r"(?:^|[_-])(?:key|keys|token|secret|secrets|password|passwd|credentials?|auth)$",
                         re.IGNORECASE)
# Names that look like secrets but are not: dataset column names and a metric's name.
NOT_SECRET = re.compile(r"^(?:--)?data\.|^(?:--)?ckpt\.best_metric_key$|^(?:--)?(?:input|label|image)_key$")

# scheme://user[:password]@host: everything between "//" and the last "@" before the host.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#@'\"]*)@")
# ?name=value / &name=value where the name says it carries a credential.
_QUERY = re.compile(
    r"(?P<name>[?&;](?:[^=&#\s'\"]*?)(?:key|token|secret|password|passwd|sig|signature|auth|credential|"
    r"session|access)[^=&#\s'\"]*=)(?P<value>[^&#\s'\"]+)",
    re.IGNORECASE,
)


def is_secret_flag(flag: str, aliases: Optional[Mapping[str, Sequence[str]]] = None) -> bool:
    """Whether ``--flag`` (or, through ``aliases``, a flag it is translated to) holds a secret."""
    name = flag.split("=", 1)[0]
    names = [name, *((aliases or {}).get(name, ()))]
    return any(SECRET_LEAF.search(n.lstrip("-").split(".")[-1]) and not NOT_SECRET.search(n) for n in names)


def _is_flag(token: str) -> bool:
    if not token.startswith("--"):
        return False
    try:
        float(token)
        return False
    except ValueError:
        return True


def secret_values(tokens: Iterable[str], aliases: Optional[Mapping[str, Sequence[str]]] = None) -> Set[str]:
    """Every value given to a secret flag in ``tokens``: ``--flag=VALUE`` and every token after
    ``--flag`` up to the next flag (surplus tokens included)."""
    out: Set[str] = set()
    in_secret = False
    for token in tokens:
        token = str(token)
        if _is_flag(token):
            name, eq, value = token.partition("=")
            in_secret = is_secret_flag(name, aliases)
            if in_secret and eq and value:
                out.add(value)
            continue
        if in_secret and token:
            out.add(token)
    return out


def redact_text(text: str, secrets: Collection[str] = ()) -> str:
    """``text`` with the given secret values, URL user-info and credential query values hidden."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        for form in {secret, repr(secret)[1:-1]}:
            if form:
                text = text.replace(form, REDACTED)
    text = _USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    return _QUERY.sub(lambda m: m.group("name") + REDACTED, text)


def redact_value(value: Any, secrets: Collection[str] = ()) -> Any:
    """``redact_text`` applied to every string inside a JSON-like value (dict keys kept)."""
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, Mapping):
        return {k: redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v, secrets) for v in value]
    return value


def shorten_tokens(text: str, tokens: Iterable[str], limit: int = ECHO_LIMIT) -> str:
    """Every input token longer than ``limit`` that ``text`` echoes, cut to about ``limit`` characters."""
    for token in sorted({str(t) for t in tokens if len(str(t)) > limit}, key=len, reverse=True):
        cut = f"{token[:limit - 20]}...{token[-12:]} ({len(token)} characters)"
        for form in {token, repr(token)[1:-1]}:
            text = text.replace(form, cut)
    return text
