"""An issue's folder: `subject.txt`, `body.txt`, optional `body.html`, read and checked at once.

The files are kept in the database as written when the issue is created, so what goes out is what
was checked, on every worker, whatever happens to the folder afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateSyntaxError
from markupsafe import Markup

from mailer.config import Site
from mailer.errors import BroadcastError
from mailer.mail.compose import Composed, MailTemplate, Renderer
from mailer.mail.footer import missing_footer_items
from mailer.models import Broadcast
from mailer.seminars.checks import sample_recipient
from mailer.seminars.sequences import Catalog, Sequence

FILES = ("subject.txt", "body.txt", "body.html")


@dataclass(frozen=True)
class Content:
    """An issue's templates, by file name (`body.html` None when there is none)."""

    name: str
    subject: str
    body_text: str
    body_html: str | None

    @property
    def sources(self) -> dict[str, str | None]:
        return {"subject.txt": self.subject, "body.txt": self.body_text, "body.html": self.body_html}


def magazine(site: Site, catalog: Catalog) -> Sequence:
    """The magazine's seminar file (its title and zone), or one line saying it is missing."""
    found = catalog.get(site.magazine)
    if found is None:
        raise BroadcastError(
            f"{site.home / 'sequences' / (site.magazine + '.toml')}: the magazine's file is missing "
            "(mailer.toml: magazine)"
        )
    return found


def _read(folder: Path, name: str) -> str | None:
    path = folder / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise BroadcastError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise BroadcastError(f"{path}: cannot be read ({exc.strerror})") from None


def read(folder: Path) -> Content:
    """The folder's files; one line naming the file for a folder or a required file missing."""
    if not folder.is_dir():
        raise BroadcastError(f"{folder}: no such folder (an issue is a folder with subject.txt and body.txt)")
    subject, text, html = (_read(folder, name) for name in FILES)
    for name, value in (("subject.txt", subject), ("body.txt", text)):
        if value is None:
            raise BroadcastError(f"{folder / name}: missing (an issue needs subject.txt and body.txt)")
    assert subject is not None
    assert text is not None
    return Content(folder.resolve().name, subject, text, html)


def check(content: Content, folder: Path, renderer: Renderer, magazine: Sequence) -> Composed:
    """Render the issue once for a sample reader, in the layout: what is wrong as one line naming
    the file (a broken template, an empty subject, a footer item missing)."""
    for name, source in content.sources.items():
        if source is None:
            continue
        try:
            renderer.env.parse(source)
        except TemplateSyntaxError as exc:
            raise BroadcastError(f"{folder / name}:{exc.lineno}: {exc.message}") from None
    try:
        composed = template(renderer, magazine, content).compose(sample_recipient(renderer.site.locale))
    except Exception as exc:  # any template error is the operator's to fix: say which
        raise BroadcastError(f"{folder}: {type(exc).__name__}: {exc}") from None
    if not composed.subject:
        raise BroadcastError(f"{folder / 'subject.txt'}: the subject is empty")
    missing = missing_footer_items(composed, renderer.site)
    if missing:
        raise BroadcastError(f"{folder}: the footer lacks {', '.join(missing)} (templates/mail/_base)")
    return composed


def of(issue: Broadcast) -> Content:
    """The content an issue was created with."""
    return Content(issue.name, issue.subject, issue.body_text, issue.body_html)


@dataclass(frozen=True)
class Public:
    """An issue as the archive shows it: the content alone, for a neutral reader."""

    subject: str
    text: str
    html: Markup | None


def public_view(renderer: Renderer, magazine: Sequence, found: Content) -> Public:
    """The issue's subject and content (no layout, no footer) with the reader's name and links
    replaced by neutral ones: the word for "reader", and the sign-up page for any link of theirs."""
    mail = template(renderer, magazine, found)
    neutral = {
        "sequence": magazine,
        "step": None,
        "name": renderer.t("archive.reader"),
        "unsubscribe_url": f"{renderer.base_url}/",
    }
    subject = " ".join(mail.subject.render(neutral).split())
    text = mail.body_text.render(neutral).strip()
    html = Markup(mail.body_html.render(neutral)) if mail.body_html is not None else None  # noqa: S704 (autoescaped template output)
    return Public(subject, text, html)


def template(renderer: Renderer, magazine: Sequence, content: Content, prefix: str = "") -> MailTemplate:
    """The issue's mail template; `prefix` goes before the subject (a test send's)."""
    sources = content.sources
    if prefix:
        sources["subject.txt"] = f"{prefix} {content.subject}"
    return renderer.broadcast(magazine, content.name, sources)
