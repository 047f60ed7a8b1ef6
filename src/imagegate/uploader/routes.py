"""HTTP routes of the uploader: upload, list, delete, and serving images."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, computed_field
from sqlalchemy import select

from imagegate.db import queries
from imagegate.db.models import Image
from imagegate.deps import ReadIdentity, RuntimeDep, SessionDep, WriteIdentity
from imagegate.errors import AppError, NotFound, Unprocessable, error_responses
from imagegate.events.envelope import EventType
from imagegate.events.outbox import emit
from imagegate.routing import get_and_head
from imagegate.serving import image_response, serve_cache
from imagegate.uploader.formats import ALLOWED, is_image_name
from imagegate.uploader.pipeline import ingest, remove_quietly
from imagegate.uploader.visibility import change_visibility
from imagegate.variants.links import srcset, variant_urls
from imagegate.variants.presets import Preset

router = APIRouter(tags=["images"])
Visibility = Literal["public", "private"]
IMAGE_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image bytes (Range gives 206)",
        "content": {f.content_type: {} for f in ALLOWED},
    },
    206: {"description": "Partial content (Range)"},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
}


class ImageOut(BaseModel):
    """An image record as clients see it."""

    model_config = ConfigDict(from_attributes=True)

    filename: str = Field(validation_alias="name")
    content_type: str
    width: int
    height: int
    frames: int
    bytes: int
    sha256: str
    visibility: Visibility
    created_at: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def url(self) -> str:
        """Public images are anyone's at /images/; private ones only their owner's."""
        prefix = "/images/" if self.visibility == "public" else "/v1/user/"
        return prefix + self.filename

    variants: dict[str, str] = Field(
        default_factory=dict,
        description="A URL per preset (format by Accept): e.g. thumb → /images/thumb/{name}",
    )
    srcset: str = Field("", description="The whole-picture presets as an <img srcset> value")

    @classmethod
    def of(cls, image: Image, presets: Iterable[Preset]) -> ImageOut:
        """The record with its variants' URLs."""
        out = cls.model_validate(image)
        presets = tuple(presets)
        out.variants = variant_urls(out.filename, image.public, presets)
        out.srcset = srcset(out.filename, image.public, image.width, image.height, presets)
        return out


class ImagePage(BaseModel):
    items: list[ImageOut]
    next_cursor: str | None


@router.post(
    "/v1/upload",
    status_code=201,
    response_model=ImageOut,
    summary="Upload an image",
    description=(
        "The image as the raw body (any Content-Type) or as the multipart/form-data field "
        "`file`. JPEG, PNG, GIF, WebP or AVIF; it is normalized, stripped of metadata and "
        "compressed. 503 + Retry-After, before the body is read, when the server or this "
        "account has as many uploads in progress as it takes; 507 when the disk is full. "
        "The same bytes uploaded again by the same account answer 200 with the image stored "
        "the first time (as it is: its visibility unchanged) and store nothing."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    },
    responses={
        200: {
            "model": ImageOut,
            "description": "The caller already has an image with these uploaded bytes: that "
            "image, with Location (nothing new is stored)",
        },
        **error_responses(400, 401, 413, 415, 422, 503, 507),
    },
)
async def upload(
    request: Request,
    identity: WriteIdentity,
    runtime: RuntimeDep,
    visibility: Visibility = "public",
) -> JSONResponse:
    try:
        done = await ingest(runtime, request, identity, visibility)
    except AppError as exc:
        runtime.metrics.uploads.labels(str(exc.status)).inc()
        raise
    runtime.metrics.uploads.labels("stored" if done.created else "duplicate").inc()
    out = ImageOut.of(done.image, runtime.variants.presets.values())
    return JSONResponse(
        out.model_dump(mode="json"),
        status_code=201 if done.created else 200,
        headers={"Location": out.url},
    )


@router.get(
    "/v1/images",
    response_model=ImagePage,
    summary="The caller's images, newest first",
    responses=error_responses(401, 422),
)
async def list_images(
    identity: ReadIdentity,
    session: SessionDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    uploaded_sha256: Annotated[
        str | None,
        Query(
            pattern="^[0-9a-f]{64}$",
            description="Only the image whose uploaded bytes had this sha256 (hex), if the "
            "caller has one: a client resuming a batch skips files already there without "
            "sending them.",
        ),
    ] = None,
) -> ImagePage:
    presets = runtime.variants.presets.values()
    if uploaded_sha256 is not None:
        found = await queries.image_by_upload(session, identity.user_id, uploaded_sha256)
        return ImagePage(items=[ImageOut.of(found, presets)] if found else [], next_cursor=None)
    try:
        after = queries.decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise Unprocessable("cursor: not a cursor from this listing") from exc
    images, next_cursor = await queries.images_page(session, identity.user_id, limit, after)
    return ImagePage(items=[ImageOut.of(i, presets) for i in images], next_cursor=next_cursor)


@router.get(
    "/v1/images/{filename}",
    response_model=ImageOut,
    summary="One of the caller's images (its record)",
    responses=error_responses(401, 404),
)
async def get_image(
    filename: str, identity: ReadIdentity, runtime: RuntimeDep, session: SessionDep
) -> ImageOut:
    image = None
    if is_image_name(filename):
        image = await session.scalar(
            select(Image).where(Image.name == filename, Image.owner_id == identity.user_id)
        )
    if image is None:
        raise NotFound("no such image")
    return ImageOut.of(image, runtime.variants.presets.values())


class ImageChange(BaseModel):
    """What an owner may change about an image."""

    model_config = ConfigDict(extra="forbid")

    visibility: Visibility


@router.patch(
    "/v1/images/{filename}",
    response_model=ImageOut,
    summary="Make one of the caller's images public or private",
    description="Its bytes and its variants move with it. A public link stops working at once "
    "here; through the gateway's cache within 10 s. Emits "
    "`imagegate.image.visibility_changed`.",
    responses=error_responses(401, 404, 422, 503),
)
async def change_image(
    filename: str,
    change: ImageChange,
    identity: WriteIdentity,
    runtime: RuntimeDep,
    session: SessionDep,
) -> ImageOut:
    if not is_image_name(filename):
        raise NotFound("no such image")
    image = await change_visibility(
        session,
        runtime.storage,
        filename,
        identity.user_id,
        change.visibility == "public",
        source=runtime.settings.event_source,
        preset_keys=list(runtime.variants.presets),
    )
    if image is None:
        raise NotFound("no such image")
    return ImageOut.of(image, runtime.variants.presets.values())


@router.delete(
    "/v1/images/{filename}",
    status_code=204,
    summary="Delete one of the caller's images",
    responses=error_responses(401, 404),
)
async def delete_image(
    filename: str, identity: WriteIdentity, runtime: RuntimeDep, session: SessionDep
) -> Response:
    if not is_image_name(filename):
        raise NotFound("no such image")
    # Record first, bytes second: a crash in between leaves an orphan file that start-up removes.
    variants: list[tuple[str, bool]] = []
    image = await queries.delete_image(session, filename, identity.user_id, variants)
    if image is None:
        raise NotFound("no such image")
    emit(
        session,
        EventType.IMAGE_DELETED,
        owner_id=image.owner_id,
        subject=f"images/{image.name}",
        data={
            "name": image.name,
            "owner": image.owner_id,
            "visibility": image.visibility,
            "bytes": image.bytes,
        },
        source=runtime.settings.event_source,
    )
    await session.commit()
    await remove_quietly(runtime, image, variants)
    return Response(status_code=204)


async def _serve(
    request: Request, runtime: RuntimeDep, filename: str, owner_id: str | None
) -> Response:
    """The image if this viewer may see it (its owner, or anyone when public and asked for on
    the public route), else 404 — checked by name before any lookup."""
    if not is_image_name(filename):
        raise NotFound("no such image")
    image = await queries.image_for_viewer(runtime.reads, filename, owner_id=owner_id)
    if image is None:
        raise NotFound("no such image")
    return await image_response(
        request,
        runtime.storage,
        image,
        public_route=owner_id is None,
        accel_prefix=runtime.settings.accel_redirect_prefix,
        cache=serve_cache(runtime),
    )


_get_and_head = functools.partial(get_and_head, router)


@_get_and_head(
    "/images/{filename}",
    summary="A public image",
    response_class=Response,
    responses={**IMAGE_CONTENT, **error_responses(404, 416)},
)
async def public_image(filename: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _serve(request, runtime, filename, owner_id=None)


@_get_and_head(
    "/v1/user/{filename}",
    summary="One of the caller's images, public or private",
    response_class=Response,
    responses={**IMAGE_CONTENT, **error_responses(401, 404, 416)},
)
async def own_image(
    filename: str,
    request: Request,
    identity: ReadIdentity,
    runtime: RuntimeDep,
) -> Response:
    return await _serve(request, runtime, filename, owner_id=identity.user_id)
