"""Images in an S3 bucket (MinIO, AWS S3, any S3-compatible service).

Public images live under ``public/`` — the only prefix the bucket policy lets anonymous
clients read — and private ones under ``private/``. boto3 is synchronous, so every call runs
in a worker thread; timeouts are short so that a storage outage becomes a quick 503.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imagegate.storage.base import StoredObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PUBLIC_PREFIX, PRIVATE_PREFIX = "public/", "private/"
PUBLIC_CACHE_CONTROL = "public, max-age=31536000, immutable"
SIGNED_URL_SECONDS = 60
CHUNK = 256 * 1024
DELETE_OBJECTS_MAX = 1000  # keys per DeleteObjects request (the S3 API's limit)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class StorageUnavailable(OSError):
    """The S3 service could not be reached or refused the request."""


def key_of(name: str, public: bool) -> str:
    return (PUBLIC_PREFIX if public else PRIVATE_PREFIX) + name


def public_read_policy(bucket: str) -> dict[str, Any]:
    """Anonymous GetObject on ``public/*`` only: no listing, nothing else readable."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": ["*"]},
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{bucket}/{PUBLIC_PREFIX}*"],
            }
        ],
    }


class S3Storage:
    separates_visibility = True

    def __init__(
        self,
        bucket: str,
        *,
        endpoint: str | None,
        region: str,
        access_key: str | None,
        secret_key: str | None,
    ) -> None:
        self.bucket = bucket
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=20,
                retries={"max_attempts": 2, "mode": "standard"},
                max_pool_connections=32,
            ),
        )

    async def _call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except (BotoCoreError, ClientError) as exc:
                raise StorageUnavailable(str(exc)) from exc

        return await anyio.to_thread.run_sync(run)

    async def put(self, name: str, source: Path, *, public: bool, content_type: str) -> None:
        extra: dict[str, Any] = {"ContentType": content_type}
        if public:
            extra["CacheControl"] = PUBLIC_CACHE_CONTROL

        def put_file() -> None:
            # One PUT: stored images are far below multipart sizes, and upload_file's transfer
            # manager (a thread pool per call) costs a third more CPU for nothing.
            with source.open("rb") as body:
                self.client.put_object(
                    Bucket=self.bucket, Key=key_of(name, public), Body=body, **extra
                )

        await self._call(put_file)

    async def put_many(self, files: Sequence[tuple[str, Path, str]], *, public: bool) -> None:
        for name, source, content_type in files:
            await self.put(name, source, public=public, content_type=content_type)

    async def delete(self, name: str, *, public: bool) -> None:
        await self._call(self.client.delete_object, Bucket=self.bucket, Key=key_of(name, public))

    async def copy_to(self, names: Sequence[str], *, public: bool) -> None:
        def copy_all() -> None:
            for name in names:
                source = key_of(name, not public)
                try:
                    head = self.client.head_object(Bucket=self.bucket, Key=source)
                except ClientError as exc:
                    if not _missing(exc):
                        raise
                    # Moved by an earlier attempt that failed later, or lost: either way
                    # nothing to copy (reconciliation reports a record without bytes).
                    continue
                # Metadata as a put on that side sets it: the year-long browser caching only
                # for public objects.
                extra: dict[str, Any] = {"ContentType": head["ContentType"]}
                if public:
                    extra["CacheControl"] = PUBLIC_CACHE_CONTROL
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=key_of(name, public),
                    CopySource={"Bucket": self.bucket, "Key": source},
                    MetadataDirective="REPLACE",
                    **extra,
                )

        await self._call(copy_all)

    async def delete_many(self, objects: Sequence[tuple[str, bool]]) -> None:
        keys = [key_of(name, public) for name, public in objects]
        for start in range(0, len(keys), DELETE_OBJECTS_MAX):
            chunk = keys[start : start + DELETE_OBJECTS_MAX]
            # Quiet: only failures are listed; a missing key counts as deleted.
            response = await self._call(
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageUnavailable(
                    f"{len(errors)} of {len(chunk)} objects not deleted, e.g. "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    async def exists(self, name: str, *, public: bool) -> bool:
        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=key_of(name, public))
            except ClientError as exc:
                if _missing(exc):
                    return False
                raise
            return True

        return bool(await self._call(head))

    async def health(self) -> None:
        await self._call(self.client.head_bucket, Bucket=self.bucket)

    async def list(self) -> AsyncIterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        for prefix in (PUBLIC_PREFIX, PRIVATE_PREFIX):
            pages = await self._call(
                lambda p: list(paginator.paginate(Bucket=self.bucket, Prefix=p)), prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield StoredObject(
                        obj["Key"].removeprefix(prefix),
                        int(obj["Size"]),
                        obj["LastModified"].timestamp(),
                        public=prefix == PUBLIC_PREFIX,
                    )

    def local_path(self, name: str) -> Path | None:
        return None

    def signed_path(self, name: str, *, public: bool, head: bool = False) -> str | None:
        # The signature covers the method, so a HEAD gets a URL signed for HEAD.
        url = self.client.generate_presigned_url(
            "head_object" if head else "get_object",
            Params={"Bucket": self.bucket, "Key": key_of(name, public)},
            ExpiresIn=SIGNED_URL_SECONDS,
        )
        parts = urlsplit(url)
        return f"{parts.path}?{parts.query}"

    async def stream(self, name: str, *, public: bool) -> AsyncIterator[bytes]:
        response = await self._call(
            self.client.get_object, Bucket=self.bucket, Key=key_of(name, public)
        )
        body = response["Body"]
        try:
            while chunk := await anyio.to_thread.run_sync(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    def init_bucket(self) -> None:
        """Create the bucket; allow anonymous reads of ``public/`` only."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
        self.client.put_bucket_policy(
            Bucket=self.bucket, Policy=json.dumps(public_read_policy(self.bucket))
        )
