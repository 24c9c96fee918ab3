"""bastion.dashboard: the operator's web UI, served by the graph service at `/ui`.

One page of static files (`static/`: HTML, one script, one stylesheet) that reads the
graph service's REST API with the token the operator gives it: workflows, a workflow's
causal graph and its nodes, a node's drift path, violations, the audit chain's
verification and SLO figures; and, when the graph knows where the proxy is, the approval
requests and the verifier's queue, which an operator approves, denies, releases or rejects
there (the proxy answers the dashboard's origin alone: BASTION_DASHBOARD_ORIGIN). The
files hold no data; every request for data carries the operator's or auditor's token and
is checked by the API as any other client's.

    dashboard_router(proxy_url=None)
                       the FastAPI router serving `/ui` and its assets (mounted by
                       bastion.graph.create_app); `proxy_url`, the proxy's origin
                       (BASTION_DASHBOARD_PROXY_URL), adds its approvals and queue
"""

from ._router import dashboard_router

__all__ = ["dashboard_router"]
