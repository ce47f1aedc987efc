"""kanal's configuration as inert, frozen data.

Ownership rule: this module only *describes* settings. Reading TOML, environment variables
and command-line flags happens in :mod:`kanal.settings` (one table drives all three and the
docs); nothing here opens files, sockets or reads the clock.

Names follow limits.md in snake_case; each default is the documented one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "App",
    "AppsStoreSettings",
    "Config",
    "ScalingSettings",
    "ServerSettings",
    "WebhookSettings",
    "WebhookTarget",
]


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """One ``[[apps.webhooks]]`` entry (webhooks.md §1)."""

    url: str
    event_types: tuple[str, ...]
    headers: tuple[tuple[str, str], ...] = ()
    filter_channel_prefix: str = ""
    filter_channel_suffix: str = ""


@dataclass(frozen=True, slots=True)
class App:
    """One application: credentials, feature switches and limits (limits.md §1)."""

    id: str
    key: str
    secret: str
    enabled: bool = True
    # Secret rotation: signatures made with previous_secret are accepted until
    # previous_secret_expires_at (Unix seconds); webhooks are always signed with ``secret``.
    previous_secret: str = ""
    previous_secret_expires_at: float = 0.0
    enable_client_messages: bool = False
    enable_encrypted_client_messages: bool = False
    enable_user_authentication: bool = False
    user_authentication_timeout: float = 30.0
    enable_subscription_count: bool = False
    enable_encrypted_subscription_count: bool = False
    enable_watchlist_events: bool = False
    require_tls: bool = False
    allowed_origins: tuple[str, ...] = ()
    activity_timeout: int = 120
    pong_timeout: float = 30.0
    max_connections: int = 0
    max_client_events_per_second: int = 10
    max_presence_members: int = 100
    max_presence_user_info_bytes: int = 1024
    max_presence_user_id_length: int = 128
    max_channel_name_length: int = 164
    max_event_name_length: int = 200
    max_event_payload_bytes: int = 10240
    max_event_batch_size: int = 10
    max_channels_per_trigger: int = 100
    max_watchlist_size: int = 100
    max_backend_requests_per_second: int = 0
    max_read_requests_per_second: int = 0
    cache_ttl: int = 1800
    max_timestamp_skew: int = 600
    batch_webhooks: bool = False
    webhook_url: str = ""  # shorthand, folded into ``webhooks`` by kanal.settings
    webhooks: tuple[WebhookTarget, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: where and how the process listens."""

    host: str = "127.0.0.1"
    port: int = 6001
    api_host: str = ""  # empty: the same interface as ``host``
    api_port: int = 0  # 0: the HTTP API is served on ``port``
    websocket_host: str = ""
    websocket_port: int = 0  # 0: WebSocket connections are accepted on ``port``
    path_prefix: str = ""
    max_connections: int = 0
    max_connections_per_ip_per_second: int = 0
    max_frame_bytes: int = 262144
    max_request_bytes: int = 1048576
    max_output_buffer_bytes: int = 1048576
    drain_grace: float = 2.0
    drain_seconds: float = 10.0
    shutdown_timeout: float = 10.0
    expose_signature_hint: bool = True
    strict_protocol_version: bool = False
    log_level: str = "info"
    log_format: str = "text"
    verbose: bool = False
    workers: int = 1
    pid_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    trust_proxy_headers: bool = False
    coalesce_writes: bool = True
    admin_token: str = field(default="", repr=False)  # a password: never in a repr or a log
    metrics_port: int = 0
    http_transports: bool = True
    http_session_timeout: float = 10.0
    http_heartbeat: float = 25.0


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """``[webhooks]``: delivery behaviour shared by every target (webhooks.md §4-5), the
    in-process hooks of an embedded app included (``hook_*``, docs/embedding.md)."""

    grace_period: float = 3.0
    batch_window: float = 0.05
    max_batch_size: int = 100
    request_timeout: float = 10.0
    retry_window: float = 300.0
    max_queue: int = 10000
    shutdown_timeout: float = 5.0
    hook_timeout: float = 10.0
    hook_max_queue: int = 10000


@dataclass(frozen=True, slots=True)
class ScalingSettings:
    """``[scaling]``: the adapter behind the horizontal-scaling seam."""

    adapter: str = "memory"
    redis_url: str = ""
    redis_prefix: str = "kanal"
    node_lease: float = 30.0
    redis_fanout: str = "node"


@dataclass(frozen=True, slots=True)
class AppsStoreSettings:
    """``[apps_store]``: where the apps live (docs/apps.md): the ``[[apps]]`` of the file when
    ``url`` is empty, else a SQL database, whose apps each node caches for ``ttl`` seconds."""

    url: str = field(default="", repr=False)  # may hold a database password
    ttl: float = 5.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole effective configuration of one kanal process."""

    server: ServerSettings = field(default_factory=ServerSettings)
    apps: tuple[App, ...] = ()
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    apps_store: AppsStoreSettings = field(default_factory=AppsStoreSettings)
