"""bastion.proxy — the data plane: MCP (and later A2A) as a governing JSON-RPC proxy.

`main` runs the service (`bastion proxy serve`); `ProxySettings` is its configuration.
"""

from ._config import ProxySettings
from ._server import main, serve

__all__ = ["ProxySettings", "main", "serve"]
