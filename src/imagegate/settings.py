"""All configuration in one typed object, read from ``IMAGEGATE_*`` variables and CLI flags."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Role = Literal["security", "uploader", "relay", "worker"]
# Embedded mode: the whole API in one process (events then dispatched inline, see events/).
ALL_ROLES: tuple[Role, ...] = ("security", "uploader")
SERVICE_ROLES: tuple[Role, ...] = ("security", "uploader", "relay", "worker")
MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every setting has an ``IMAGEGATE_<NAME>`` environment variable; flags override them."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="forbid")

    # Process and network
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("data")
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated proxy addresses whose X-Forwarded-For is believed.",
    )
    log_level: str = "info"
    shutdown_grace_seconds: float = Field(30.0, gt=0)
    json_body_max_bytes: int = Field(64 * 1024, gt=0)

    # Connection limits (embedded mode's own; in production NGINX enforces its equivalents)
    http_max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Request line and headers together; over it: 431."
    )
    http_max_headers: int = Field(100, ge=8, description="Header lines a request may have (431).")
    http_header_timeout_seconds: float = Field(
        60.0, gt=0, description="Time to receive a request's headers: 408, or a close if none came."
    )
    http_body_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest pause between two parts of a request body (408)."
    )
    http_keepalive_timeout_seconds: float = Field(
        5.0, gt=0, description="Idle keep-alive connections close after this."
    )
    http_keepalive_requests: int = Field(
        1000, ge=1, description="Requests served on one connection before it is closed."
    )
    http_max_connections: int = Field(
        1000, ge=1, description="Open connections; more are answered 503 at once."
    )

    # Database and storage
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file in the data dir."
    )
    database_pool_size: int = Field(
        20, ge=1, description="PostgreSQL connections per process (no overflow)."
    )
    storage: Literal["local", "s3"] = "local"
    s3_endpoint: str | None = Field(None, description="e.g. http://127.0.0.1:9000; None: AWS")
    s3_bucket: str = "data"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    accel_redirect_prefix: str | None = Field(
        None,
        description="Behind NGINX: hand image bytes to this internal location "
        "(X-Accel-Redirect) instead of streaming them through Python.",
    )
    serve_cache_mib: int = Field(
        64,
        ge=0,
        le=65536,
        description="Local storage: memory for the bytes of recently served small images "
        "(up to 256 KiB each), least recently used first out (0 = none).",
    )
    orphan_grace_seconds: int = Field(
        3600, ge=0, description="S3: objects without a record older than this are removed."
    )

    migrate_on_start: bool = Field(
        True, description="Run migrations at start (safe with replicas: they take a lock)."
    )

    # Tokens
    jwt_private_key_file: Path | None = Field(
        None, description="PEM EC P-256 key; default: generated into the data dir."
    )
    jwt_public_key_file: Path | None = Field(
        None,
        description="PEM public key(s) to verify with; a service that only verifies tokens "
        "needs no private key.",
    )
    jwt_issuer: str = "imagegate"
    jwt_audience: str = "imagegate"
    token_ttl_seconds: int = Field(900, gt=0, le=86400)
    token_leeway_seconds: int = Field(60, ge=0, le=60)
    token_cache_size: int = Field(
        10_000, ge=0, description="Verified tokens remembered per process (0: verify every time)."
    )
    jwt_key_activation_seconds: float = Field(
        10.0,
        ge=2,
        le=3600,
        description="A key made by `imagegate keys rotate` is published at once and signs only "
        "this long after, so every verifier knows it first (they look at most once a second).",
    )

    # API keys (security/apikeys.py)
    api_keys_per_user: int = Field(100, ge=1, le=10_000, description="API keys per account.")
    api_key_max_days: int = Field(
        365, ge=1, le=3650, description="Longest lifetime an API key may be given, in days."
    )

    # Passwords and login throttling
    password_min_length: int = Field(12, ge=8, le=1024)
    argon2_time_cost: int = Field(2, ge=2)
    argon2_memory_kib: int = Field(19 * 1024, ge=19 * 1024)
    argon2_parallelism: int = Field(1, ge=1)
    login_max_failures: int = Field(5, ge=1)
    login_window_seconds: int = Field(300, gt=0)
    login_lockout_seconds: int = Field(60, gt=0)
    login_lockout_max_seconds: int = Field(900, gt=0)
    login_device_lifetime_seconds: int = Field(
        30 * 86400,
        ge=0,
        description="Lifetime of the device cookie a successful login sets; attempts with it "
        "are throttled on their own, so strangers cannot lock the owner out (0: no cookies).",
    )
    # Sessions (security/sessions.py)
    refresh_token_days: float = Field(
        30,
        gt=0,
        le=366,
        description="A refresh token unused this long expires (each refresh starts the "
        "period again: sliding).",
    )
    session_max_days: float = Field(
        90,
        gt=0,
        le=3660,
        description="A session (a login and its refreshes) ends this long after the login, "
        "however often it is refreshed.",
    )
    refresh_reuse_grace_seconds: float = Field(
        10,
        ge=0,
        le=60,
        description="A used refresh token presented again within this many seconds of its "
        "use gets the next token (two clients of one login refreshing at once, a retry after a "
        "lost answer); later it ends the session as a stolen token (0: always).",
    )
    sessions_per_user: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Open sessions per account; a login past it ends the oldest.",
    )
    refresh_max_failures: int = Field(
        60,
        ge=1,
        description="Unknown, expired or revoked refresh tokens per client address within the "
        "login window before refreshes from it are blocked (as logins are).",
    )

    # Uploads
    upload_max_bytes: int = Field(40 * MIB, gt=0)
    image_max_pixels: int = Field(50_000_000, gt=0)
    image_max_side: int = Field(10_000, gt=0)
    image_max_frames: int = Field(900, gt=0)
    codec_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    codec_queue: int = Field(
        64,
        ge=0,
        description="Uploads in progress beyond the codec workers (receiving, or waiting on "
        "disk for a worker); one more is answered 503 before its body is read.",
    )
    codec_timeout_seconds: float = Field(
        60.0, gt=0, description="Ceiling of the per-image processing budget."
    )
    codec_seconds_per_megapixel: float = Field(
        2.0,
        gt=0,
        description="CPU budget per megapixel (all frames), up to the ceiling (AVIF needs ~0.8).",
    )
    codec_min_seconds: float = Field(
        5.0, gt=0, description="Processing budget of the smallest image."
    )
    codec_memory_mib: int = Field(
        3072,
        ge=256,
        description="Hard address-space ceiling of each codec worker (RLIMIT_AS); a 48 MP AVIF "
        "peaks at 2.3 GiB.",
    )
    codec_recycle_mib: int = Field(
        512, ge=64, description="A worker whose memory grew past this after a job is replaced."
    )
    codec_account_workers: int | None = Field(
        None,
        ge=1,
        description="Uploads of one account processed at once (default: half the "
        "workers, at least 1).",
    )
    codec_account_queue: int = Field(
        4,
        ge=0,
        description="Uploads of one account in progress beyond its workers (receiving or "
        "waiting); one more is answered 503 before its body is read.",
    )
    image_max_scans: int = Field(
        100, ge=1, description="Scans of a progressive JPEG (each one is a full decoding pass)."
    )
    codec_cache_mib: int = Field(
        64,
        ge=0,
        le=4096,
        description="Freed bitmap memory each codec worker keeps for its next image "
        "(whole 16 MiB blocks of Pillow's allocator; 0 = none).",
    )
    jpeg_quality: int = Field(80, ge=1, le=100)
    webp_quality: int = Field(79, ge=1, le=100)
    avif_quality: int = Field(63, ge=1, le=100)

    # Events (events/): an outbox table, drained inline or relayed to Kafka for the worker
    events: Literal["inline", "kafka"] = Field(
        "inline",
        description="inline: this process runs the event handlers itself (embedded mode); "
        "kafka: the relay publishes events to Kafka and the worker consumes them.",
    )
    event_source: str = Field(
        "/imagegate", description="The CloudEvents 'source' of every event this system emits."
    )
    outbox_retention_seconds: int = Field(
        3 * 86400, ge=60, description="Published outbox rows are pruned after this."
    )
    outbox_batch_size: int = Field(2000, ge=1, le=10_000, description="Rows per relay batch.")
    outbox_poll_seconds: float = Field(
        0.05, gt=0, le=10, description="How often an idle relay or inline dispatcher looks."
    )
    purge_batch_size: int = Field(
        500, ge=1, le=1000, description="Objects removed per storage call in an account purge."
    )
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Comma-separated brokers.")
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = (
        "SASL_PLAINTEXT"
    )
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    kafka_ca_file: Path | None = Field(None, description="CA bundle for SASL_SSL/SSL.")
    kafka_topic_prefix: str = Field(
        "imagegate", description="Topics are <prefix>.accounts and <prefix>.images."
    )
    kafka_consumer_group: str = "imagegate-worker"
    account_feed: bool = Field(
        True,
        description="events=kafka: security and uploader replicas check accounts in memory, "
        "fed by <prefix>.accounts (false: one database read per check, as embedded).",
    )
    account_feed_max_lag_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="The account feed answers only while it is known complete up to this "
        "long ago (a deleted account is refused within it); the database answers otherwise.",
    )
    account_feed_heartbeat_seconds: float = Field(
        0.2,
        gt=0,
        le=10,
        description="The relay's heartbeats to <prefix>.accounts, at most this often: below "
        "account_feed_max_lag_seconds, or the replicas fall back to the database.",
    )

    # Webhooks
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated networks (e.g. 127.0.0.0/8) webhooks may reach although "
        "they are loopback, private or link-local; refused by default.",
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    webhook_retry_seconds: int = Field(
        86400, ge=60, description="A delivery is retried with backoff for this long."
    )
    webhook_retry_base_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Delay before the first retry; the later ones are 60, 360, 1440, 3600 and "
        "7200 times it (5 s: the Standard Webhooks / Svix schedule).",
    )
    webhooks_per_user: int = Field(20, ge=1, le=1000)

    # Variants (thumbnails and other sizes, in AVIF, WebP and the original's format)
    variant_presets: str = Field(
        "thumb=320x320:cover,small=640x640:contain,medium=1280x1280:contain,"
        "large=2048x2048:contain",
        description="Comma-separated name=WxH:cover|contain; each preset is made after every "
        "upload, never larger than the original.",
    )
    variant_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes making variants, apart from the upload codec workers and at "
        "a lower CPU priority, so uploads never wait for them.",
    )
    variants_after_upload: bool = Field(
        True,
        description="Make every preset in the background after each upload; off: a variant is "
        "made when first asked for (or by `imagegate variants rebuild`).",
    )
    variant_yield_to_uploads: bool = Field(
        True,
        description="Stop this process's variant workers while it handles uploads (0.4 s at "
        "most, then 0.1 s of work): on a small machine, encoding beside an upload slows it "
        "even at the lowest CPU priority. Variants someone waits for are never held back.",
    )
    variant_signing_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys (16+ characters) for signed custom-size URLs; the "
        "first signs, all verify (rotate by putting the new key first). None: custom sizes "
        "for owners only.",
    )
    variant_custom_keep_days: float = Field(
        7.0, gt=0, description="A custom size unused this long is removed."
    )

    # Operator conveniences
    demo: bool = False

    @field_validator("variant_presets")
    @classmethod
    def _check_presets(cls, value: str) -> str:
        from imagegate.variants.presets import parse_presets  # pure; no import cycle

        parse_presets(value)  # refused at start, with the item that is wrong
        return value

    @field_validator("variant_signing_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("variant_signing_keys")
    @classmethod
    def _check_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(k.get_secret_value()) < 16 for k in value):
            raise ValueError("each variant signing key needs 16 characters or more")
        return value

    @field_validator("trusted_proxies", "webhook_allowed_networks", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        # Refused at start in every role, not at the first registration or delivery.
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"not a network: {network!r} (e.g. 127.0.0.0/8)") from exc
        return value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls or self.tls_cert is not None

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'imagegate.db').resolve()}"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with explicit (CLI) values taking precedence."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
