"""The sign-up address policy: blocked providers first, then normalisation and strict syntax."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.config import DEFAULT_BLOCKED, BlockedProvider, load_site
from mailer.subscribers.addresses import Address, Refusal, check_address, wire_form

REPO = Path(__file__).resolve().parents[2]


def accepted(raw: str, blocked: tuple[BlockedProvider, ...] = DEFAULT_BLOCKED) -> Address:
    result = check_address(raw, blocked)
    assert isinstance(result, Address), f"{raw!r} was refused: {result}"
    return result


def refused(raw: str, blocked: tuple[BlockedProvider, ...] = DEFAULT_BLOCKED) -> Refusal:
    result = check_address(raw, blocked)
    assert isinstance(result, Refusal), f"{raw!r} was accepted as {result}"
    return result


# --- Blocked providers (the notice: iCloud, hotmail, outlook, docomo, ezweb) -------------------


@pytest.mark.parametrize(
    ("raw", "provider"),
    [
        ("taro@icloud.com", "iCloud"),
        ("taro@me.com", "iCloud"),
        ("taro@mac.com", "iCloud"),
        ("taro@hotmail.com", "Hotmail"),
        ("taro@hotmail.co.jp", "Hotmail"),
        ("taro@hotmail.fr", "Hotmail"),
        ("taro@hotmail.co.uk", "Hotmail"),
        ("taro@outlook.com", "Outlook"),
        ("taro@outlook.jp", "Outlook"),
        ("taro@outlook.co.jp", "Outlook"),
        ("taro@docomo.ne.jp", "docomo"),
        ("taro@ezweb.ne.jp", "au (ezweb)"),
        # Subdomains.
        ("taro@mail.docomo.ne.jp", "docomo"),
        ("taro@sub.ezweb.ne.jp", "au (ezweb)"),
        ("taro@sub.hotmail.com", "Hotmail"),
        # Case and a trailing dot.
        ("Taro@ICLOUD.COM", "iCloud"),
        ("taro@Hotmail.Co.Jp", "Hotmail"),
        ("taro@icloud.com.", "iCloud"),
        ("taro@outlook.jp.", "Outlook"),
        ("taro@DOCOMO.NE.JP.", "docomo"),
        # Typed with a Japanese IME, or with space around it.
        ("ｔａｒｏ＠ｄｏｃｏｍｏ．ｎｅ．ｊｐ", "docomo"),
        ("\u3000taro@ezweb.ne.jp\u3000", "au (ezweb)"),
    ],
)
def test_blocked_providers_are_refused_with_their_name(raw: str, provider: str) -> None:
    """An address at a provider that drops our mail is refused, naming the provider."""
    assert refused(raw) == Refusal("blocked", provider)


@pytest.mark.parametrize(
    "raw",
    [
        "taro@hotmailer.com",
        "taro@hotmail.example.com",
        "taro@myoutlook.com",
        "taro@outlook.example.jp",
        "taro@notdocomo.ne.jp",
        "taro@docomo.ne.jp.example.com",
        "taro@icloud.com.example.org",
        "taro@example.com",
        "taro@gmail.com",
        "taro@yahoo.co.jp",
    ],
)
def test_lookalike_domains_are_not_blocked(raw: str) -> None:
    """Only the providers themselves are refused, not domains that merely contain their names."""
    assert accepted(raw).email == raw


@pytest.mark.parametrize(
    ("raw", "provider"),
    [
        ("taro..yamada@docomo.ne.jp", "docomo"),
        ("taro.@ezweb.ne.jp", "au (ezweb)"),
        (".taro@docomo.ne.jp", "docomo"),
        ("taro..@icloud.com", "iCloud"),
    ],
)
def test_old_carrier_address_gets_the_carrier_message_not_invalid(raw: str, provider: str) -> None:
    """An RFC-breaking old carrier address is told its carrier is blocked, not "invalid"."""
    assert refused(raw) == Refusal("blocked", provider)


def test_custom_blocked_list_matches_exact_domains_subdomains_and_any_suffix() -> None:
    """An operator's own list blocks its domains, their subdomains and `name.*` variants only."""
    blocked = (
        BlockedProvider("Example Mail", ("example.org",)),
        BlockedProvider("Contoso", ("contoso.*",)),
    )
    assert refused("taro@example.org", blocked) == Refusal("blocked", "Example Mail")
    assert refused("taro@mx.example.org", blocked) == Refusal("blocked", "Example Mail")
    assert refused("taro@contoso.com", blocked) == Refusal("blocked", "Contoso")
    assert refused("taro@contoso.co.jp", blocked) == Refusal("blocked", "Contoso")
    assert refused("taro@mail.contoso.de", blocked) == Refusal("blocked", "Contoso")
    for raw in ("taro@example.org.uk", "taro@contosoer.com", "taro@contoso.example.com"):
        assert accepted(raw, blocked).email == raw
    # The list replaces the default one: iCloud is not on it.
    assert accepted("taro@icloud.com", blocked).email == "taro@icloud.com"


def test_example_site_blocks_the_same_providers_as_the_default() -> None:
    """The example mailer.toml refuses the notice's five providers, as the defaults do."""
    blocked = load_site(REPO).signup.blocked
    for raw in (
        "a@icloud.com",
        "a@hotmail.co.jp",
        "a@outlook.jp",
        "a@docomo.ne.jp",
        "a@ezweb.ne.jp",
    ):
        assert refused(raw, blocked) == refused(raw, DEFAULT_BLOCKED)
    assert accepted("a@hotmailer.com", blocked).email == "a@hotmailer.com"


# --- Normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "email"),
    [
        ("  taro@example.com  ", "taro@example.com"),
        ("\ttaro@example.com\n", "taro@example.com"),
        ("\u3000taro@example.com\u3000", "taro@example.com"),  # the full-width space
        ("ｔａｒｏ＠ｅｘａｍｐｌｅ．ｃｏｍ", "taro@example.com"),  # full-width ASCII
        ("Ｔａｒｏ＠Ｅｘａｍｐｌｅ．ｃｏｍ", "Taro@example.com"),
        ("Taro@Example.COM", "Taro@example.com"),  # domain lower-cased, local part kept
        ("TARO.Yamada@MAIL.Example.JP", "TARO.Yamada@mail.example.jp"),
    ],
)
def test_addresses_are_normalised(raw: str, email: str) -> None:
    """Space around, full-width characters and the domain's case are normalised away."""
    assert accepted(raw).email == email


def test_key_folds_case_so_one_person_has_one_row() -> None:
    """Taro@Example.com and taro@example.com are the same subscriber."""
    assert accepted("Taro@Example.com").key == accepted("taro@example.com").key
    assert accepted("ＴＡＲＯ＠example.com").key == accepted("taro@EXAMPLE.com").key


@pytest.mark.parametrize("composed", ["がくせい@example.jp", "José@example.com", "Zoë.Ünal@example.de"])
def test_decomposed_unicode_equals_its_composed_form(composed: str) -> None:
    """An address typed in decomposed Unicode (NFD) is stored as its composed form (NFC)."""
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert accepted(decomposed) == accepted(composed)
    assert accepted(decomposed).email == composed


# --- Refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\u3000\u3000", "empty"),
        ("\t\n", "empty"),
        ("a" * 243 + "@example.com", "too_long"),  # 255 characters
        ("taroexample.com", "invalid"),
        ("taro@@example.com", "invalid"),
        ("taro@yamada@example.com", "invalid"),
        ("taro yamada@example.com", "invalid"),
        ("taro@exa mple.com", "invalid"),
        ("taro@", "invalid"),
        ("@example.com", "invalid"),
        ("taro..yamada@example.com", "invalid"),
        ("taro@localhost", "invalid"),
    ],
)
def test_bad_addresses_are_refused_with_a_reason(raw: str, reason: str) -> None:
    """Empty, too long and malformed addresses are refused, each with its own reason."""
    assert refused(raw) == Refusal(reason)


def test_254_characters_is_the_longest_address_accepted() -> None:
    """RFC 5321 allows 254 characters: that many pass, one more does not."""
    local = "a" * 64
    domain = ".".join(["b" * 63, "c" * 63, "d" * 57, "com"])
    longest = f"{local}@{domain}"
    assert len(longest) == 254
    assert accepted(longest).email == longest
    assert refused(f"{local}@e{domain}") == Refusal("too_long")


# --- Properties --------------------------------------------------------------------------------

LOCAL_CHARS = "abcxyzABCXYZ019._-+たろう山田ｔａｒｏＴＡＲＯ"
DOMAINS = [
    "example.com",
    "Example.ORG",
    "ｅｘａｍｐｌｅ．ｊｐ",
    "mail.example.co.jp",
    "gmail.com",
]


@given(
    local=st.text(alphabet=LOCAL_CHARS, min_size=1, max_size=30),
    domain=st.sampled_from(DOMAINS),
    pad=st.sampled_from(["", " ", "\u3000", "\t"]),
)
def test_check_address_is_idempotent_on_accepted_addresses(local: str, domain: str, pad: str) -> None:
    """Checking a stored address again gives the same address and key."""
    result = check_address(f"{pad}{local}@{domain}{pad}", DEFAULT_BLOCKED)
    if isinstance(result, Address):
        assert check_address(result.email, DEFAULT_BLOCKED) == result
        assert result.key == result.email.casefold()


@given(st.emails())
def test_check_address_is_idempotent_on_generated_addresses(raw: str) -> None:
    """Any accepted address, checked again as stored, is accepted unchanged."""
    result = check_address(raw, DEFAULT_BLOCKED)
    if isinstance(result, Address):
        assert check_address(result.email, DEFAULT_BLOCKED) == result


@given(st.text(max_size=300))
def test_check_address_never_raises(raw: str) -> None:
    """Whatever is typed into the form, the answer is an address or a refusal, never a crash."""
    assert isinstance(check_address(raw, DEFAULT_BLOCKED), Address | Refusal)


def test_an_internationalised_domain_has_an_ascii_wire_form() -> None:
    """The domain of x@例え.jp goes to SMTP as its A-label; an ASCII address is left as it is."""
    assert wire_form("x@例え.jp") == "x@xn--r8jz45g.jp"
    assert wire_form("Taro@Example.jp") == "Taro@Example.jp"
