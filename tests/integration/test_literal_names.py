"""A reader's name is data: one that looks like an RFC 2047 encoded word reaches every mail client
as the text typed, never decoded into other characters or headers, on both send paths."""

from __future__ import annotations

import email
import email.policy
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from mailer.mail.compose import Recipient
from mailer.mail.skeleton import literal_words
from mailer.runtime import Runtime
from tests.integration.test_send_path import NOW, assert_same_mail, templates

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NAMES = [
    "=?utf-8?q?x=0D=0ABcc:_x@y.z?=",  # CR LF and a Bcc line, once decoded
    "=?iso-2022-jp?B?GyRCJTUlcyVXJWsbKEI=?=",
    "山田 =?utf-8?b?w6k=?= 花子",
    "a=?b",
    "=?" * 50,  # several encoded words
    "長い=?名前の読者" * 8,
]


@sqlite_only
@pytest.mark.parametrize("name", NAMES)
def test_a_name_that_looks_like_an_encoded_word_reads_back_as_typed(runtime: Runtime, name: str) -> None:
    """Both paths write the same mail, whose To: decodes to the typed name and nothing else."""
    reader = Recipient(1, 11, "taro@example.com", name)
    for template, extra in templates(runtime):
        fast = template.render(reader, NOW, **extra)
        assert_same_mail(fast, template.message(reader, NOW, **extra).as_bytes())
        mail = email.message_from_bytes(fast, policy=email.policy.default)
        [mailbox] = mail["To"].addresses
        assert mailbox.addr_spec == "taro@example.com"
        if len(literal_words(name)) == 1:
            assert mailbox.display_name == name
        else:  # the email package keeps the space between two words, against RFC 2047 6.2,
            # as it does for any long name it folds itself
            assert mailbox.display_name.replace(" ", "") == name.replace(" ", "")
        assert "Bcc" not in mail
        raw_to = email.message_from_bytes(fast, policy=email.policy.compat32)["To"]
        assert str(make_header(decode_header(str(raw_to)))) == f"{name} <taro@example.com>"
        to_lines = (b"To: " + fast.split(b"\r\nTo: ", 1)[1].split(b"\r\nSubject: ", 1)[0]).split(b"\r\n")
        assert all(len(line) <= 78 for line in to_lines), to_lines


@sqlite_only
def test_a_non_ascii_address_with_such_a_name_is_written_the_same_way(runtime: Runtime) -> None:
    """An SMTPUTF8 address goes the email package's way; the name is still the literal text."""
    reader = Recipient(1, 11, "山田@例え.jp", NAMES[0])
    template, extra = next(templates(runtime))
    mail = email.message_from_bytes(template.render(reader, NOW, **extra), policy=email.policy.default)
    assert mail["To"].addresses[0].display_name == NAMES[0]


def test_literal_words_stay_within_rfc_2047_and_split_no_character() -> None:
    """Each word is at most 75 characters and decodes on its own (no character cut in two)."""
    for text in [*NAMES, "あ" * 100, "x" * 200]:
        words = literal_words(text)
        assert all(len(word) <= 75 for word in words)
        assert "".join(str(make_header(decode_header(word))) for word in words) == text


@sqlite_only
@pytest.mark.parametrize("name", NAMES)
def test_a_subject_that_names_the_reader_gains_no_header(home: Path, runtime: Runtime, name: str) -> None:
    """A subject template with `{{ name }}`: the name reads back as typed and adds no Bcc line."""
    folder = home / "templates" / "mail" / "web-business" / "lesson-1"
    (folder / "subject.txt").write_text("{{ name }}さん、第1回です\n", encoding="utf-8")
    sequence = runtime.catalog().get("web-business")
    assert sequence is not None
    step = sequence.step("lesson-1")
    assert step is not None
    template = runtime.renderer.step(sequence, step)
    reader = Recipient(1, 11, "taro@example.com", name)
    fast = template.render(reader, NOW)
    assert_same_mail(fast, template.message(reader, NOW).as_bytes())
    mail = email.message_from_bytes(fast, policy=email.policy.default)
    assert str(mail["Subject"]) == f"{name}さん、第1回です"
    assert "Bcc" not in mail
