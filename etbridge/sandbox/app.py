"""The Starlette application of one sandbox."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from etbridge.sandbox.admin import AdminApi
from etbridge.sandbox.api import PublicApi
from etbridge.sandbox.config import SandboxConfig
from etbridge.sandbox.state import SandboxState


def create_app(config: SandboxConfig, *, clock: Callable[[], float] = time.time) -> Starlette:
    """Build the sandbox app: data generated now, churn started with the server.

    The state is reachable as ``app.state.sandbox`` (a :class:`SandboxState`).
    """
    state = SandboxState.create(config, clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The churn task needs the server's running loop, so it starts here, not above.
        if config.churn > 0:
            state.churn.set_rate(config.churn)
        try:
            yield
        finally:
            await state.churn.stop()

    app = Starlette(
        routes=[*PublicApi(state).routes(), *AdminApi(state).routes()],
        lifespan=lifespan,
    )
    app.state.sandbox = state
    return app
