"""PII and secret redaction for audit samples, as small named rules.

Audit samples are users' code and prompts, and code is full of credentials pasted in by
accident. Every sample passes through :func:`redact` before it is written, so the log (and
every copy or backup of it) never holds them. Each rule is one regex plus a replacement with
a name; a match becomes a typed placeholder such as ``[REDACTED:email]``, so a reviewer
still sees *what* was there.

Rules run in order, specific before generic: a private key block before anything that
could match inside it, vendor token formats before the generic ``api_key = "..."`` rule (so
the more precise kind wins), connection-string passwords before emails (``user:pw@host``
looks like an address), bank and identity numbers (IBAN, card, SSN) before phone numbers
(whose looser shapes would take their digits with the wrong kind). Number rules check more
than a shape — mod-97 for IBANs, Luhn for cards, never-issued ranges for SSNs — since digit
runs are everywhere in code. The rules aim to leave ordinary code alone — numbers, version
strings, slicing, ``a @ b.T``, ``password = getpass()`` — because samples are read by people
judging the assistant's work; the golden table in ``tests/test_audit_redact.py`` pins both
sides.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PLACEHOLDER_PREFIX = "[REDACTED:"


def placeholder(kind: str) -> str:
    """The text that replaces a redacted value: typed, so reviewers see what was removed."""
    return f"{PLACEHOLDER_PREFIX}{kind}]"


@dataclass(frozen=True)
class Rule:
    """One named redaction: a pattern and what a match becomes (None: leave it).

    ``hints``: lowercase substrings one of which every match contains; when none is in the
    text the regex is not run at all (most samples hold no secret, so this is most of the
    speed of redaction). ``finder``: a case-sensitive regex run on the ASCII-lowercased text
    to find where ``pattern`` may match (case-insensitive alternations are slow in ``re``).
    """

    name: str
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str | None]
    hints: tuple[str, ...] = ()
    finder: re.Pattern[str] | None = None

    def apply(self, text: str, lowered: str | None = None) -> tuple[str, int]:
        low = text.lower() if lowered is None else lowered
        if self.hints and not any(h in low for h in self.hints):
            return text, 0
        count = 0

        def sub(m: re.Match[str]) -> str:
            nonlocal count
            out = self.replace(m)
            if out is None:
                return m.group(0)
            count += 1
            return out

        if self.finder is None:
            return self.pattern.sub(sub, text), count
        if len(low) != len(text):  # a few non-ASCII letters change length when lowered
            low = text.translate(_ASCII_LOWER)
        parts, done = [], 0
        for cand in self.finder.finditer(low):
            if cand.start() < done:
                continue
            m = self.pattern.match(text, cand.start())
            if m is None:
                continue
            parts += [text[done : m.start()], sub(m)]
            done = m.end()
        return "".join([*parts, text[done:]]), count


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # keeps offsets


def _whole(kind: str) -> Callable[[re.Match[str]], str]:
    return lambda m: placeholder(kind)


def _group(group: str, kind: str) -> Callable[[re.Match[str]], str]:
    """Replace only one named group, keeping the context (scheme, user, key name) readable."""

    def replace(m: re.Match[str]) -> str:
        start, end = m.span(group)
        base = m.start()
        whole = m.group(0)
        return whole[: start - base] + placeholder(kind) + whole[end - base :]

    return replace


# --- private keys ---------------------------------------------------------------------
# A block cut off by truncation (no END line) is still redacted up to the end of the text.
_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)

# --- connection strings: scheme://user:PASSWORD@host ----------------------------------
# The password runs to the last "@" before the host, so an unescaped "@" in it is covered.
_CONN = re.compile(
    r"\b[A-Za-z][A-Za-z0-9+.-]*://"
    r"(?P<user>[^\s:/?#@\"'<>]*):(?P<pw>[^\s/\"'<>]+)@(?=[^\s@/]*[\w\]])"
)

# --- vendor token formats -------------------------------------------------------------
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_AUTH_HEADER = re.compile(
    r"(?i:\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?\s*(?:bearer|basic|token|digest)\s+)"
    r"(?P<tok>[A-Za-z0-9._~+/=-]{6,})"
)
_BEARER = re.compile(r"(?i:\bbearer\s+)(?P<tok>[A-Za-z0-9._~+/-]{16,}=*)")
_AWS_KEY_ID = re.compile(
    r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[0-9A-Z]{16}\b"
)
_GITHUB = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")
_SLACK = re.compile(
    r"\bxox[abposre]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+"
)
_SK_KEY = re.compile(r"\bsk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")
_STRIPE = re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}")
_GOOGLE = re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")
_HF = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")

# --- generic "name = value" assignments of secrets -------------------------------------
# The name must *end* in a secret word (OPENAI_API_KEY, db.password, dbPassword, "X-Api-Key")
# so that token_count, max_tokens or password_hash are left alone.
_SECRET_WORDS = (
    r"passwd|password|passphrase|pass|pwd"
    r"|api[_-]?key|api[_-]?token|access[_-]?key|access[_-]?token|auth[_-]?token"
    r"|refresh[_-]?token|session[_-]?token|id[_-]?token|bearer[_-]?token"
    r"|client[_-]?secret|secret[_-]?key|private[_-]?key|signing[_-]?key|encryption[_-]?key"
    r"|secret|token"
)
_ASSIGN_FINDER = re.compile(_SECRET_WORDS)
_ASSIGN = re.compile(
    r"(?P<word>(?i:" + _SECRET_WORDS + r"))(?![\w-])"
    r"(?P<kq>[\"']?\]?)"
    # an optional type annotation, as in `password: str = "..."`
    r"(?P<sep>\s*(?::\s*[A-Za-z_][\w.\[\], |]*?\s*(?==))?(?:=>|:=|=(?!=)|:(?![:/]))\s*)"
    r"(?:(?P<q>[\"'`])(?P<qval>(?:[^\"'`\\\n]|\\.)*?)(?P=q)|(?P<val>[^\s\"'`,;&)}\]<>]+))"
)
_LITERALS = frozenset({"None", "True", "False", "null", "nil", "undefined", "true", "false"})
_DOTTED = re.compile(r"[A-Za-z_]+(?:\.[A-Za-z_]+)+")  # settings.password, not ya29.a0Af...
# `token` alone (pad_token, eos_token) is weak: only credential-shaped values count.
_QUALIFIED_TOKEN = re.compile(r"(?i)(?:api|access|auth|refresh|session|id|bearer)[_-]?token$")
_BARE_WORD = re.compile(r"[A-Za-z_]+")


_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")


def _name_prefix(text: str, word_start: int) -> str | None:
    """What precedes the secret word in its name: ``OPENAI_`` of ``OPENAI_API_KEY``, ``db``
    of ``dbPassword``; None when the word only ends another word (``bypass``, ``mytoken``).
    """
    start = word_start
    while start > 0 and text[start - 1] in _NAME_CHARS:
        start -= 1
    if start < word_start:
        prev, first = text[word_start - 1], text[word_start]
        camel = (prev.islower() or prev.isdigit()) and first.isupper()
        if prev not in "_.-" and not camel:
            return None
    return text[start:word_start]


def _secret_kind(key: str) -> str:
    k = key.lower()
    if re.search(r"(?:pass|pwd|passwd|password|passphrase)$", k):
        return "password"
    if re.search(r"(?:api[_-]?key|access[_-]?key)$", k):
        return "api_key"
    if k.endswith("token"):
        return "token"
    return "secret"


def _looks_secret(value: str) -> bool:
    """For weak names (``pad_token``): only values shaped like credentials, not ``"<s>"``."""
    if any(c.isspace() for c in value) or len(value) < 8:
        return False
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return len(value) >= 20 or (has_digit and has_alpha)


def _unquoted_is_code(value: str, env_style: bool) -> bool:
    """An unquoted right-hand side that reads as code (a name, call, path), not a secret."""
    if value in _LITERALS or value.startswith(("$", "%", "{", "/", "~", "[REDACTED")):
        return True
    if "(" in value or "[" in value:
        return True  # getpass(), os.environ["X"], Optional[str]
    if env_style:
        return False  # DB_PASSWORD=hunter  in an .env file or shell
    return bool(_DOTTED.fullmatch(value) or _BARE_WORD.fullmatch(value))


def _assign(m: re.Match[str]) -> str | None:
    prefix = _name_prefix(m.string, m.start())
    if prefix is None:
        return None
    key = prefix + m.group("word")
    kind = _secret_kind(key)
    weak = kind == "token" and not _QUALIFIED_TOKEN.search(key)
    if m.group("q") is not None:
        value, group = m.group("qval"), "qval"
        if not value or value.startswith(PLACEHOLDER_PREFIX):
            return None
        if weak and not _looks_secret(value):
            return None
    else:
        value, group = m.group("val"), "val"
        env_style = key.isupper() and m.group("sep") == "=" and not m.group("kq")
        if _unquoted_is_code(value, env_style):
            return None
        if weak and not _looks_secret(value):
            return None
    return _group(group, kind)(m)


# --- secrets in prose: "my password is hunter3-Secret" --------------------------------
# The assignment rule above reads code (`password = "..."`); people also write the secret in
# a sentence or a comment. The keyword stays (a reviewer sees a password was shared), the
# value goes. `:`/`=` forms mostly reach the assignment rule first; this one adds `is`/`was`
# and applies the same test for code (`password is None`, `pwd is /home/ann`), plus: an
# unquoted value must be 4+ characters and not a plain word, so "the password is wrong",
# "password is required" or "the secret is 42" stay.
_PROSE_WORDS = r"passwd|password|passphrase|pwd|secret"
_PROSE_FINDER = re.compile(_PROSE_WORDS)
_PROSE_SECRET = re.compile(
    r"(?<![\w.-])(?P<word>(?i:" + _PROSE_WORDS + r"))"
    r"(?:\s+(?i:is|was)(?:\s*[:=])?\s+|\s*[:=]\s*)"
    # greedy, then trimmed in _prose: a lazy value with a look-ahead is quadratic
    r"(?:(?P<q>[\"'`])(?P<qval>[^\"'`\n]{1,200})(?P=q)|(?P<val>[^\s\"'`<>]+))"
)
_SENTENCE_END = ".,;:)"


def _prose(m: re.Match[str]) -> str | None:
    kind = _secret_kind(m.group("word"))
    if m.group("q") is not None:
        value = m.group("qval")
        if value.startswith(PLACEHOLDER_PREFIX):
            return None
        if m.group("q") == "`" and _unquoted_is_code(value, env_style=False):
            return None  # markdown code: "the password is `getpass()`"
        return _group("qval", kind)(m)
    value = m.group("val").rstrip(_SENTENCE_END)  # "... is hunter3-Secret." keeps its "."
    if len(value) < 4 or _unquoted_is_code(value, env_style=False):
        return None
    whole, start = m.group(0), m.start("val") - m.start()
    return whole[:start] + placeholder(kind) + whole[start + len(value) :]


# --- emails ---------------------------------------------------------------------------
# Top-level domain from a short list or any two-letter country code, so that `X@w.shape`
# (matrix product then attribute) is not an address.
_TLDS = (
    "com|org|net|edu|gov|mil|int|info|biz|io|ai|dev|app|co|me|xyz|tech|cloud|online|site"
    "|email|mail|local|internal|corp|lan|name|pro|museum|aero|jobs|travel|example|test"
)
_EMAIL = re.compile(
    r"(?<![\w.%+/-])(?P<local>[A-Za-z0-9._%+-]+)@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:(?i:" + _TLDS + r")|[A-Za-z]{2})\b(?![.-]?\w)"
)


def _email(m: re.Match[str]) -> str | None:
    return None if m.group("local") == "git" else placeholder("email")  # git@host:org/repo


# --- IP addresses ---------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Not part of a longer dotted run (a 5-part version) nor glued to a name (v1.2.3.4).
_IPV4 = re.compile(rf"(?=\d)(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d|\w)")
_IPV6 = re.compile(
    r"(?=[0-9A-Fa-f:])(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)"
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?"
    r"(?:%[A-Za-z0-9]+)?(?![\w:.])"
)


def _ipv4(m: re.Match[str]) -> str | None:
    addr = ipaddress.IPv4Address(m.group(0))
    return None if addr.is_loopback or addr.is_unspecified else placeholder("ipv4")


def _ipv6(m: re.Match[str]) -> str | None:
    text = m.group(0).split("%", 1)[0]
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    if addr.is_loopback or addr.is_unspecified:
        return None
    groups = [g for g in text.split(":") if g]
    # `a[1::2]` and `x[10::20]` are slices, not addresses: demand a real-looking address.
    if len(groups) < 2 or (len(groups) < 3 and not any(len(g) == 4 for g in groups)):
        return None
    return placeholder("ipv6")


# --- phone numbers --------------------------------------------------------------------
# Three shapes, each needing the separators or "+" a person writes, so that plain digit
# runs (ids, timestamps, `x = 1000`) are never phones.
_PHONE_INTL = re.compile(
    r"\+(?<![\w+)\]]\+)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){1,6}(?![\w.-]?\d)"
)
# (555) 123-4567, 555-123-4567, 555.123.4567: not "100 200 3000", a row of a table.
_PHONE_US = re.compile(
    r"(?=[\d(+])(?<![\w.+-])(?:\+?1[ .-])?(?:\(\d{3}\)[ ]?\d{3}-|\d{3}-\d{3}-|\d{3}\.\d{3}\.)\d{4}"
    r"(?![\w.-]?\d)"
)
_PHONE_EU = re.compile(r"0(?<![\w.+-]0)\d{1,4}(?:[ ./-]\d{2,8}){1,4}(?![\w.-]?\d)")


def _digits(s: str) -> int:
    return sum(c.isdigit() for c in s)


def _phone_intl(m: re.Match[str]) -> str | None:
    return placeholder("phone") if 8 <= _digits(m.group(0)) <= 15 else None


def _phone_eu(m: re.Match[str]) -> str | None:
    text = m.group(0)
    seps = {c for c in text if not c.isdigit()}
    # One kind of separator, as people write numbers; "01-02-2024 10" is a date and time.
    if len(seps) != 1 or not 9 <= _digits(text) <= 12:
        return None
    return placeholder("phone")


# --- bank and identity numbers -------------------------------------------------------
# Each shape is checked beyond the regex (a checksum or the issuing rules), because plain
# digit runs are everywhere in code: ids, timestamps, table rows.

# IBAN: country code, two check digits, BBAN; printed in groups of four or compact, and
# valid only when the ISO 13616 mod-97 check gives 1 (a random string passes 1 time in 97,
# so the country must also be one that issues IBANs).
_IBAN_COUNTRIES = frozenset(
    "AD AE AL AT AZ BA BE BG BH BI BR BY CH CR CY CZ DE DJ DK DO EE EG ES FI FK FO FR GB GE"
    " GI GL GR GT HR HU IE IL IQ IS IT JO KW KZ LB LC LI LT LU LV LY MC MD ME MK MN MR MT MU"
    " NI NL NO OM PK PL PS PT QA RO RS RU SA SC SD SE SI SK SM SO ST SV TL TN TR UA VA VG XK"
    " YE".split()
)
_IBAN = re.compile(
    r"(?<![\w-])[A-Z]{2}\d{2}"
    r"(?:(?:[ ][A-Z0-9]{4}){2,7}(?:[ ][A-Z0-9]{1,3})?|[A-Z0-9]{11,30})(?![\w-])"
)


def iban_valid(text: str) -> bool:
    """ISO 13616: a known country, length 15-34, and mod-97 of the rearranged digits is 1."""
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34 or s[:2] not in _IBAN_COUNTRIES or not "02" <= s[2:4] <= "98":
        return False
    digits = "".join(str(int(c, 36)) for c in s[4:] + s[:4])  # A=10 ... Z=35
    return int(digits) % 97 == 1


def _iban(m: re.Match[str]) -> str | None:
    text = m.group(0)
    if iban_valid(text):
        return placeholder("iban")
    # "BE68 5390 0754 7034 EUR": the regex took the currency as a last short group.
    head, _, tail = text.rpartition(" ")
    if head and len(tail) < 4 and iban_valid(head):
        return placeholder("iban") + " " + tail
    return None


# Payment cards: 13-19 digits, compact or in groups (4-4-4-4, Amex 4-6-5, 4-4-4-4-3) with
# one kind of separator; the first digit is an issuer's (2-6: Mastercard, Amex, Visa,
# Discover, UnionPay...), so ms timestamps (1...) are not cards; and the Luhn check holds.
_CARD = re.compile(r"(?<![\w.+-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\w-]|\.\d)")


def _follows_number(text: str, start: int) -> bool:
    """Whether ``text[start:]`` comes right after a number and a space ("1 4111 ..."): then
    it is the tail of a longer run of numbers (a table row), not a number on its own."""
    i = start - 1
    if i < 1 or text[i] != " " or not text[i - 1].isdigit():
        return False
    i -= 1
    while i > 0 and text[i - 1].isdigit():
        i -= 1
    return i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number satisfies."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str | None:
    text = m.group(0)
    seps = {c for c in text if not c.isdigit()}
    if len(seps) > 1:
        return None
    if seps:
        sep = seps.pop()
        groups = text.split(sep)
        if len(groups[0]) != 4 or not all(3 <= len(g) <= 6 for g in groups[1:]):
            return None
        if sep == " " and _follows_number(m.string, m.start()):
            return None
    digits = "".join(c for c in text if c.isdigit())
    return placeholder("card_number") if luhn_valid(digits) else None


# US Social Security numbers: 3-2-4 digits with one kind of separator (dashes or spaces);
# area 000, 666 and 900-999, group 00 and serial 0000 are never issued, so those stay.
_SSN = re.compile(
    r"(?<![\w.+-])(?!000|666|9)\d{3}(?P<sep>[- ])(?!00)\d{2}(?P=sep)(?!0000)\d{4}"
    r"(?![\w-]|\.\d)"
)


def _ssn(m: re.Match[str]) -> str | None:
    after = m.string[m.end() : m.end() + 2]
    if m.group("sep") == " " and (  # "1 123 45 6789 0": part of a longer run of numbers
        _follows_number(m.string, m.start()) or (after[:1] == " " and after[1:].isdigit())
    ):
        return None
    return placeholder("ssn")


_AWS_PREFIXES = ("akia", "asia", "abia", "acca", "agpa", "aida", "aroa", "aipa", "anpa",
                 "anva", "apka")

RULES: tuple[Rule, ...] = (
    Rule("private_key", _PEM, _whole("private_key"), ("private key",)),
    Rule("connection_password", _CONN, _group("pw", "password"), ("://",)),
    Rule("jwt", _JWT, _whole("jwt"), ("eyj",)),
    Rule("authorization_header", _AUTH_HEADER, _group("tok", "token"), ("authorization",)),
    Rule("bearer_token", _BEARER, _group("tok", "token"), ("bearer",)),
    Rule("aws_access_key", _AWS_KEY_ID, _whole("aws_access_key"), _AWS_PREFIXES),
    Rule("github_token", _GITHUB, _whole("github_token"),
         ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    Rule("slack_token", _SLACK, _whole("slack_token"), ("xox", "hooks.slack.com")),
    Rule("sk_api_key", _SK_KEY, _whole("api_key"), ("sk-",)),
    Rule("stripe_key", _STRIPE, _whole("api_key"), ("k_live_", "k_test_")),
    Rule("google_api_key", _GOOGLE, _whole("api_key"), ("aiza",)),
    Rule("huggingface_token", _HF, _whole("token"), ("hf_",)),
    Rule("secret_assignment", _ASSIGN, _assign, ("pass", "pwd", "key", "token", "secret"),
         _ASSIGN_FINDER),
    Rule("secret_in_prose", _PROSE_SECRET, _prose, ("pass", "pwd", "secret"), _PROSE_FINDER),
    Rule("email", _EMAIL, _email, ("@",)),
    Rule("ipv6", _IPV6, _ipv6, ("::", ":")),
    Rule("ipv4", _IPV4, _ipv4, (".",)),
    Rule("iban", _IBAN, _iban),
    Rule("card_number", _CARD, _card),
    Rule("ssn", _SSN, _ssn),
    Rule("phone_international", _PHONE_INTL, _phone_intl, ("+",)),
    Rule("phone_us", _PHONE_US, _whole("phone")),
    Rule("phone_national", _PHONE_EU, _phone_eu),
)


@dataclass(frozen=True)
class Redaction:
    text: str
    counts: dict[str, int]  # rule name -> matches replaced, for the audit record


def redact_with_counts(text: str, rules: Iterable[Rule] = RULES) -> Redaction:
    """Apply every rule in order; also say which rules fired (never what they removed)."""
    counts: Counter[str] = Counter()
    lowered = text.lower()
    for rule in rules:
        text, n = rule.apply(text, lowered)
        if n:
            counts[rule.name] += n
            lowered = text.lower()
    return Redaction(text, dict(counts))


def redact(text: str, rules: Iterable[Rule] = RULES) -> str:
    """``text`` with PII and secrets replaced by ``[REDACTED:<kind>]`` placeholders."""
    return redact_with_counts(text, rules).text


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters without splitting a placeholder in two."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    start = cut.rfind("[")
    tail = cut[start:]
    if start != -1 and "]" not in tail and (
        PLACEHOLDER_PREFIX.startswith(tail) or tail.startswith(PLACEHOLDER_PREFIX)
    ):
        cut = cut[:start]
    return cut + "…"


def redact_sample(text: str, limit: int) -> Redaction:
    """Redact then truncate a sample of at most ``limit`` characters.

    Redaction runs on a window somewhat longer than the limit, never on a cut-off piece,
    so that a secret straddling the limit is matched whole (and never half-written); the
    window bounds the work on huge inputs.
    """
    window = text[: limit + 4096]
    red = redact_with_counts(window)
    return Redaction(truncate(red.text, limit), red.counts)
