"""Tables: users, images, trusted login devices, and the login throttle shared by every process."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    FetchedValue,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from imagegate.db.types import UTCDateTime

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Stored lower-cased, so the unique index makes logins unique case-insensitively.
    login: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # What the user's images add up to, changed in the same transaction as every insert and
    # delete of an image (see queries.add_image and queries.delete_image).
    image_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    image_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Sessions (security/sessions.py): access tokens without a session issued at or before
    # this time (Unix seconds) are refused; set by a password change and ``logout?all=true``.
    tokens_valid_after: Mapped[float | None] = mapped_column(Float, nullable=True)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_owner_created", "owner_id", "created_at", "name"),
        # Same upload twice (uploader/pipeline.py): one image per owner and uploaded bytes;
        # also what settles two identical uploads racing on different replicas.
        Index(
            "uq_images_owner_upload_sha256",
            "owner_id",
            "upload_sha256",
            unique=True,
            sqlite_where=text("upload_sha256 IS NOT NULL"),
            postgresql_where=text("upload_sha256 IS NOT NULL"),
        ),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    visibility: Mapped[str] = mapped_column(String(16))
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    uploaded_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # sha256 of the bytes as uploaded (``sha256`` is of the stored, re-encoded ones); NULL for
    # images stored before migration 0011, which are therefore never matched as duplicates.
    upload_sha256: Mapped[str | None] = mapped_column(String(64), default=None)

    @property
    def public(self) -> bool:
        return self.visibility == "public"


class Variant(Base):
    """A stored variant of an image: a preset (or a custom size) in one format.

    Its object is ``<uuid>.<key>.<ext>`` beside the original, on the same side of the
    public/private divide. Rows go with their image (cascade); the bytes are removed by whoever
    deletes the image, and a crash in between leaves an orphan that reconciliation removes.
    """

    __tablename__ = "variants"
    __table_args__ = (
        Index("uq_variants_image_key_format", "image_name", "key", "format", unique=True),
        Index("ix_variants_custom_used", "custom", "used_at"),
    )

    name: Mapped[str] = mapped_column(String(96), primary_key=True)  # the object's name
    image_name: Mapped[str] = mapped_column(ForeignKey("images.name", ondelete="CASCADE"))
    owner_id: Mapped[str] = mapped_column(String(36), index=True)
    # A preset's name, or a custom size's "<w>x<h><c|n>" (starts with a digit: never a preset).
    key: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(8))  # the extension: avif, webp, jpg, png, gif
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    public: Mapped[bool] = mapped_column(Boolean)
    custom: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Custom sizes only: last served (at most a day stale), for removing unused ones.
    used_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LoginThrottle(Base):
    """Failed-login counters per key (``login:<name>`` or ``addr:<ip>``), seen by all replicas."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started: Mapped[float] = mapped_column(Float)
    blocked_until: Mapped[float] = mapped_column(Float, default=0.0)
    lockouts: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[float] = mapped_column(Float, index=True)


class LoginDevice(Base):
    """A client that logged in before: its device cookie, stored only as a SHA-256 hash.

    Login attempts that present it are counted on their own throttle key (``device:<hash>``)
    instead of the login's, so strangers failing on the login cannot lock its owner out.
    """

    __tablename__ = "login_devices"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)


class LoginSession(Base):
    """A login session: the family of refresh tokens one login started (security/sessions.py).

    Its access tokens carry its id (``sid``) and are refused once ``revoked_at`` is set; a
    revoked row is kept for an access token's lifetime (so a replica that starts can load the
    recent revocations), then pruned.
    """

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)  # the absolute end, whatever the refreshes
    last_used: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)


class RefreshToken(Base):
    """One refresh token of a session, stored only as its SHA-256 (256 random bits: no slow
    hash needed). A used (rotated) one is kept while it could still be presented, so that its
    reuse is recognised and revokes the whole session."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)  # sliding: each token lives on its own
    used: Mapped[float | None] = mapped_column(Float, nullable=True)


class OutboxEvent(Base):
    """An event written in the same transaction as its change (the transactional outbox);
    the inline dispatcher or the Kafka relay publishes it, then marks it."""

    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_events_published_seq", "published_at", "seq"),)

    # Integer on SQLite (its rowid alias: the only autoincrement it has), BIGINT elsewhere.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str] = mapped_column(String(36), index=True)
    subject: Mapped[str] = mapped_column(String(200))
    payload: Mapped[str] = mapped_column(Text)  # the CloudEvents JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # PostgreSQL: the writing transaction's id (a server default), for the relay's commit-order
    # fence; NULL on SQLite, where one writer at a time commits in seq order anyway.
    txid: Mapped[int | None] = mapped_column(
        BigInteger, nullable=True, server_default=FetchedValue()
    )


class PurgeObject(Base):
    """A deleted account's stored object, waiting for the purge handler to remove it."""

    __tablename__ = "purge_objects"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    public: Mapped[bool] = mapped_column(Boolean)
    owner_id: Mapped[str] = mapped_column(String(36), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A script's credential (security/apikeys.py): only the SHA-256 of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Deleted with the account: its keys stop at once.
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # SHA-256 (hex) of the whole key: the key has 256 random bits, so no slow hash is needed.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, for display
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Webhook(Base):
    """A user's webhook: where their events are POSTed, which ones, and the signing secret."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # No foreign key: a deleted account's webhooks stay until its last events are sent
    # (migration 0007); ``closed_at`` is set when its ``account.deleted`` is queued.
    user_id: Mapped[str] = mapped_column(String(36), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    # A JSON list of event types; NULL: every type, including types added later.
    events: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The whsec_ secret as given to the user: signing needs the key itself (an HMAC key cannot
    # be kept as a hash). Never returned after creation, never logged.
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WebhookDelivery(Base):
    """One event to send to one webhook, and how its attempts went (the delivery queue)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # One delivery per event and webhook: dispatching an event twice adds nothing.
        Index("uq_webhook_deliveries_webhook_event", "webhook_id", "event_id", unique=True),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_listing", "webhook_id", "created_at", "id"),
        Index("ix_webhook_deliveries_finished", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the CloudEvents JSON, sent as the body
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When a pending delivery is due; while an attempt is in flight, the end of its lease.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
