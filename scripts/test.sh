#!/usr/bin/env bash
# Run the whole test suite with every quality gate, from a fresh clone, in its own virtualenvs:
#   ruff check, ruff format --check, mypy --strict src, lint-imports, mkdocs build --strict,
#   pytest with coverage (newest versions),
#   then pytest again against the oldest versions pyproject.toml declares (constraints/oldest.txt),
#   the core suite (without the reliability and topology markers).
# Needs PostgreSQL on 127.0.0.1:5432 and MariaDB on 127.0.0.1:3306 (started here if installed
# but stopped). Without them the database tests skip, unless CI=true, where they fail.
# Extra arguments go to both pytest runs, e.g.: scripts/test.sh -k request_session
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

log() { printf '\n== %s\n' "$*"; }

make_venv() {  # make_venv DIR PIP-ARGS...
  local dir="$1"; shift
  if [ ! -x "$dir/bin/python" ]; then
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip
  fi
  "$dir/bin/python" -m pip install --quiet "$@"
}

start_databases() {
  if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  if ! (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null && [ -x /usr/sbin/mariadbd ]; then
    log "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  fi
  for _ in $(seq 1 30); do
    if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/3306) 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
}

run_pytest() {  # pytest's exit code 5 ("no tests ran") is a failure too
  local status=0
  "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    return 1
  fi
  return "$status"
}

log "environment (newest versions): .venv"
make_venv .venv -e ".[dev]"
start_databases
log "tools the topology tests start themselves (PgBouncer)"
scripts/install-tools.sh

log "ruff check"
.venv/bin/ruff check src tests examples
log "ruff format --check"
.venv/bin/ruff format --check src tests examples
log "mypy --strict src"
.venv/bin/mypy --strict src
log "lint-imports (the layers of docs/architecture.md, type-checking imports included)"
.venv/bin/lint-imports --no-cache
log "mypy --strict tests/typing (documented usage keeps its types)"
.venv/bin/mypy --strict tests/typing
log "mkdocs build --strict (the documentation site: links, anchors, includes, API reference)"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict

log "pytest (newest versions) with coverage"
# coverage starts before pytest, so the package imported by our own pytest plugin is measured,
# and follows the pytest subprocesses the plugin's tests start (pyproject: patch = subprocess)
rm -f .coverage .coverage.*
export FDBS_COVERAGE_DIR="$PWD"
run_pytest .venv/bin/python -m coverage run -m pytest "$@"
.venv/bin/python -m coverage combine -q
.venv/bin/python -m coverage report

log "environment (oldest declared versions): .venv-oldest"
make_venv .venv-oldest -c constraints/oldest.txt -e ".[dev]"
.venv-oldest/bin/python -m pip list 2>/dev/null | grep -iE '^(fastapi|sqlalchemy|starlette|pydantic) '
log "pytest (oldest versions): the core suite"
# The fault-injection suite and the topology tests (own clusters, PgBouncer) run once, with the
# newest versions: they prove the library's handling of servers and networks, which the
# FastAPI / SQLAlchemy floors do not change, and together they would take the CI run past its
# 25-minute budget on a 2-core machine. So does the benchmark smoke test (it checks that
# benchmarks/ still runs, not the library against the floors). Everything else runs against
# the floors too.
run_pytest .venv-oldest/bin/python -m pytest -q -m "not reliability and not topology" \
  --ignore=tests/test_benchmarks_smoke.py "$@"
