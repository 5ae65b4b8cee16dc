"""The deployment files (Dockerfile, docker-compose.yml, .env.example) agree with the code they run."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.core
import typer.main

from mailer.cli import app
from mailer.config import Settings
from tests.compose import COMPOSE_FILE, compose_commands, healthcheck_argv, load_compose, mailer_services

REPO = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

MAILER_SERVICES = ["migrate", "web", "worker", "beat"]
ALL_SERVICES = {"postgres", "redis", *MAILER_SERVICES, "mailpit"}
LONG_RUNNING = ALL_SERVICES - {"migrate"}

# A key's line in .env.example: `MAILER_X=value`, or `# MAILER_X=value` when the default is kept.
KEY_LINE = re.compile(r"^(?:#\s*)?(MAILER_[A-Z0-9_]+)=(.*)$")
# `${NAME}`, `${NAME:-default}`, `${NAME:?error}`: Compose's interpolation (not `$${...}`).
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


# --- helpers -------------------------------------------------------------------------------------


def env_example_keys() -> dict[str, tuple[str, list[str]]]:
    """Each key's example value and the comment lines above it (back to the previous key or blank)."""
    keys: dict[str, tuple[str, list[str]]] = {}
    comments: list[str] = []
    for raw in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        match = KEY_LINE.match(line)
        if match and not line.startswith("#   "):  # an indented `#   MAILER_X=...` is an example
            name, value = match.groups()
            assert name not in keys, f".env.example: {name} appears twice"
            keys[name] = (value, comments)
            comments = []
        elif line.startswith("#"):
            comments.append(line.lstrip("# "))
        else:
            comments = []  # a blank line ends a block: the file's header is no key's explanation
    return keys


def settings_keys() -> dict[str, str]:
    """MAILER_<FIELD> -> the field's default, as a .env file would spell it."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): str(field.default) for name, field in Settings.model_fields.items()}


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load_compose()["services"]
    return found


def default_of(value: str) -> str:
    """`${MAILER_SMTP_URL:-smtp://mailpit:1025}` -> its default; a plain value is itself."""
    match = INTERPOLATION.fullmatch(value)
    if match is None:
        return value
    return match.group(3) if match.group(2) == "-" else ""


# The command objects are Click's (typer 0.29 vendors Click, so its classes are reached through the
# objects typer builds rather than imported from `click`).
def subcommand(argv: list[str]) -> tuple[list[str], Any, list[str], Any]:
    """Walk `mailer`'s groups along argv: the subcommand's path, the command, its arguments, its parent.

    Raises Click's UsageError for an unknown subcommand.
    """
    command: Any = typer.main.get_command(app)
    parent = command.context_class(command, info_name="mailer")
    path: list[str] = []
    args = list(argv)
    while isinstance(command, typer.core.TyperGroup):
        name, sub, args = command.resolve_command(parent, args)
        assert name is not None
        assert sub is not None
        path.append(name)
        command = sub
        if isinstance(command, typer.core.TyperGroup):
            parent = command.context_class(command, info_name=name, parent=parent)
    return path, command, args, parent


def resolve(argv: list[str]) -> tuple[list[str], Any]:
    """Parse argv as the `mailer` command would, without running it: the subcommand path, its context.

    Raises Click's UsageError for an unknown subcommand or option, or a value of the wrong type.
    """
    path, command, args, parent = subcommand(argv)
    return path, command.make_context(path[-1], args, parent=parent)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile: a continuation line ends the file"
    return instructions


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


# --- .env.example ----------------------------------------------------------------------------------


def test_env_example_has_every_setting_and_no_other_key() -> None:
    """Each Settings field is documented as MAILER_<FIELD>, and every key there is a real field."""
    documented = set(env_example_keys())
    fields = set(settings_keys())
    assert fields - documented == set(), "Settings fields missing from .env.example"
    assert documented - fields == set(), ".env.example keys that mailer.config.Settings does not read"


def test_env_example_lines_show_the_defaults() -> None:
    """Each key's line is its default, so a default changed in config.py cannot go unnoticed here."""
    defaults = settings_keys()
    for name, (value, _) in env_example_keys().items():
        assert value == defaults[name], (
            f".env.example: {name}={value!r}, but the default is {defaults[name]!r}"
        )


def test_env_example_explains_each_key_and_its_default() -> None:
    """Every key has comment lines above it that say what it is and what its default is."""
    for name, (_, comments) in env_example_keys().items():
        text = " ".join(comments)
        assert len(comments) >= 2, f".env.example: {name} has no explanation above it"
        assert "Default:" in text, f".env.example: {name} does not state its default"


def test_env_example_shows_embedded_and_production_values() -> None:
    """The store, broker and relay each show the embedded value and a production one."""
    keys = env_example_keys()
    examples = {
        "MAILER_DATABASE_URL": ["sqlite:///", "postgresql+psycopg://"],
        "MAILER_BROKER_URL": ["embedded", "redis://"],
        "MAILER_SMTP_URL": ["maildir:./outbox", "smtp://", "?starttls=1", "smtps://", "mailpit"],
        "MAILER_BASE_URL": ["https://"],
        "MAILER_SECRET_KEY": ["secrets.token_urlsafe", "docker-compose.yml"],
    }
    for name, needles in examples.items():
        text = " ".join(keys[name][1])
        for needle in needles:
            assert needle in text, f".env.example: the comment on {name} lacks {needle!r}"


def test_env_example_used_as_dotenv_is_the_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copying .env.example to .env changes nothing: no line there sets a value other than the default."""
    for name in list(os.environ):
        if name.upper().startswith("MAILER_"):
            monkeypatch.delenv(name)
    from_example = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]  # pydantic-settings' own keyword
    from_nothing = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_example.model_dump() == from_nothing.model_dump()


def test_env_example_leaves_secrets_empty() -> None:
    """No secret is shipped: the key and the API token are empty in the example."""
    keys = env_example_keys()
    assert keys["MAILER_SECRET_KEY"][0] == ""
    assert keys["MAILER_API_TOKEN"][0] == ""


# --- docker-compose.yml ----------------------------------------------------------------------------


def test_compose_has_the_stack_and_no_version_key() -> None:
    """The Compose-spec file names exactly the stack of the issue, and no obsolete `version:`."""
    data = load_compose()
    assert "version" not in data
    assert set(data["services"]) == ALL_SERVICES
    assert list(mailer_services()) == MAILER_SERVICES


def test_compose_commands_lists_each_mailer_service_argv() -> None:
    """compose_commands gives the argv that the chaos tests start, straight from the file."""
    commands = compose_commands()
    assert list(commands) == MAILER_SERVICES
    assert commands["migrate"] == ["db", "upgrade"]
    assert commands["beat"] == ["beat"]
    assert commands["web"][0] == "web"
    assert commands["worker"][0] == "worker"
    assert all(isinstance(arg, str) for argv in commands.values() for arg in argv)


@pytest.mark.parametrize("service", MAILER_SERVICES)
def test_compose_command_parses_as_a_mailer_command(service: str) -> None:
    """Every option a service passes exists on its subcommand and takes the value given."""
    argv = compose_commands()[service]
    path, ctx = resolve(argv)
    shapes: dict[str, tuple[list[str], dict[str, object]]] = {
        "migrate": (["db", "upgrade"], {}),
        "web": (["web"], {"host": "0.0.0.0", "port": 8000, "workers": 2}),
        "worker": (["worker"], {"concurrency": 2}),
        "beat": (["beat"], {}),
    }
    expected = shapes[service]
    assert (path, {k: ctx.params[k] for k in expected[1]}) == expected


@pytest.mark.parametrize("service", MAILER_SERVICES)
def test_compose_command_is_accepted_by_python_m_mailer(service: str) -> None:
    """`python -m mailer <subcommand> --help` exists and lists every option the service passes."""
    argv = compose_commands()[service]
    path, _, _, _ = subcommand(argv)
    options = [arg for arg in argv if arg.startswith("--")]
    result = subprocess.run(
        [sys.executable, "-m", "mailer", *path, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    missing = [option for option in options if option not in result.stdout]
    assert missing == [], f"`mailer {' '.join(path)} --help` does not list {missing}"


def test_mailer_services_share_one_image_and_the_stacks_urls() -> None:
    """migrate, web, worker and beat run one image, read .env, and reach the stack's own services."""
    all_services = services()
    postgres = all_services["postgres"]["environment"]
    url = (
        f"postgresql+psycopg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    images = set()
    for name, service in mailer_services().items():
        images.add((str(service["build"]), service["image"]))
        env_file = service["env_file"]
        assert ".env" in ([env_file] if isinstance(env_file, str) else env_file), name
        env = service["environment"]
        assert env["MAILER_DATABASE_URL"] == url, name
        assert env["MAILER_BROKER_URL"] == "redis://redis:6379/0", name
        assert default_of(env["MAILER_SMTP_URL"]) == "smtp://mailpit:1025", name
        assert service.get("init") is True, name
    assert images == {(".", "mailer:local")}


def test_compose_interpolates_only_documented_keys() -> None:
    """Each `${VAR}` the compose file reads from .env is a key that .env.example documents."""
    documented = set(env_example_keys())
    names = {match.group(1) for match in INTERPOLATION.finditer(COMPOSE_FILE.read_text(encoding="utf-8"))}
    assert names, "docker-compose.yml interpolates nothing: the relay and the key can't come from .env"
    assert names <= documented


def test_compose_requires_the_shared_secret_key() -> None:
    """Compose refuses to start without MAILER_SECRET_KEY: one generated per container breaks links."""
    for name, service in mailer_services().items():
        match = INTERPOLATION.fullmatch(service["environment"]["MAILER_SECRET_KEY"])
        assert match is not None, name
        assert (match.group(1), match.group(2)) == ("MAILER_SECRET_KEY", "?"), name


def test_long_running_services_have_healthchecks_and_restart() -> None:
    """Every service but the one-shot migration has a health check and restarts unless stopped."""
    for name in sorted(LONG_RUNNING):
        service = services()[name]
        test = service.get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        assert healthcheck_argv(service, name), name
        assert service.get("restart") == "unless-stopped", name
    migrate = services()["migrate"]
    assert migrate.get("restart") == "no"
    assert "healthcheck" not in migrate


def test_start_order_waits_for_health_and_the_migration() -> None:
    """migrate waits for a healthy PostgreSQL; web, worker and beat for the migration and Redis."""
    all_services = services()
    assert all_services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("web", "worker", "beat"):
        depends = all_services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    for name, service in all_services.items():
        for target, rule in service.get("depends_on", {}).items():
            if rule.get("condition") == "service_healthy":
                assert "healthcheck" in all_services[target], f"{name} waits for {target}'s health"


def test_worker_and_beat_can_be_scaled() -> None:
    """No fixed container name or published port: `--scale worker=3` starts three."""
    for name in ("worker", "beat", "migrate"):
        service = services()[name]
        assert "container_name" not in service, name
        assert "ports" not in service, name
    assert all("container_name" not in service for service in services().values())


def test_web_listens_where_it_is_published_and_checked() -> None:
    """The port web listens on is the one published and the one its health check asks /healthz on."""
    web = services()["web"]
    _, ctx = resolve(compose_commands()["web"])
    port = ctx.params["port"]
    assert ctx.params["host"] == "0.0.0.0"
    assert f"8000:{port}" in web["ports"]
    check = " ".join(healthcheck_argv(web))
    assert f"http://127.0.0.1:{port}/healthz" in check
    assert "curl" not in check  # the slim image has none
    assert "/healthz" in (REPO / "mailer" / "web" / "app.py").read_text(encoding="utf-8")


def test_worker_healthcheck_pings_its_own_node_through_the_broker() -> None:
    """The worker's check asks this container's Celery node, on the broker the worker uses."""
    check = healthcheck_argv(services()["worker"])
    assert check[:2] == ["sh", "-c"]
    words = shlex.split(check[2])
    assert words[:1] == ["celery"]
    assert words[words.index("--broker") + 1] == "$MAILER_BROKER_URL"
    assert words[words.index("inspect") + 1] == "ping"
    assert words[words.index("--destination") + 1] == "celery@$HOSTNAME"


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    """The database survives `docker compose down`; Redis holds nothing that needs keeping."""
    data = load_compose()
    assert "postgres:/var/lib/postgresql/data" in data["services"]["postgres"]["volumes"]
    assert "postgres" in data["volumes"]
    assert data["services"]["postgres"]["image"].startswith("postgres:16")
    assert data["services"]["redis"]["image"].startswith("redis:7")


def test_mailpit_shows_the_mail_the_stack_sends_to_this_machine_only() -> None:
    """Mailpit's UI is published on the loopback alone: it shows every confirmation and unsubscribe link."""
    mailpit = services()["mailpit"]
    assert mailpit["image"].startswith("axllent/mailpit")
    assert mailpit["ports"] == ["127.0.0.1:8025:8025"]


# --- Dockerfile and .dockerignore -------------------------------------------------------------------


def test_dockerfile_entrypoint_is_the_mailer_console_script() -> None:
    """The image runs `mailer <command>`, the console script that pyproject.toml declares."""
    entrypoints = [rest for keyword, rest in dockerfile_instructions() if keyword == "ENTRYPOINT"]
    assert entrypoints == ['["mailer"]']
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["mailer"] == "mailer.cli:main"


def test_dockerfile_installs_the_locked_dependencies_with_uv() -> None:
    """python:3.12-slim, uv from PyPI, `uv sync --frozen --no-dev`, never a downloaded Python."""
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.12-slim")
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert 'pip install "uv==' in runs
    syncs = [part.split("&&")[0].split() for part in runs.split("uv sync")[1:]]
    assert syncs, "the Dockerfile runs no `uv sync`"
    for options in syncs:
        assert options[:2] == ["--frozen", "--no-dev"], f"uv sync {' '.join(options)}"
    env = dockerfile_env()
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    assert env["MAILER_HOME"] == "/srv/mailer"
    assert env["PATH"].startswith(env["UV_PROJECT_ENVIRONMENT"] + "/bin:")


def test_dockerfile_runs_as_a_user_of_its_own() -> None:
    """The last USER is neither root nor uid 0."""
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_copies_the_site_into_mailer_home() -> None:
    """mailer.toml, sequences/ and templates/ land in MAILER_HOME, and .dockerignore lets them in."""
    copies = {tuple(rest.split()) for keyword, rest in dockerfile_instructions() if keyword == "COPY"}
    for source in ("mailer.toml", "sequences", "templates"):
        assert (source, f"/srv/mailer/{source}") in copies, source
    ignored = dockerignore_patterns()
    for sources in copies:
        for source in sources[:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
            hits = [pattern for pattern in ignored if fnmatch.fnmatch(source, pattern.rstrip("/"))]
            assert not hits, f".dockerignore {hits} hides {source}, which the Dockerfile copies"


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    """No virtualenv, git history, database, instance folder, outbox or .env in the build context."""
    ignored = set(dockerignore_patterns())
    for pattern in (".venv", ".git", "instance", "outbox", "**/*.db", ".env", "**/__pycache__"):
        assert pattern in ignored, pattern
