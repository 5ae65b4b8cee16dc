"""Settings: the deployment from the environment, the site from mailer.toml, read once and passed down."""

from __future__ import annotations

import secrets
import tomllib
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from mailer.errors import ConfigError
from mailer.ratelimit import Bucket, Rate


class Settings(BaseSettings):
    """The deployment: where the store, broker and relay are. Only this differs between setups."""

    model_config = SettingsConfigDict(env_prefix="MAILER_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///mailer.db"
    broker_url: str = ""  # empty: the embedded broker in the instance folder, no server needed
    redis_url: str = ""  # empty: the broker's, when that is Redis; else in-process rate limits
    smtp_url: str = "maildir:./outbox"
    base_url: str = "http://localhost:8000"
    secret_key: str = ""  # empty: generated into the instance folder on first run
    api_token: str = ""
    home: Path = Path()

    @property
    def instance_dir(self) -> Path:
        """Files the engine writes for itself: the generated secret key, the embedded broker."""
        return self.home / "instance"

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.instance_dir / 'broker.sqlite').resolve()}"

    @property
    def effective_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return ""

    def effective_secret_key(self) -> str:
        """The configured key, else the instance folder's, generated on first use."""
        if self.secret_key:
            return self.secret_key
        path = self.instance_dir / "secret_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two processes starting at once must not end up with different keys.
            try:
                with path.open("x", encoding="ascii") as f:
                    f.write(secrets.token_urlsafe(48))
                path.chmod(0o600)
            except FileExistsError:
                pass
        return path.read_text(encoding="ascii").strip()


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"environment: MAILER_{str(first['loc'][0]).upper()}: {first['msg']}") from None


@dataclass(frozen=True)
class Sender:
    """Who sends: what 特定電子メール法 requires in every mail."""

    name: str
    address: str  # the From address
    postal_address: str
    contact: str
    disclaimer: str
    unsubscribe_mailto: str  # for the mailto of List-Unsubscribe

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True)
class BlockedProvider:
    """Domains a provider is known to drop our mail for; a pattern ending in `.*` means any public suffix."""

    provider: str
    domains: tuple[str, ...]


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time


@dataclass(frozen=True)
class Signup:
    blocked: tuple[BlockedProvider, ...]
    confirmations_per_day: int = 3  # per address, so the form cannot bomb an inbox
    per_client_per_hour: int = 20  # sign-ups per client address
    confirm_days: int = 7  # how long a confirmation link works
    check_deliverability: bool = False  # DNS lookups at sign-up; slow or wrong where DNS is closed


@dataclass(frozen=True)
class DeliveryPolicy:
    """How the workers claim, send and retry: batch sizes, leases, backoff, the scheduler's tick."""

    batch_size: int = 200
    lease: timedelta = timedelta(minutes=5)
    commit_every: int = 20  # rows marked sent per commit: a crash re-sends at most this many
    max_attempts: int = 8
    retry_base: timedelta = timedelta(minutes=1)
    retry_cap: timedelta = timedelta(hours=2)
    tick_seconds: float = 5.0
    max_lateness: timedelta = timedelta(hours=6)


def within(domain: str, parent: str) -> bool:
    """`domain` is `parent` or one of its subdomains: mail.example.com is within example.com."""
    return domain == parent or domain.endswith("." + parent)


@dataclass(frozen=True)
class DomainLimit:
    """Rates for each of these recipient domains (and their subdomains), each domain its own bucket."""

    domains: tuple[str, ...]
    rates: tuple[Rate, ...]


@dataclass(frozen=True)
class Limits:
    """How fast mail may leave: the relay's rates, and per recipient domain (carriers throttle)."""

    relay: tuple[Rate, ...] = ()
    domains: tuple[DomainLimit, ...] = ()

    def buckets_for(self, recipient: str) -> list[Bucket]:
        buckets = [Bucket(f"relay:{rate.count}/{rate.per.total_seconds():g}", rate) for rate in self.relay]
        domain = recipient.rpartition("@")[2].lower()
        for rule in self.domains:
            matched = next((d for d in rule.domains if within(domain, d)), None)
            if matched is not None:
                buckets += [
                    Bucket(f"domain:{matched}:{rate.count}/{rate.per.total_seconds():g}", rate)
                    for rate in rule.rates
                ]
                break
        return buckets


@dataclass(frozen=True)
class Site:
    """The site file: sender identity, sign-up policy, quiet hours. Content the operator edits."""

    sender: Sender
    signup: Signup
    quiet_hours: QuietHours | None
    delivery: DeliveryPolicy
    default_sequence: str
    limits: Limits = field(default_factory=Limits)
    locale: str = "ja"
    home: Path = field(default=Path())


DEFAULT_BLOCKED = (
    BlockedProvider("iCloud", ("icloud.com", "me.com", "mac.com")),
    BlockedProvider("Hotmail", ("hotmail.*",)),
    BlockedProvider("Outlook", ("outlook.*",)),
    BlockedProvider("docomo", ("docomo.ne.jp",)),
    BlockedProvider("au (ezweb)", ("ezweb.ne.jp",)),
)
LOCALES = ("ja", "en")


def _time(value: object, where: str) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(f'{where}: expected a time like "09:00", got {value!r}') from None


def _duration(value: object, where: str) -> timedelta:
    """`90s`, `5m`, `6h`, `2d`, or a number of seconds."""
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return timedelta(seconds=float(text))
    except ValueError:
        raise ConfigError(f'{where}: expected a duration like "6h", got {value!r}') from None


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _rates(value: object, where: str) -> tuple[Rate, ...]:
    if not isinstance(value, list):
        raise ConfigError(f'{where}: expected a list of rates like ["20/s", "30000/h"]')
    return tuple(Rate.parse(item, where) for item in value)


def _limits(data: dict[str, Any], where: str) -> Limits:
    rules = data.get("domains", [])
    if not isinstance(rules, list) or not all(
        isinstance(r, dict) and isinstance(r.get("domains"), list) for r in rules
    ):
        raise ConfigError(f"{where}: each [[limits.domains]] needs domains = [...] and rates = [...]")
    return Limits(
        relay=_rates(data.get("relay", []), f"{where}: limits.relay"),
        domains=tuple(
            DomainLimit(
                tuple(str(d).lower().strip(".") for d in rule["domains"]),
                _rates(rule.get("rates"), f"{where}: limits.domains"),
            )
            for rule in rules
        ),
    )


def load_site(home: Path) -> Site:
    """Read `mailer.toml`; every error names the file and the key."""
    path = home / "mailer.toml"
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found (set MAILER_HOME to the folder that has it)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from None

    sender_data = _table(data, "sender", where)
    missing = [
        k for k in ("name", "from", "postal_address", "contact", "disclaimer") if not sender_data.get(k)
    ]
    if missing:
        raise ConfigError(f"{where}: [sender] lacks {', '.join(missing)} (required in every mail by law)")
    address = str(sender_data["from"])
    sender = Sender(
        name=str(sender_data["name"]),
        address=address,
        postal_address=str(sender_data["postal_address"]),
        contact=str(sender_data["contact"]),
        disclaimer=str(sender_data["disclaimer"]),
        unsubscribe_mailto=str(sender_data.get("unsubscribe_mailto", address)),
    )

    signup_data = _table(data, "signup", where)
    blocked: tuple[BlockedProvider, ...] = DEFAULT_BLOCKED
    if "blocked" in signup_data:
        try:
            blocked = tuple(
                BlockedProvider(str(b["provider"]), tuple(str(d).lower() for d in b["domains"]))
                for b in signup_data["blocked"]
            )
        except (KeyError, TypeError):
            raise ConfigError(
                f'{where}: each [[signup.blocked]] needs provider = "..." and domains = [...]'
            ) from None
    signup = Signup(
        blocked=blocked,
        confirmations_per_day=int(signup_data.get("confirmations_per_day", 3)),
        per_client_per_hour=int(signup_data.get("per_client_per_hour", 20)),
        confirm_days=int(signup_data.get("confirm_days", 7)),
        check_deliverability=bool(signup_data.get("check_deliverability", False)),
    )

    quiet: QuietHours | None = QuietHours(time(21), time(8))
    quiet_data = _table(data, "quiet_hours", where)
    if quiet_data.get("enabled", True) is False:
        quiet = None
    elif quiet_data:
        quiet = QuietHours(
            _time(quiet_data.get("start", "21:00"), f"{where}: quiet_hours.start"),
            _time(quiet_data.get("end", "08:00"), f"{where}: quiet_hours.end"),
        )

    d = _table(data, "delivery", where)
    delivery = DeliveryPolicy(
        batch_size=int(d.get("batch_size", 200)),
        lease=_duration(d.get("lease", "5m"), f"{where}: delivery.lease"),
        commit_every=int(d.get("commit_every", 20)),
        max_attempts=int(d.get("max_attempts", 8)),
        retry_base=_duration(d.get("retry_base", "1m"), f"{where}: delivery.retry_base"),
        retry_cap=_duration(d.get("retry_cap", "2h"), f"{where}: delivery.retry_cap"),
        tick_seconds=_duration(d.get("tick", "5s"), f"{where}: delivery.tick").total_seconds(),
        max_lateness=_duration(d.get("max_lateness", "6h"), f"{where}: delivery.max_lateness"),
    )

    limits = _limits(_table(data, "limits", where), where)

    locale = str(data.get("locale", "ja"))
    if locale not in LOCALES:
        raise ConfigError(f"{where}: locale must be one of {', '.join(LOCALES)}, got {locale!r}")
    default_sequence = str(data.get("default_sequence", ""))
    if not default_sequence:
        raise ConfigError(f"{where}: default_sequence is required (the seminar the form signs up to)")
    return Site(
        sender=sender,
        signup=signup,
        quiet_hours=quiet,
        delivery=delivery,
        default_sequence=default_sequence,
        limits=limits,
        locale=locale,
        home=home,
    )
