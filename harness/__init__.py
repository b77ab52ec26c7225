"""Real servers, SSE and Redis for ``tests/e2e`` and ``bench``: internal to them, never shipped."""
