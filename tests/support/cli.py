"""The ``etbridge`` command as a subprocess, against a sandbox and a test Redis."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.sandbox import Sandbox


def run_cli(
    sandbox: Sandbox, redis_url: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m etbridge ARGS`` with the sandbox's credentials, no other ETBRIDGE_ setting
    of this process, and ``env`` on top."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ETBRIDGE_")}
    environ.update(
        ETBRIDGE_CLIENT_ID=sandbox.client_id,
        ETBRIDGE_CLIENT_SECRET=sandbox.client_secret,
        ETBRIDGE_API_URL=sandbox.url,
        ETBRIDGE_REDIS_URL=redis_url,
    )
    environ.update(env)
    return etbridge_command(environ, *args)


def etbridge_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m etbridge ARGS`` with exactly the environment ``env`` (60 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "etbridge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
