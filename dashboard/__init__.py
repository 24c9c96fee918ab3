"""bastion.dashboard: the operator's web UI, served by the graph service at `/ui`.

One page of static files (`static/`: HTML, one script, one stylesheet) that reads the
graph service's REST API with the token the operator gives it: workflows, a workflow's
causal graph and its nodes, a node's drift path, violations, the audit chain's
verification and SLO figures. The files hold no data; every request for data carries
the operator's or auditor's token and is checked by the API as any other client's.

    ui_router          the FastAPI router serving `/ui` and its assets (mounted by
                       bastion.graph.create_app)
"""

from ._router import ui_router

__all__ = ["ui_router"]
