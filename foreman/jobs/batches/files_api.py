"""OpenAI's Files API on ``/v1/files`` (ADR-0029): the files batches read and write.

Uploads (``purpose=batch``) and a finished batch's output and error files
live whole in the job store, so every box of a fleet serves them. A key with
the ``jobs`` scope sees only its own files (its uploads, its batches'
answers): another's are "not found" (:mod:`foreman.jobs.owners`).
"""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from foreman.http import routing
from foreman.http.multipart import form_parts
from foreman.http.routing import json_answer
from foreman.jobs.batches import table
from foreman.jobs.batches.objects import file_object, new_file_id
from foreman.jobs.batches.openai_http import (
    ApiError,
    Surface,
    answer_errors,
    argument,
    no_file,
    page,
    page_limit,
)
from foreman.jobs.owners import only, owner_of, sees


class FilesAPI:
    """``/v1/files``: the files batches read and write."""

    app = Klein()

    def __init__(self, surface: Surface) -> None:
        self._s = surface

    @app.route("/", methods=["POST"])
    async def upload(self, request: IRequest) -> bytes:
        parts = form_parts(request.getHeader(b"content-type"), routing.read_body(request))
        purpose = parts.get("purpose")
        upload = parts.get("file")
        if upload is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if purpose is None or purpose.content.decode("utf-8", "replace").strip() != "batch":
            raise ApiError(
                400,
                "foreman keeps files for batches only: purpose must be 'batch'.",
                param="purpose",
            )
        now = self._s.wall()
        row = table.FileRow(
            new_file_id(now),
            "batch",
            upload.filename or "upload.jsonl",
            len(upload.content),
            now,
            caller=owner_of(request),
        )
        await self._s.store.transact(lambda db: table.insert_file(db, row, upload.content))
        return json_answer(request, file_object(row))

    @app.route("/", methods=["GET"])
    async def listing(self, request: IRequest) -> bytes:
        limit = page_limit(request, 10_000, 10_000)
        order = argument(request, "order") or "desc"
        if order not in ("asc", "desc"):
            raise ApiError(400, "order must be asc or desc", param="order")
        purpose, after = argument(request, "purpose"), argument(request, "after")
        owner = only(request)
        rows = await self._s.store.transact(
            lambda db: table.list_files(
                db,
                purpose=purpose,
                after=after,
                limit=limit + 1,
                newest_first=order == "desc",
                owner=owner,
            )
        )
        return page(request, [file_object(row) for row in rows[:limit]], len(rows) > limit)

    @app.route("/<file_id>", methods=["GET"])
    async def show(self, request: IRequest, file_id: str) -> bytes:
        return json_answer(request, file_object(await self._file(file_id, request)))

    @app.route("/<file_id>/content", methods=["GET"])
    async def content(self, request: IRequest, file_id: str) -> bytes:
        await self._file(file_id, request)
        content = await self._s.store.transact(lambda db: table.file_content(db, file_id))
        if content is None:
            raise no_file(file_id)
        request.setHeader(b"Content-Type", b"application/jsonl")
        request.setHeader(b"Content-Length", b"%d" % len(content))
        return content

    @app.route("/<file_id>", methods=["DELETE"])
    async def delete(self, request: IRequest, file_id: str) -> bytes:
        await self._file(file_id, request)
        deleted = await self._s.store.transact(lambda db: table.delete_file(db, file_id))
        if not deleted:
            raise no_file(file_id)
        return json_answer(request, {"id": file_id, "object": "file", "deleted": True})

    async def _file(self, file_id: str, request: IRequest) -> table.FileRow:
        """The file ``file_id``, if the caller may see it; else OpenAI's 404."""
        row = await self._s.store.transact(lambda db: table.get_file(db, file_id))
        if row is None or not sees(request, row.caller):
            raise no_file(file_id)
        return row

    answer_errors(app)
