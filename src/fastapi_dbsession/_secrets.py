"""Hide database passwords in URLs and in any text we raise, log or ``repr()``.

Three situations, three tools:

- a parsed ``URL``: :func:`render` masks the password and every password-like query value;
- a string that does not parse (so nobody knows where its password is): :func:`mask_raw`
  masks everything that could be one, whatever the shape (``scheme//u:P@h``, ``u:P@h``,
  ``?password=P``, an unencoded ``@`` in the password);
- free text such as a driver's error message: :func:`mask_text` masks URL-like and
  ``password=`` fragments and, given the URL, every spelling of its known secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL

MASK = "***"

# Query keys / conninfo keywords whose values are secrets (password, sslpassword, passwd,
# pwd, auth_token, client_secret, api_key, ...).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|credential|api_?key", re.IGNORECASE)

# key=value inside a query string: the value runs to the next "&key=" (an unencoded "&" in a
# password stays masked) or the end; in free text, also to the next blank.
_QUERY_KEY = r"(?P<key>[^\s?&;=]*(?:pass|pwd|secret|token|credential|api_?key)[^\s?&;=]*=)"
_QUERY_SECRET = re.compile(_QUERY_KEY + r"(?P<value>.*?)(?=[&;][^\s&;=]*=|$)", re.IGNORECASE)
_QUERY_SECRET_TEXT = re.compile(
    _QUERY_KEY + r"(?P<value>\S*?)(?=[&;][^\s&;=]*=|\s|$)", re.IGNORECASE
)
# libpq conninfo inside a driver message: password=value or password='quoted value'.
_CONNINFO_SECRET = re.compile(
    r"(?P<key>\b\w*(?:pass|pwd|secret|token)\w*\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|\S+)",
    re.IGNORECASE,
)
# scheme://user:password@ in free text: the password runs to the last "@" of the word.
_URL_USERINFO = re.compile(r"(?P<prefix>//[^\s:/@]*:)(?P<password>\S*)(?=@)")
# What starts a URL-ish string: "scheme://", "scheme//", "scheme:" (or a bare "user:").
_SCHEME = re.compile(r"^[A-Za-z][\w+.\-]*(?::/{0,3}|/{2,3})")
_PLAIN_USER = re.compile(r"^[\w.\-~%]*$")

# Shorter secrets are not scrubbed from free text: every "a" of a message would go.
_MIN_SCRUBBED = 3


def is_secret_key(key: str) -> bool:
    """Tell whether a URL query key or connect argument holds a secret."""
    return _SECRET_KEY.search(key) is not None


def has_secret_assignment(text: str) -> bool:
    """Tell whether ``text`` holds a ``password=...``-like assignment."""
    return _QUERY_SECRET_TEXT.search(text) is not None


def render(url: URL) -> str:
    """Render ``url`` for messages, logs and ``repr()``: password and secret query values masked."""
    if any(is_secret_key(key) for key in url.query):
        url = url.set(
            query={key: MASK if is_secret_key(key) else value for key, value in url.query.items()}
        )
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def secrets_of(url: URL | None) -> tuple[str, ...]:
    """The secrets ``url`` carries: its password and its password-like query values."""
    if url is None:
        return ()
    found: list[str] = []
    if url.password:
        found.append(str(url.password))
    for key, value in url.query.items():
        if is_secret_key(key):
            found.extend((value,) if isinstance(value, str) else value)
    return tuple(found)


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide URL passwords, ``password=`` values and the given ``secrets`` inside ``text``."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SCRUBBED:
            for spelling in {secret, quote_plus(secret), quote(secret, safe="")}:
                text = text.replace(spelling, MASK)
    text = _URL_USERINFO.sub(rf"\g<prefix>{MASK}", text)
    text = _CONNINFO_SECRET.sub(rf"\g<key>{MASK}", text)
    return _QUERY_SECRET_TEXT.sub(rf"\g<key>{MASK}", text)


def mask_raw(value: str) -> str:
    """Mask a URL string that did not parse: whatever could be a password becomes ``***``.

    Without a parse, nobody knows where the password ends, so this masks generously: the
    password-like query values, and everything between the scheme and the *last* ``@``
    (keeping a plain user name), or, with no ``@``, everything after a ``:`` in the host part
    (``postgresql://u:SECRET`` has no host, and SQLAlchemy reads SECRET as a port); with no
    scheme it recognises, everything after the first ``:``.
    """
    value = _QUERY_SECRET.sub(rf"\g<key>{MASK}", value)
    match = _SCHEME.match(value)
    scheme = match.group(0) if match else ""
    rest = value[len(scheme) :]
    if "@" in rest:
        head, _, tail = rest.rpartition("@")
        user, colon, _ = head.partition(":")
        if not scheme.endswith("/"):  # "u:" of "u:P@host" looks like "scheme:": keep nothing
            shown = MASK
        elif colon:
            shown = f"{user}:{MASK}" if _PLAIN_USER.match(user) else MASK
        else:  # "user@host"
            shown = head if _PLAIN_USER.match(head) else MASK
        return f"{scheme}{shown}@{tail}"
    if not scheme:  # "/qlite://u:P", "postgresql?//u:P": any ":" may start a password
        head, colon, _ = rest.partition(":")
        return f"{head}:{MASK}" if colon else rest
    path = rest.lstrip("/")  # "postgresql:////u:P": the host part starts after every "/"
    authority = path.partition("/")[0]
    if ":" in authority:  # whatever follows may be a password with a "/" in it
        return f"{scheme}{rest[: len(rest) - len(path)]}{authority.partition(':')[0]}:{MASK}"
    return f"{scheme}{rest}"
