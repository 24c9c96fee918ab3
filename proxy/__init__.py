"""bastion.proxy — the data plane: MCP (and later A2A) as a governing JSON-RPC proxy.

- `main(config=None) -> int` runs `bastion proxy serve` until SIGTERM/SIGINT.
- `serve(settings, app, ready, stop)` is the same service inside a running event loop.
- `ProxySettings` is its frozen configuration (`BASTION_*` env vars).
- `wrap(command, name=, agent=, config=) -> int` runs `bastion wrap -- <command>`.
"""

from ._config import ProxySettings
from ._server import main, serve
from ._wrap import wrap

__all__ = ["ProxySettings", "main", "serve", "wrap"]
