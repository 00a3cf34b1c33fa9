"""Subscription patterns: which event kinds a plugin receives.

The grammar is the hub's (NATS subjects applied to dot-separated kinds): `*` matches exactly one
token, a final `>` matches one or more tokens.
"""

from __future__ import annotations


def kind_matches(pattern: str, kind: str) -> bool:
    """Whether `pattern` matches the event kind `kind`."""
    pattern_tokens = pattern.split(".")
    kind_tokens = kind.split(".")
    for i, token in enumerate(pattern_tokens):
        if i == len(kind_tokens):
            return False
        if token == ">":
            return True
        if token != "*" and token != kind_tokens[i]:
            return False
    return len(pattern_tokens) == len(kind_tokens)


def pattern_error(pattern: str) -> str | None:
    """Why `pattern` is not a valid subscription, or None if it is."""
    if not pattern:
        return "empty subscription pattern"
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if not token:
            return f"empty token in subscription pattern {pattern!r}"
        if token == ">" and i + 1 != len(tokens):
            return f"'>' must be the last token in {pattern!r}"
        if len(token) > 1 and ("*" in token or ">" in token):
            return f"wildcards must be whole tokens in {pattern!r}"
    return None
