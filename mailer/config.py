"""Settings: the deployment from the environment, the site from mailer.toml, read once and passed down."""

from __future__ import annotations

import difflib
import secrets
import tomllib
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
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


# The site file's schema. Each table is a frozen dataclass that pydantic fills from the TOML, so the
# objects the engine reads are the schema itself and each default is written once, here (mailer.toml
# repeats them as documentation). Values are strict: TOML has types, and `batch_size = "200"` or
# `confirm_days = true` is a slip the operator wants to hear about, not something to guess at.
_TABLE = ConfigDict(extra="forbid")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    number, unit = (text[:-1], _UNITS[text[-1]]) if text[-1:] in _UNITS else (text, 1)
    try:
        return float(number) * unit
    except ValueError:
        return None


def _duration(value: object) -> timedelta:
    """`90s`, `5m`, `6h`, `2d`, or a number of seconds; above zero."""
    if isinstance(value, timedelta):
        return value
    seconds = _seconds(value)
    try:
        duration = timedelta(seconds=seconds) if seconds is not None else None
    except (ValueError, OverflowError):  # nan, inf
        duration = None
    if duration is None:
        hint = '"90s", "5m", "6h", "2d" or a number of seconds'
        raise ValueError(f"expected a duration like {hint}, got {value!r}")
    if duration <= timedelta(0):
        raise ValueError(f"expected a duration above zero, got {value!r}")
    return duration


def _time_of_day(value: object) -> time:
    """`"09:00"` (or a TOML local time, 09:00:00): a wall-clock time without a zone."""
    parsed = value if isinstance(value, time) else None
    if isinstance(value, str):
        try:
            parsed = time.fromisoformat(value.strip())
        except ValueError:
            parsed = None
    if parsed is None or parsed.tzinfo is not None:
        raise ValueError(f'expected a local time like "09:00", got {value!r}')
    return parsed


def _rates(value: object) -> object:
    if not isinstance(value, list | tuple):
        raise ValueError(  # noqa: TRY004 (pydantic reports a ValueError, with the key; a TypeError escapes)
            f'expected a list of rates like ["20/s", "30000/h"], got {value!r}'
        )
    return value


def _address(value: str) -> str:
    if value.count("@") != 1 or value.startswith("@") or value.endswith("@"):
        raise ValueError(f"expected an address like seminar@example.jp, got {value!r}")
    return value


Text = Annotated[StrictStr, Field(min_length=1)]
Count = Annotated[StrictInt, Field(gt=0)]
Duration = Annotated[timedelta, PlainValidator(_duration)]
Seconds = Annotated[float, PlainValidator(lambda value: _duration(value).total_seconds())]
TimeOfDay = Annotated[time, PlainValidator(_time_of_day)]
Domain = Annotated[Text, AfterValidator(lambda domain: domain.lower().strip("."))]
RateText = Annotated[
    Rate, PlainValidator(lambda value: value if isinstance(value, Rate) else Rate.from_text(value))
]
Rates = Annotated[tuple[RateText, ...], BeforeValidator(_rates)]
Locale = Literal["ja", "en"]
LOCALES: tuple[str, ...] = get_args(Locale)


def within(domain: str, parent: str) -> bool:
    """`domain` is `parent` or one of its subdomains: mail.example.com is within example.com."""
    return domain == parent or domain.endswith("." + parent)


@dataclass(frozen=True, config=_TABLE)
class Sender:
    """Who sends: what 特定電子メール法 requires in every mail."""

    name: Text
    address: Annotated[Text, Field(alias="from"), AfterValidator(_address)]  # the From address
    postal_address: Text
    contact: Text
    disclaimer: Text
    # for the mailto of List-Unsubscribe; empty: the From address
    unsubscribe_mailto: Annotated[StrictStr, Field(validate_default=True)] = ""

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _or_from(cls, value: str, info: ValidationInfo) -> str:
        return value or info.data.get("address", "")

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True, config=_TABLE)
class BlockedProvider:
    """Domains a provider is known to drop our mail for; a pattern ending in `.*` means any public suffix."""

    provider: Text
    domains: tuple[Domain, ...]


DEFAULT_BLOCKED = (
    BlockedProvider("iCloud", ("icloud.com", "me.com", "mac.com")),
    BlockedProvider("Hotmail", ("hotmail.*",)),
    BlockedProvider("Outlook", ("outlook.*",)),
    BlockedProvider("docomo", ("docomo.ne.jp",)),
    BlockedProvider("au (ezweb)", ("ezweb.ne.jp",)),
)


@dataclass(frozen=True, config=_TABLE)
class QuietHours:
    """Local wall-clock times between which a step waits; the window may wrap midnight."""

    start: TimeOfDay = time(21)
    end: TimeOfDay = time(8)
    # `enabled = false` in the file: Site holds None instead, so the engine never sees False here.
    enabled: StrictBool = True


@dataclass(frozen=True, config=_TABLE)
class Signup:
    blocked: tuple[BlockedProvider, ...] = DEFAULT_BLOCKED
    confirmations_per_day: Count = 3  # per address, so the form cannot bomb an inbox
    per_client_per_hour: Count = 20  # sign-ups per client address
    confirm_days: Count = 7  # how long a confirmation link works
    check_deliverability: StrictBool = False  # DNS lookups at sign-up; slow or wrong where DNS is closed


@dataclass(frozen=True, config=_TABLE)
class DeliveryPolicy:
    """How the workers claim, send and retry: batch sizes, leases, backoff, the scheduler's tick."""

    batch_size: Count = 200
    lease: Duration = timedelta(minutes=5)
    commit_every: Count = 20  # rows marked sent per commit: a crash re-sends at most this many
    max_attempts: Count = 8
    retry_base: Duration = timedelta(minutes=1)
    retry_cap: Duration = timedelta(hours=2)
    tick_seconds: Annotated[Seconds, Field(alias="tick")] = 5.0
    max_lateness: Duration = timedelta(hours=6)


@dataclass(frozen=True, config=_TABLE)
class DomainLimit:
    """Rates for each of these recipient domains (and their subdomains), each domain its own bucket."""

    domains: tuple[Domain, ...]
    rates: Rates


@dataclass(frozen=True, config=_TABLE)
class Limits:
    """How fast mail may leave: the relay's rates, and per recipient domain (carriers throttle)."""

    relay: Rates = ()
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


@dataclass(frozen=True, config=_TABLE)
class Site:
    """The site file: sender identity, sign-up policy, quiet hours. Content the operator edits."""

    sender: Sender
    default_sequence: Text  # the seminar the sign-up form enrols in
    # The mail magazine's file under sequences/ (broadcast-only: `steps = []`): its title is in
    # every issue's footer and List-Id, its time zone is for readers whose own is unknown.
    magazine: Text = "magazine"
    signup: Signup = Signup()
    quiet_hours: QuietHours | None = QuietHours()
    delivery: DeliveryPolicy = DeliveryPolicy()
    limits: Limits = Limits()
    locale: Locale = "ja"
    home: Path = Path()  # where the file was found (MAILER_HOME), never a key in it

    @field_validator("quiet_hours")
    @classmethod
    def _switched_off(cls, value: QuietHours | None) -> QuietHours | None:
        return value if value is not None and value.enabled else None


_SITE = TypeAdapter(Site)
# Why a key is required, for the message that says it is missing.
_REQUIRED_BECAUSE = {
    "sender": "required in every mail by law",
    "default_sequence": "the seminar the form signs up to",
}


def load_site(home: Path) -> Site:
    """Read `mailer.toml`; every error is one line naming the file, the key and what is wrong."""
    path = home / "mailer.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (set MAILER_HOME to the folder that has it)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if "home" in data:
        raise ConfigError(f"{path}: home: unknown key (the site's folder is MAILER_HOME)")
    try:
        return _SITE.validate_python({**data, "home": home})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc.errors())}") from None


def _describe(errors: list[ErrorDetails]) -> str:
    """The first problem as `key: what is wrong`; the keys the law requires are named together."""
    lacking = {key for e in errors for key in _sender_lacks(e)}
    if lacking:
        rest = sum(1 for e in errors if not _sender_lacks(e))
        keys = ", ".join(k for k in _keys(Sender) if k in lacking)
        first = f"[sender] lacks {keys} ({_REQUIRED_BECAUSE['sender']})"
    else:
        rest, first = len(errors) - 1, _one(errors[0])
    return first + (f" (and {rest} more)" if rest else "")


def _sender_lacks(error: ErrorDetails) -> list[str]:
    """The keys of [sender] this error says are missing or empty; none if it is about something else."""
    loc = error["loc"]
    if loc[:1] != ("sender",) or len(loc) > 2 or error["type"] not in {"missing", "string_too_short"}:
        return []
    if len(loc) == 2:
        return [str(loc[1])]
    return [k for k, f in _fields(Sender).items() if f.is_required()] if error["type"] == "missing" else []


def _path(loc: tuple[int | str, ...]) -> str:
    """`delivery.batch_size`, `signup.blocked[0].provider`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _fields(table: Any) -> dict[str, FieldInfo]:
    """A table's fields by their key in the file (the alias where there is one)."""
    fields: dict[str, FieldInfo] = table.__pydantic_fields__
    return {f.alias or name: f for name, f in fields.items() if name != "home"}


def _keys(table: Any) -> list[str]:
    return list(_fields(table))


def _table_at(loc: tuple[int | str, ...]) -> Any:
    """The schema class of the table at `loc`: Site, Sender, DomainLimit, ..."""
    table: Any = Site
    for part in loc:
        if isinstance(part, str):
            annotation = _fields(table)[part].annotation
            table = next(t for t in _types(annotation) if hasattr(t, "__pydantic_fields__"))
    return table


def _types(annotation: Any) -> list[Any]:
    return [annotation, *(t for arg in get_args(annotation) for t in _types(arg))]


def _one(error: ErrorDetails) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    key_of_value = loc
    while kind != "dataclass_type" and key_of_value and isinstance(key_of_value[-1], int):
        # a value in a list (a rate, a domain) names the list; a table in one keeps its number
        key_of_value = key_of_value[:-1]
    got = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    if kind == "missing" or (kind == "string_too_short" and len(loc) == 1):
        key, table = str(loc[-1]), loc[:-1]
        why = f" ({_REQUIRED_BECAUSE[key]})" if key in _REQUIRED_BECAUSE else ""
        if not table:
            return f"{key} is required{why}"
        if isinstance(table[-1], int):
            return f"{_path(table)}: each [[{_path(table[:-1])}]] needs {key}"
        return f"[{_path(table)}] lacks {key}{why}"
    if kind == "unexpected_keyword_argument":
        known = _keys(_table_at(loc[:-1]))
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]}?" if close else f"the keys here are {', '.join(known)}"
        return f"{_path(loc)}: unknown key ({hint})"
    what = {
        "int_type": f"expected a whole number, got {got}",
        "greater_than": f"expected a whole number above {error.get('ctx', {}).get('gt')}, got {got}",
        "bool_type": f"expected true or false, got {got}",
        "string_type": f"expected text in quotes, got {got}",
        "string_too_short": "must not be empty",
        "tuple_type": f"expected a list [...], got {got}",
        "dataclass_type": f"expected a table, got {got}",
        "literal_error": f"must be {error.get('ctx', {}).get('expected')}, got {got}",
        "value_error": str(error.get("ctx", {}).get("error")),
    }.get(kind, f"{error['msg']}, got {got}")
    return f"{_path(key_of_value)}: {what}"
