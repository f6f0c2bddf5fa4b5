"""Count password leaks in what fastapi-dbsession raises, logs and repr()s, over random URLs.

Usage: ``python scripts/secret_census.py [COUNT] [SEED]`` (default 300 URLs, seed 16).

Each URL carries a known password (random tokens joined by characters that need
percent-encoding) in one of many shapes, well-formed or not: ``scheme://u:P@h/db``,
``scheme//u:P@h/db``, ``scheme:u:P@h/db``, ``u:P@h/db``, ``?password=P``, an unencoded ``@``,
multi-host, no host, mangled. For each, the script builds a manager (``url=`` and
``async_url=``), takes ``repr(db)``, ``str(db.url)``, ``repr(db.engine)``, then opens a unit of
work against the unreachable 127.0.0.1:1. A leak is any token of the password appearing in an
exception's formatted traceback (chained causes included), a repr, or a log record of
``fastapi_dbsession``; an escape is an exception that is not a ``DBSessionError``.
The hypothesis tests in tests/test_secrets.py check the same property on every run.
"""

from __future__ import annotations

import logging
import os
import random
import string
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from urllib.parse import quote_plus

from fastapi_dbsession import DatabaseSessionManager, DBSessionError

SCHEMES = (
    "postgresql+psycopg",
    "postgresql+asyncpg",
    "postgresql",
    "mysql+pymysql",
    "mariadb+aiomysql",
    "sqlite",
    "http",
    "nosuchdb",
    "postgresql+nosuch",
)
SPECIALS = "@:/?#%& +=;!'\"[]"


def password(rng: random.Random) -> tuple[str, list[str]]:
    tokens = ["".join(rng.choices(string.ascii_letters + string.digits, k=6)) for _ in range(3)]
    glue = [rng.choice(SPECIALS) if rng.random() < 0.6 else "" for _ in range(2)]
    return tokens[0] + glue[0] + tokens[1] + glue[1] + tokens[2], tokens


def url_for(rng: random.Random, secret: str, first_token: str) -> str:
    scheme = rng.choice(SCHEMES)
    host = rng.choice(("127.0.0.1", "127.0.0.1:1", "[::1]:1", "127.0.0.1:1,127.0.0.2:1"))
    shown = secret if rng.random() < 0.7 else quote_plus(secret)
    shapes = (
        f"{scheme}://u:{shown}@{host}/db",
        f"{scheme}//u:{shown}@{host}/db",
        f"{scheme}:u:{shown}@{host}/db",
        f"u:{shown}@{host}/db",
        f"{scheme}://u@{host}/db?password={shown}",
        f"{scheme}://u@{host}/db?sslmode=disable&password={quote_plus(secret)}",
        f"{scheme}://u:{shown}@/db?host=127.0.0.1&port=1",
        # no host: an unencoded "@" in P would make the rest of P the host, for any parser
        f"{scheme}://u:{quote_plus(secret)}",
        f"{scheme}://u:{shown}@",
        f"{scheme}:///u:{shown}@{host}",
        f"{scheme}://:{shown}@{host}/db",
    )
    url = rng.choice(shapes)
    start = url.find(first_token)
    # mangle: drop or double one character away from the password and its "u:" / "@"
    # (dropping the ":" of "u:P@h" makes P part of the user name: no parser can tell)
    outside = [i for i in range(len(url)) if not start - 10 <= i <= start + len(shown)]
    if outside and rng.random() < 0.15:
        position = rng.choice(outside)
        url = url[:position] + rng.choice(("", url[position] * 2)) + url[position + 1 :]
    return url


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def probe(url: str, *, side: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Return (places shown, escapes): each place is (kind, text)."""
    shown: list[tuple[str, str]] = []
    escapes: list[str] = []

    def failed(exc: BaseException) -> None:
        shown.append(("error", "".join(traceback.format_exception(exc)) + repr(exc)))
        if not isinstance(exc, DBSessionError):
            escapes.append(type(exc).__name__)
            if "-v" in sys.argv:
                traceback.print_exception(exc)

    try:
        db = DatabaseSessionManager(**{side: url})  # type: ignore[arg-type]
    except Exception as exc:
        failed(exc)
        return shown, escapes
    shown.append(("repr", repr(db)))
    for value in (db.url, db.async_url):
        if value is not None:
            shown.append(("repr", str(value)))
    try:
        engine = db.engine if side == "url" else db.async_engine
        shown.append(("repr", repr(engine)))
        if side == "url":
            with db.transaction() as session:
                session.connection()
        else:
            import asyncio

            async def use() -> None:
                async with db.async_transaction() as session:
                    await session.connection()
                await db.async_dispose()

            asyncio.run(use())
    except Exception as exc:
        failed(exc)
    finally:
        db.dispose()
    return shown, escapes


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 16)
    warnings.simplefilter("ignore")
    records = Records()
    logging.getLogger("fastapi_dbsession").addHandler(records)
    logging.getLogger("fastapi_dbsession").setLevel(logging.DEBUG)
    leaks: Counter[str] = Counter()
    escapes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for _ in range(count):
        secret, tokens = password(rng)
        url = url_for(rng, secret, tokens[0])
        for side in ("url", "async_url"):
            records.lines.clear()
            shown, escaped = probe(url, side=side)
            shown += [("log", line) for line in records.lines]
            for name in escaped:
                escapes[name] += 1
            for kind in {kind for kind, text in shown if any(t in text for t in tokens)}:
                leaks[kind] += 1
                examples.setdefault(kind, f"{side}={url!r}")
    print(f"{count} URLs x 2 sides: leaks {dict(leaks)}, non-library errors {dict(escapes)}")
    for kind, example in examples.items():
        print(f"  first {kind} leak: {example}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="secret-census-") as workdir:
        os.chdir(workdir)  # sqlite:///u:P@h makes a file
        main()
