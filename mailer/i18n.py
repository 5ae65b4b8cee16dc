"""The engine's own words, Japanese first, English by the site's `locale`."""

from __future__ import annotations

from collections.abc import Callable

MESSAGES: dict[str, dict[str, str]] = {
    "ja": {
        "reader": "読者",
        "sample_name": "山田 太郎",
        "form.heading": "無料メールセミナーに登録する",
        "form.email": "メールアドレス",
        "form.name": "お名前（任意）",
        "form.submit": "無料で登録する",
        "notice.blocked": "※{providers}は届きませんのでご注意ください。",
        "notice.unsubscribe": "※ワンクリックでいつでも解除可能です。",
        "notice.privacy": "※メールアドレスは個人情報の観点より、プライバシーを遵守しております。",
        "error.empty": "メールアドレスを入力してください。",
        "error.too_long": "メールアドレスが長すぎます。",
        "error.invalid": "メールアドレスの形式が正しくありません。入力内容をご確認ください。",
        "error.smtputf8": (
            "@ の前に日本語などを含むメールアドレスには、現在お届けできません。"
            "お手数ですが、別のアドレスでご登録ください。"
        ),
        "error.blocked": (
            "{provider}のアドレスにはメールが届きません。Gmailなど、別のメールアドレスでご登録ください。"
        ),
        "error.name": "お名前に使えない文字（改行や < > など）が含まれています。",
        "error.name_long": "お名前は100文字以内で入力してください。",
        "error.sequence": "このメールセミナーは存在しません。",
        "error.rate": "短時間に多くの登録がありました。しばらくしてからもう一度お試しください。",
        "thanks.title": "確認メールをお送りしました",
        "thanks.body": (
            "ご登録ありがとうございます。入力されたアドレスに確認メールをお送りしました。"
            "メール内のリンクを開き、表示されるボタンを押すと登録が完了します。"
        ),
        "thanks.hint": "数分たっても届かない場合は、迷惑メールフォルダもご確認ください。",
        "confirm.title": "登録の確認",
        "confirm.body": "下のボタンを押すと、「{title}」への登録が完了します。",
        "confirm.button": "登録を完了する",
        "confirm.hint": (
            "お心当たりがない場合は、このページを閉じてください。登録は完了せず、メールも届きません。"
        ),
        "confirmed.title": "登録が完了しました",
        "confirmed.body": "「{title}」へのご登録が完了しました。まもなく最初のメールが届きます。",
        "already_confirmed.title": "登録は完了しています",
        "already_confirmed.body": (
            "このメールアドレスは「{title}」に登録済みです。もう一度お手続きいただく必要はありません。"
        ),
        "already_confirmed.body_untitled": "このメールアドレスの登録はすでに完了しています。",
        "invalid.title": "このリンクは使えません",
        "invalid.body": (
            "リンクの有効期限が切れているか、すでに使われているか、正しくありません。"
            "お手数ですが、もう一度登録フォームからお申し込みください。"
        ),
        "unsubscribe.title": "配信停止",
        "unsubscribe.body": "下のボタンを押すと、すべてのメールの配信が直ちに停止します。",
        "unsubscribe.button": "配信を停止する",
        "unsubscribed.title": "配信を停止しました",
        "unsubscribed.body": "今後、メールは配信されません。これまでご購読いただき、ありがとうございました。",
        "already_unsubscribed.title": "配信は停止済みです",
        "already_unsubscribed.body": (
            "このアドレスへのメールの配信は、すでに停止しています。今後、メールは配信されません。"
        ),
        "notfound.title": "ページが見つかりません",
        "notallowed.title": "許可されていない操作です",
        "unavailable.title": "ただいま混み合っています",
        "unavailable.body": "少し時間をおいてもう一度お試しください。",
        "outbox.title": "送信済みメール（ローカル）",
        "outbox.empty": "まだメールはありません。",
        "outbox.back": "一覧に戻る",
        "outbox.waiting": "メールが書き込まれると、このページに自動で表示されます。",
        "outbox.date": "日時",
        "outbox.to": "宛先",
        "outbox.subject": "件名",
        "outbox.no_subject": "（件名なし）",
        "mail.sender": "発行者",
        "mail.address": "住所",
        "mail.contact": "お問い合わせ",
        "mail.refuse": (
            "今後このメールの受信を希望されない場合は、"
            "下記のリンクからいつでも配信を停止できます（ワンクリックで解除できます）。"
        ),
        "mail.unsubscribe": "配信停止",
        "broadcast.test_prefix": "[テスト]",
        "archive.title": "メルマガのバックナンバー",
        "archive.empty": "まだ公開しているバックナンバーはありません。",
        "archive.back": "バックナンバー一覧に戻る",
        "archive.reader": "読者",
        "archive.sent": "配信日",
        "archive.join": "メルマガを購読する",
        "mail.why_confirm": (
            "このメールは、上記の登録フォームにこのアドレスが入力されたためお送りしています。"
        ),
    },
    "en": {
        "reader": "reader",
        "sample_name": "Taro Yamada",
        "form.heading": "Join the free mail seminar",
        "form.email": "E-mail address",
        "form.name": "Name (optional)",
        "form.submit": "Sign up for free",
        "notice.blocked": "Note: mail cannot reach {providers} addresses.",
        "notice.unsubscribe": "Leave with one click, at any time.",
        "notice.privacy": "Your address is kept private and never shared.",
        "error.empty": "Please enter your e-mail address.",
        "error.too_long": "That e-mail address is too long.",
        "error.invalid": "That does not look like an e-mail address. Please check it.",
        "error.smtputf8": (
            "We cannot deliver to an address with non-Latin letters before the @ at the moment. "
            "Please sign up with another address."
        ),
        "error.blocked": (
            "Our mail cannot reach {provider} addresses. Please sign up with another address, such as Gmail."
        ),
        "error.name": "The name contains characters that cannot be used (line breaks, < or >).",
        "error.name_long": "Please keep the name to 100 characters.",
        "error.sequence": "There is no such seminar.",
        "error.rate": "Too many sign-ups in a short time. Please try again later.",
        "thanks.title": "Please check your inbox",
        "thanks.body": (
            "Thank you. We have sent a confirmation mail to the address you entered; "
            "open the link in it and press the button on that page to complete your sign-up."
        ),
        "thanks.hint": "If nothing arrives within a few minutes, look in your spam folder.",
        "confirm.title": "Confirm your sign-up",
        "confirm.body": "Press the button to complete your sign-up to “{title}”.",
        "confirm.button": "Complete my sign-up",
        "confirm.hint": "If you did not sign up, just close this page: you will not be signed up.",
        "confirmed.title": "You are signed up",
        "confirmed.body": "You have joined “{title}”. The first mail is on its way.",
        "already_confirmed.title": "You are already subscribed",
        "already_confirmed.body": (
            "This address is already signed up to “{title}”; there is nothing more to do."
        ),
        "already_confirmed.body_untitled": "This address has already been confirmed.",
        "invalid.title": "This link cannot be used",
        "invalid.body": (
            "The link has expired, has already been used, or is not valid. "
            "Please sign up again through the form."
        ),
        "unsubscribe.title": "Unsubscribe",
        "unsubscribe.body": "Press the button to stop all mail from us at once.",
        "unsubscribe.button": "Unsubscribe",
        "unsubscribed.title": "You are unsubscribed",
        "unsubscribed.body": "You will receive no more mail from us. Thank you for reading.",
        "already_unsubscribed.title": "Mail has already stopped",
        "already_unsubscribed.body": (
            "Mail to this address has already stopped; you will receive no more mail from us."
        ),
        "notfound.title": "Page not found",
        "notallowed.title": "This method is not allowed",
        "unavailable.title": "We are busy right now",
        "unavailable.body": "Please try again in a moment.",
        "outbox.title": "Mail written (local outbox)",
        "outbox.empty": "No mail yet.",
        "outbox.back": "Back to the list",
        "outbox.waiting": "This page shows new mail by itself as it is written.",
        "outbox.date": "Date",
        "outbox.to": "To",
        "outbox.subject": "Subject",
        "outbox.no_subject": "(no subject)",
        "mail.sender": "Sender",
        "mail.address": "Address",
        "mail.contact": "Contact",
        "mail.refuse": "You may refuse further mail at any time with one click on the link below.",
        "mail.unsubscribe": "Unsubscribe",
        "broadcast.test_prefix": "[Test]",
        "archive.title": "Back numbers of the mail magazine",
        "archive.empty": "No back numbers are published yet.",
        "archive.back": "Back to all back numbers",
        "archive.reader": "reader",
        "archive.sent": "Sent",
        "archive.join": "Subscribe to the mail magazine",
        "mail.why_confirm": "You receive this mail because this address was entered in our sign-up form.",
    },
}


def translator(locale: str) -> Callable[..., str]:
    messages = MESSAGES.get(locale, MESSAGES["ja"])

    def t(key: str, **values: object) -> str:
        text = messages.get(key) or MESSAGES["ja"][key]
        return text.format(**values) if values else text

    return t
