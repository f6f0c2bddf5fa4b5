"""Create the benchmark's virtualenvs (our library's, one per peer) and report their versions."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Everything that serves HTTP or talks to PostgreSQL. A peer's venv is pinned to the versions
# our venv resolved, so that differences come from the libraries, not from their stacks.
SHARED_STACK = (
    "sqlalchemy",
    "greenlet",
    "psycopg",
    "psycopg-binary",
    "asyncpg",
    "pydantic",
    "pydantic-core",
    "fastapi",
    "starlette",
    "anyio",
    "uvicorn",
    "uvloop",
    "httptools",
)
SERVER = ("uvicorn", "uvloop", "httptools")

REPORTED = (*SHARED_STACK, "fastapi-dbsession", "fastapi-sqla", "advanced-alchemy")
REPORTED += ("fastapi-async-sqlalchemy", "pyinstrument")


@dataclass(frozen=True)
class Env:
    """A virtualenv the benchmark serves some implementations from."""

    name: str
    requirements: tuple[str, ...]
    unpinned: tuple[str, ...] = ()
    """Names from SHARED_STACK the peer's own pins forbid us to align with ours."""

    @property
    def path(self) -> Path:
        return REPO / f".venv-bench-{self.name}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


CORE = Env(
    "core",
    ("-e", f"{REPO}[postgres]", *SERVER, "pyinstrument"),
)
PEERS = {
    env.name: env
    for env in (
        # fastapi-sqla 4.0 pins fastapi<0.142, so it gets an older FastAPI and Starlette.
        Env(
            "fastapi-sqla",
            ("fastapi-sqla", "psycopg[binary]", "asyncpg", "sqlalchemy[asyncio]", *SERVER),
            unpinned=("fastapi", "starlette"),
        ),
        Env(
            "advanced-alchemy",
            ("advanced-alchemy", "fastapi", "psycopg[binary]", "asyncpg", *SERVER),
        ),
        Env(
            "fastapi-async-sqlalchemy",
            ("fastapi-async-sqlalchemy", "fastapi", "asyncpg", "sqlalchemy[asyncio]", *SERVER),
        ),
    )
}


def _run(command: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n" + "\n".join(tail))


def ensure(env: Env, constraints: dict[str, str], *, say: object = print) -> Path:
    """Create or update ``env`` (a no-op when it matches the stamp) and return its python."""
    pins = {name: version for name, version in constraints.items() if name not in env.unpinned}
    wanted = json.dumps({"requirements": env.requirements, "pins": pins}, sort_keys=True)
    stamp = env.path / "bench-stamp"
    if env.python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return env.python
    say(f"  preparing {env.path.name} (pip install {' '.join(env.requirements)})")  # type: ignore[operator]
    if not env.python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env.path)
    log = env.path / "bench-install.log"
    command = [str(env.python), "-m", "pip", "install", "--quiet", *env.requirements]
    if pins:
        constraint_file = env.path / "bench-constraints.txt"
        constraint_file.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
        command += ["-c", str(constraint_file)]
    _run(command, log)
    stamp.write_text(wanted)
    return env.python


def versions(python: Path | str) -> dict[str, str]:
    """Return the installed version of each package in REPORTED for that interpreter."""
    script = (
        "import json, importlib.metadata as m, sys\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for name in {list(REPORTED)!r}:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True)
    return dict(json.loads(result.stdout))


def library_origin(python: Path | str) -> str:
    """Where that interpreter imports fastapi_dbsession from, and the checkout's commit."""
    result = subprocess.run(
        [str(python), "-c", "import fastapi_dbsession as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    package = Path(result.stdout.strip()).parent

    def git(*args: str) -> str:
        command = ["git", "-C", str(package), *args]
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()

    head, last = git("rev-parse", "--short", "HEAD"), git("log", "-1", "--format=%h", "--", ".")
    if not head:
        return str(package)
    changed = ", with uncommitted changes" if git("status", "--porcelain", "--", ".") else ""
    return f"{package} (last changed in {last}, checkout at {head}{changed})"


def stack_pins(core_versions: dict[str, str]) -> dict[str, str]:
    """The constraints that align a peer's venv with ours."""
    return {name: core_versions[name] for name in SHARED_STACK if name in core_versions}


def digest(path: Path) -> str:
    """A short content hash (to name what a results file was measured with)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


if __name__ == "__main__":  # python benchmarks/envs.py: build every venv, print versions
    core = ensure(CORE, {})
    pins = stack_pins(versions(core))
    for peer in PEERS.values():
        ensure(peer, pins)
    for env in (CORE, *PEERS.values()):
        print(env.name, versions(env.python))
    sys.exit(0)
