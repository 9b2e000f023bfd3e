"""One settings model for every ``THATDAM_*`` environment variable (documented in README).

Invalid values become a one-line ``ConfigError`` naming the variable, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, AmqpDsn, Field, RedisDsn, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from thatdam_bus.discovery.records import cloud_endpoints
from thatdam_bus.errors import ConfigError
from thatdam_bus.recorder.durations import parse_duration

RoleSetting = Literal["auto", "solo", "leader", "worker", "proxy"]


def default_state_dir() -> Path:
    """``/var/lib/thatdam`` as root (as in the seeds), else the XDG state directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/thatdam")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "thatdam"


class Settings(BaseSettings):
    """Node and tool configuration. Every field reads ``THATDAM_<NAME>`` unless an alias says otherwise."""

    model_config = SettingsConfigDict(env_prefix="THATDAM_", extra="ignore", frozen=True, populate_by_name=True)

    amqp_url: AmqpDsn | None = Field(default=None, description="RabbitMQ URL; unset or unreachable -> embedded")
    redis_url: RedisDsn | None = Field(default=None, description="Redis URL for the leader lease")
    state_dir: Path = Field(default_factory=default_state_dir, description="node_id, cluster.json, bus.sock")
    prefix: str = Field(
        default="thatdam",
        pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        validation_alias=AliasChoices("THATDAM_PREFIX", "EVENT_PREFIX"),
        description="topic exchange name (the seeds' EVENT_PREFIX)",
    )
    cluster: str = Field(default="default", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    role: RoleSetting = Field(
        default="auto", validation_alias=AliasChoices("THATDAM_ROLE", "ROLE"), description="pin a role"
    )
    heartbeat_interval: float = Field(default=1.0, gt=0, le=60, description="seconds between heartbeats")
    lease_ttl: float = Field(default=5.0, ge=0.5, le=600, description="leader lease time-to-live, seconds")
    probe_interval: float = Field(default=1.0, gt=0, le=60, description="seconds between infrastructure probes")
    sources: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="capture sources, comma-separated device=source (e.g. cam0=test://bars)"
    )
    blob_dir: Path | None = Field(default=None, description="JPEG blob store; default <state_dir>/blobs")
    blob_max_count: int | None = Field(default=10_000, ge=1, description="retention: at most this many blobs")
    blob_max_bytes: int | None = Field(default=1 << 30, ge=1, description="retention: at most this many bytes")
    blob_grace_s: float = Field(default=3600.0, ge=0, description="retention never evicts younger blobs")
    capture_fps: float | None = Field(default=None, gt=0, le=120, description="sampled per second; unset: keyframes")
    thumbnail_width: int = Field(default=320, ge=16, le=4096, description="JPEG width in pixels")
    capture_retry_s: float = Field(default=0.5, gt=0, le=60, description="first capture retry delay, seconds")
    capture_retry_max_s: float = Field(default=30.0, gt=0, le=3600, description="capture retry delay cap, seconds")
    proxy_interval: float = Field(default=1.0, gt=0, le=3600, description="proxy: seconds between relays")
    max_attempts: int = Field(default=3, ge=1, le=100, description="deliveries before a message is dead-lettered")
    max_message_bytes: int = Field(default=1_048_576, ge=1024, description="larger bodies are dead-lettered")
    connect_timeout: float = Field(default=3.0, gt=0, le=120, description="first-connect deadline, seconds")
    queue_type: Literal["classic", "quorum"] = Field(
        default="classic", description="RabbitMQ type of the durable work queues (quorum: replicated)"
    )
    outbox_max_events: int = Field(default=100_000, ge=1, description="durable events held while the broker is away")
    outbox_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="bytes the outbox may hold")
    services: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="handler modules (under handlers/) this node runs, comma-separated"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cluster_key: SecretStr | None = Field(default=None, description="shared secret that signs intents")
    cluster_key_file: Path | None = Field(default=None, description="file holding the cluster key")
    cluster_key_previous: SecretStr | None = Field(
        default=None, description="key being rotated out: still verifies, never signs"
    )
    cluster_key_previous_file: Path | None = Field(default=None, description="file holding the previous key")
    intent_max_skew_s: float = Field(default=30.0, ge=0, le=3600, description="allowed clock skew")
    intent_ttl_s: float = Field(default=60.0, gt=0, le=86_400, description="intent lifetime, seconds")
    nonce_cache_size: int = Field(default=100_000, ge=1, description="nonces kept (replay guard)")
    intent_rate: float = Field(default=20.0, gt=0, le=1_000_000, description="intents per second from one source")
    intent_burst: int = Field(default=100, ge=1, le=1_000_000, description="intents one source may send at once")
    recorder_max_age: float = Field(default=86_400.0, gt=0, description="flight recorder keeps events this long "
                                    "(seconds, or 10m / 24h / 7d)")
    recorder_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0,
                                    description="flight recorder size bound in bytes; 0 turns the recorder off")
    recorder_segment_bytes: int = Field(default=8 * 1024 * 1024, ge=1024 * 1024,
                                        description="recorder segment size: retention drops whole segments (at "
                                        "least 1 MiB: on RabbitMQ a segment of headroom must hold the chunk that "
                                        "overshoots a segment and what lands while retention runs, about 100 kB "
                                        "at full speed; with 60 kB segments the stream's files passed the bound)")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics port; unset: off")
    metrics_host: str = Field(default="127.0.0.1", min_length=1, description="address the metrics endpoint binds")
    mdns: bool = Field(default=True, description="advertise this node and browse for peers over mDNS (on/off)")
    mdns_interfaces: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="interfaces (names or IPv4 addresses) mDNS uses; default: every reachable one"
    )
    amqp_user: str = Field(default="guest", min_length=1, description="RabbitMQ user for discovered endpoints")
    amqp_password: SecretStr = Field(default=SecretStr("guest"), description="its password (never advertised)")
    amqp_password_file: Path | None = Field(default=None, description="file holding the RabbitMQ password")
    redis_password: SecretStr | None = Field(default=None, description="Redis password for discovered endpoints")
    cloud_control_url: str | None = Field(
        default=None, validation_alias=AliasChoices("CLOUD_CONTROL_URL", "THATDAM_CLOUD_CONTROL_URL"),
        description="hint after mDNS: a URL whose query names the endpoints (?amqp=host:port&redis=host:port)",
    )

    @field_validator("services", "sources", "mdns_interfaces", mode="before")
    @classmethod
    def _split_services(cls, value: object) -> object:
        """Comma-separated in the environment (``membership,capture``), a sequence in code."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("recorder_max_age", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        """``THATDAM_RECORDER_MAX_AGE`` may be written ``600``, ``10m``, ``24h`` or ``7d``."""
        return parse_duration(value) if isinstance(value, str | int | float) else value

    @field_validator("cloud_control_url")
    @classmethod
    def _check_cloud_hint(cls, value: str | None) -> str | None:
        if value is not None:
            cloud_endpoints(value)  # ValueError: names no amqp endpoint, or a malformed one
        return value

    @property
    def socket_path(self) -> Path:
        """Where a solo node's embedded broker listens for local tools."""
        return self.state_dir / "bus.sock"


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a bad value raises ``ConfigError`` with one line per problem."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            if not name.startswith("THATDAM_") and name not in {"ROLE", "EVENT_PREFIX", "CLOUD_CONTROL_URL"}:
                name = f"THATDAM_{name}"
            problems.append(f"invalid {name}: {error['msg']}")
        raise ConfigError("; ".join(problems)) from None
