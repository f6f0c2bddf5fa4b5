"""Serve a test app with a real uvicorn process, for tests that need real concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

try:
    import httpx2 as httpx
except ImportError:  # older Starlette pairs with httpx
    import httpx  # type: ignore[no-redef]

from tests._servers import free_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serve(app: str, env: Mapping[str, str], *, ready_path: str) -> Iterator[str]:
    """Run ``uvicorn app`` with ``env`` added; yield its base URL once ``ready_path`` is 200."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ, **env},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}{ready_path}").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
