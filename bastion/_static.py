"""A fixed table of files served under one path, and nothing else: the dashboard (`/ui`)
and the API docs (`/docs`).

A name in the path is only ever a key of the table, so no request can name another file
(`..`, encoded slashes, a NUL, a symlink) and no directory is ever listed; every answer
carries the caller's headers (its Content-Security-Policy above all).

    static_router(prefix, files, index=, headers=, index_paths=, what=)   the routes
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, HTTPException, Response

#: A file as served: its media type and its bytes.
StaticFile = tuple[str, bytes]


def static_router(
    prefix: str,
    files: Mapping[str, StaticFile],
    *,
    index: StaticFile,
    headers: Mapping[str, str],
    index_paths: tuple[str, ...],
    what: str,
) -> APIRouter:
    """GET `prefix/{name}` for each of `files`, and `index` at each of `index_paths`; any
    other name is 404 ("not a file of `what`")."""
    router = APIRouter(include_in_schema=False)
    answer_headers = dict(headers)

    def answer(found: StaticFile) -> Response:
        media_type, body = found
        return Response(content=body, media_type=media_type, headers=answer_headers)

    async def index_page() -> Response:
        return answer(index)

    for path in index_paths:
        router.add_api_route(path, index_page, methods=["GET"])

    @router.get(prefix + "/{name}")
    async def named(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise HTTPException(status_code=404, detail=f"not a file of {what}")
        return answer(found)

    return router
