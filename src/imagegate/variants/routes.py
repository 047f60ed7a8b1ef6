"""Serving variants: presets and custom sizes, in the format the client's ``Accept`` prefers.

``/images/{preset}/{name}`` (public images) and ``/v1/user/{preset}/{name}`` (the owner's), where
``{name}`` is the original's. ``size`` in place of a preset takes ``?w=&h=&fit=``: signed
(``sig``) on the public route, the owner's own on theirs. A variant not made yet is made now,
once however many requests ask for it at the same time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from imagegate.db.models import Image
from imagegate.deps import ReadIdentity, RuntimeDep
from imagegate.errors import Forbidden, NotFound, Unprocessable, error_responses
from imagegate.routing import get_and_head
from imagegate.runtime import Runtime
from imagegate.serving import image_response, serve_cache
from imagegate.uploader.formats import ALLOWED, is_image_name
from imagegate.variants import records, signing
from imagegate.variants.maker import custom_key
from imagegate.variants.negotiate import choose_format
from imagegate.variants.presets import MAX_SIDE, Size

router = APIRouter(tags=["variants"])
_get_and_head = functools.partial(get_and_head, router)

CUSTOM = "size"  # the path segment of custom sizes (never a preset's name)
# The gateway's internal location for public objects (deploy/nginx/imagegate-routes.conf).
PUBLIC_ACCEL = "/_public"
Fit = Literal["cover", "contain"]
VARIANT_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The variant's bytes, in the format Accept prefers (Vary: Accept)",
        "content": {f.content_type: {} for f in ALLOWED},
    },
    206: {"description": "Partial content (Range)"},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
}


@dataclass(frozen=True)
class SizeParams:
    """A custom size's query: ``?w=&h=&fit=`` (ignored for presets)."""

    w: int | None
    h: int | None
    fit: Fit

    def size(self) -> Size:
        """The box asked for; 422 when it is not one."""
        if self.w is None and self.h is None:
            raise Unprocessable("a custom size needs w, h or both")
        if self.fit == "cover" and (self.w is None or self.h is None):
            raise Unprocessable("fit=cover needs both w and h")
        # A missing side is unbounded (the largest a variant may be).
        return Size(self.w or MAX_SIDE, self.h or MAX_SIDE, self.fit)


def _size_params(
    w: Annotated[int | None, Query(ge=1, le=MAX_SIDE)] = None,
    h: Annotated[int | None, Query(ge=1, le=MAX_SIDE)] = None,
    fit: Fit = "contain",
) -> SizeParams:
    return SizeParams(w, h, fit)


SizeQuery = Annotated[SizeParams, Depends(_size_params)]


async def resolve(
    request: Request,
    runtime: Runtime,
    preset: str,
    filename: str,
    owner_id: str | None,
    size: Size | None = None,
) -> records.StoredVariant:
    """The variant this request asks for, if this viewer may see its image (the owner, or
    anyone when public on the public route) — made first if it does not exist yet; else 404."""
    if not is_image_name(filename):
        raise NotFound("no such image")
    if size is None:
        known = runtime.variants.presets.get(preset)
        if known is None:
            raise NotFound(f"no such preset: {preset[:40]!r}")
        size, key, custom = known.size, preset, False
    else:
        key, custom = custom_key(size), True
    accept = ", ".join(request.headers.getlist("accept"))  # as NGINX sees several
    fmt = choose_format(accept, filename.rsplit(".", 1)[1])
    name = records.object_name(filename, key, fmt)
    found = await records.variant(runtime.reads, name)
    if found is None:
        found = await _make(runtime, filename, owner_id, key, size, fmt, custom)
    # Checked again for one just made: the image may have gone private while it was made.
    if found is not None and not _may_see(found, owner_id):
        found = None
    if found is None:
        raise NotFound("no such image")
    if found.custom:
        async with runtime.sessions() as session:
            await records.touch(session, found, runtime.settings.variant_custom_keep_days)
    return found


async def _serve(
    request: Request,
    runtime: Runtime,
    preset: str,
    filename: str,
    owner_id: str | None,
    size: Size | None = None,
) -> Response:
    found = await resolve(request, runtime, preset, filename, owner_id, size)
    behind_gateway = runtime.settings.accel_redirect_prefix is not None
    if owner_id is None and behind_gateway and runtime.storage.local_path(found.name) is None:
        # With S3 behind the gateway, it sends the public object as a cache hit would (same
        # storage ETag, same cache), so a variant made now matches its later hits.
        return Response(headers={"X-Accel-Redirect": f"{PUBLIC_ACCEL}/{found.name}"})
    response = await image_response(
        request,
        runtime.storage,
        found,
        public_route=owner_id is None,
        accel_prefix=runtime.settings.accel_redirect_prefix,
        cache=serve_cache(runtime),
    )
    response.headers["Vary"] = "Accept"
    return response


def _may_see(found: records.StoredVariant, owner_id: str | None) -> bool:
    """Anyone sees a public image's variants on the public route; the owner sees all theirs."""
    return found.public if owner_id is None else found.owner_id == owner_id


async def _make(
    runtime: Runtime,
    filename: str,
    owner_id: str | None,
    key: str,
    size: Size,
    fmt: str,
    custom: bool,
) -> records.StoredVariant | None:
    """The variant made now, when the viewer may see the image; None otherwise."""
    async with runtime.sessions() as session:
        image = await session.get(Image, filename)
        if image is None or (owner_id is None and not image.public):
            return None
        if owner_id is not None and image.owner_id != owner_id:
            return None
        session.expunge(image)
    return await runtime.variants.make_one(image, key, size, fmt, custom=custom)


@_get_and_head(
    "/images/{preset}/{filename}",
    summary="A public image's variant (a preset, or a signed custom size)",
    description=(
        "`preset` is one of the configured presets (default thumb, small, medium, large), or "
        "`size` with `w`, `h`, `fit` and `sig` (an HMAC-SHA256 signature by the operator: "
        "`imagegate variants sign`). AVIF when Accept names image/avif, else WebP when it names "
        "image/webp, else the original's format."
    ),
    response_class=Response,
    responses={**VARIANT_CONTENT, **error_responses(403, 404, 416, 422)},
)
async def public_variant(
    preset: str,
    filename: str,
    request: Request,
    runtime: RuntimeDep,
    size: SizeQuery,
    sig: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,128}$")] = None,
) -> Response:
    if preset != CUSTOM:
        return await _serve(request, runtime, preset, filename, owner_id=None)
    keys = runtime.settings.variant_signing_keys
    if not sig or not keys:
        raise Forbidden(
            "a custom size needs a signature (sig) from the operator; owners can use "
            "/v1/user/size/{name} instead"
        )
    message = signing.signed_message(request.url.path, size.w, size.h, size.fit)
    if not signing.verify(keys, message, sig):
        raise Forbidden("the signature does not match this URL (or its key was retired)")
    return await _serve(request, runtime, preset, filename, None, size.size())


@_get_and_head(
    "/v1/user/{preset}/{filename}",
    summary="A variant of one of the caller's images (a preset, or any size)",
    description="As `/images/{preset}/{filename}`, for the owner, public or private images; "
    "`size` with `w`, `h` and `fit` needs no signature here.",
    response_class=Response,
    responses={**VARIANT_CONTENT, **error_responses(401, 404, 416, 422)},
)
async def own_variant(
    preset: str,
    filename: str,
    request: Request,
    identity: ReadIdentity,
    runtime: RuntimeDep,
    size: SizeQuery,
) -> Response:
    custom = size.size() if preset == CUSTOM else None
    return await _serve(request, runtime, preset, filename, identity.user_id, custom)
