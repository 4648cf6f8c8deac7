"""Redaction goldens: what audit samples must lose (secrets, PII) and what they must keep."""

from __future__ import annotations

import time

import pytest

from jupyter_ds.audit.redact import RULES, redact, redact_sample, redact_with_counts, truncate

R = "[REDACTED:{}]".format

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7V0y\nq3xZ+abc/def==\n"
    "-----END RSA PRIVATE KEY-----"
)
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
GHP = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GH_PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ"
SK = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
SK_ANT = "sk-ant-api03-" + "xY7_zW9-aB1cD3eF5gH7iJ9kL1mN3oP5"

POSITIVE = [
    # emails
    ("mail jane.doe+ml@example.com now", f"mail {R('email')} now"),
    ("cc: a_b@sub.mail.co.uk.", f"cc: {R('email')}."),
    ('AUTHOR = "Ann <ann@uni-heidelberg.de>"', f'AUTHOR = "Ann <{R("email")}>"'),
    # phones
    ("call +1 (555) 123-4567 today", f"call {R('phone')} today"),
    ("tel: +44 20 7946 0958", f"tel: {R('phone')}"),
    ("mobile +4915112345678", f"mobile {R('phone')}"),
    ("+33 6 12 34 56 78", R("phone")),
    ("US: (555) 123-4567 or 555-123-4567 or 555.123.4567",
     f"US: {R('phone')} or {R('phone')} or {R('phone')}"),
    ("Tel. 030 1234567", f"Tel. {R('phone')}"),
    ("UK 020 7946 0958", f"UK {R('phone')}"),
    ("FR 06 12 34 56 78", f"FR {R('phone')}"),
    ("DE 0171/1234567", f"DE {R('phone')}"),
    # IP addresses
    ("host 192.168.1.20 said", f"host {R('ipv4')} said"),
    ("http://10.0.0.5:8080/api", f"http://{R('ipv4')}:8080/api"),
    ("from 203.0.113.9.", f"from {R('ipv4')}."),
    ("peer 2001:db8:85a3::8a2e:370:7334 up", f"peer {R('ipv6')} up"),
    ("link fe80::1ff:fe23:4567:890a%eth0", f"link {R('ipv6')}"),
    ("2001:0db8:0000:0000:0000:ff00:0042:8329", R("ipv6")),
    ("[2001:db8::1]:443", f"[{R('ipv6')}]:443"),
    ("mapped ::ffff:192.0.2.128", f"mapped {R('ipv6')}"),
    # vendor tokens
    ("key AKIAIOSFODNN7EXAMPLE", f"key {R('aws_access_key')}"),
    (f"token {GHP}", f"token {R('github_token')}"),
    (f"{GH_PAT}", R("github_token")),
    ("gho_" + "x" * 36, R("github_token")),
    ("xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOp", R("slack_token")),
    ("https://hooks.slack.com/services/T000/B000/XXXXXXXX", R("slack_token")),
    (f"client = OpenAI(api_key='{SK}')", f"client = OpenAI(api_key='{R('api_key')}')"),
    (SK_ANT, R("api_key")),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", R("api_key")),
    ("AIzaSyA-1234567890abcdefghijklmnopqrstu", R("api_key")),
    ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", R("token")),
    (f"jwt={JWT}", f"jwt={R('jwt')}"),
    (f"Authorization: Bearer {JWT}", f"Authorization: Bearer {R('jwt')}"),
    ("Authorization: Bearer abc123.def456-ghi", f"Authorization: Bearer {R('token')}"),
    ('headers = {"Authorization": "Bearer 0123456789abcdef"}',
     f'headers = {{"Authorization": "Bearer {R("token")}"}}'),
    ("authorization: Basic dXNlcjpwYXNz", f"authorization: Basic {R('token')}"),
    ("curl -H 'Bearer abcdefghijklmnop12345'", f"curl -H 'Bearer {R('token')}'"),
    # generic assignments
    ('api_key = "abcd1234efgh"', f'api_key = "{R("api_key")}"'),
    ("OPENAI_API_KEY=abc123def456", f"OPENAI_API_KEY={R('api_key')}"),
    ("export DB_PASSWORD=hunter", f"export DB_PASSWORD={R('password')}"),
    ("token=3f9a8b7c6d5e4f3a", f"token={R('token')}"),
    ("secret: s3cr3t-v@lue", f"secret: {R('secret')}"),
    ('{"password": "p@ss w0rd", "user": "ann"}',
     f'{{"password": "{R("password")}", "user": "ann"}}'),
    ("password: str = 'hunter2'", f"password: str = '{R('password')}'"),
    ("connect(user=u, password='hunter2')", f"connect(user=u, password='{R('password')}')"),
    ("İstanbul office: password='hunter2'", f"İstanbul office: password='{R('password')}'"),
    ("dbPassword = 'x9!k'", f"dbPassword = '{R('password')}'"),
    ('"X-Api-Key": "zzz999"', f'"X-Api-Key": "{R("api_key")}"'),
    ('os.environ["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"',
     f'os.environ["AWS_SECRET_ACCESS_KEY"] = "{R("api_key")}"'),
    ("Server=db;User Id=sa;Password=Pa55w0rd;", f"Server=db;User Id=sa;Password={R('password')};"),
    ("?user=ann&access_token=ya29.a0AfH6SMBx&x=1", f"?user=ann&access_token={R('token')}&x=1"),
    ("hf_token = 'abcdef123456'", f"hf_token = '{R('token')}'"),
    ("client_secret => 'Zx8'", f"client_secret => '{R('secret')}'"),
    # connection strings
    ("postgres://admin:s3cret@db.internal:5432/app",
     f"postgres://admin:{R('password')}@db.internal:5432/app"),
    ("postgresql+psycopg2://u:p@ss@localhost/db", f"postgresql+psycopg2://u:{R('password')}@localhost/db"),
    ("mysql://root:toor@127.0.0.1/test", f"mysql://root:{R('password')}@127.0.0.1/test"),
    ("mongodb+srv://app:Xy%21z@cluster0.abcd.mongodb.net/?retryWrites=true",
     f"mongodb+srv://app:{R('password')}@cluster0.abcd.mongodb.net/?retryWrites=true"),
    ("redis://:hunter2@cache:6379/0", f"redis://:{R('password')}@cache:6379/0"),
    ("amqp://guest:guest@rabbit//", f"amqp://guest:{R('password')}@rabbit//"),
    # private keys
    (f"key = '''{PEM}'''", f"key = '''{R('private_key')}'''"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----\nok",
     f"{R('private_key')}\nok"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg (cut off", R("private_key")),
    ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQdGBF\n-----END PGP PRIVATE KEY BLOCK-----",
     R("private_key")),
    # US social security numbers: 3-2-4, dashes or spaces
    ("SSN 123-45-6789", f"SSN {R('ssn')}"),
    ("ssn: 123 45 6789.", f"ssn: {R('ssn')}."),
    ("df.loc[df.ssn == '078-05-1120']", f"df.loc[df.ssn == '{R('ssn')}']"),
    ("(665-12-3456, 899-99-9999)", f"({R('ssn')}, {R('ssn')})"),
    # payment cards: Luhn-valid, 13-19 digits, compact or grouped
    ("card 4111 1111 1111 1111", f"card {R('card_number')}"),
    ("pay(card='4111-1111-1111-1111')", f"pay(card='{R('card_number')}')"),
    ("5500005555555559 exp 12/27", f"{R('card_number')} exp 12/27"),
    ("amex 3782 822463 10005.", f"amex {R('card_number')}."),
    ("visa13 4222222222222", f"visa13 {R('card_number')}"),
    ("unionpay 6212345678901265", f"unionpay {R('card_number')}"),
    ("19 digits: 4111 1111 1111 1111 003", f"19 digits: {R('card_number')}"),
    # IBANs: mod-97 valid, printed or compact
    ("IBAN DE89 3704 0044 0532 0130 00", f"IBAN {R('iban')}"),
    ("iban='GB82WEST12345698765432'", f"iban='{R('iban')}'"),
    ("to FR14 2004 1010 0505 0001 3M02 606, thanks", f"to {R('iban')}, thanks"),
    ("NO93 8601 1117 947", R("iban")),
    ("BE68 5390 0754 7034 EUR", f"{R('iban')} EUR"),
    # secrets in prose: the keyword stays, the value goes
    ("my password is hunter3-Secret", f"my password is {R('password')}"),
    ("My password is hunter3-Secret.", f"My password is {R('password')}."),
    ("the passphrase is 'correct horse battery staple'",
     f"the passphrase is '{R('password')}'"),
    ("# wifi passwd is: Tr0ub4dor&3", f"# wifi passwd is: {R('password')}"),
    ("Password was Summer2024! (changed)", f"Password was {R('password')} (changed)"),
    ("the vault secret is 7f3a-99xq, keep it", f"the vault secret is {R('secret')}, keep it"),
    ("ssh pwd = abc123", f"ssh pwd = {R('password')}"),
    ("passphrase: x9!kQ", f"passphrase: {R('password')}"),
]

NEGATIVE = [
    "x = 1000",
    "n = 1_000_000 + 5551234567",
    "timestamp = 1678901234",
    'version = "1.2.3"',
    '__version__ = "2.10.0"',
    "requires numpy>=1.26.4, torch==2.3.1",
    "release 1.2.3.4.5 of the tool",
    "v1.2.3.4",
    "pi = 3.14159265358979",
    "big = 1234567890123",
    "date = '2024-01-15T10:30:00Z'",
    "at 10:30:45 the job ended",
    "rows 01-02-2024 10 sold",
    "ids = [100 200 3000]",
    "arr = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])",
    "a[::2], a[1::2], a[10::20], b[::-1]",
    "std::vector<int> v;",
    "mac = '00:1A:2B:3C:4D:5E'",
    "uuid = '123e4567-e89b-12d3-a456-426614174000'",
    "sha = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",
    "y = X@W.T + b",
    "y = X@self.weights",
    "z = a @ b.shape",
    "@property\ndef email(self): return self._email",
    "git clone git@github.com:org/repo.git",
    "password = getpass.getpass()",
    "password = os.environ['DB_PASSWORD']",
    "api_key = os.getenv('OPENAI_API_KEY')",
    "def login(user: str, password: str) -> bool:",
    "password: Optional[str] = None",
    "self.password = password",
    "connect(host=h, password=password)",
    "token = tokenizer.pad_token",
    'tokenizer.pad_token = "<pad>"',
    'eos_token="</s>"',
    "max_tokens=10, token_count=3, n_tokens = 512",
    "tokens = tokenize(text)",
    "password_hash = bcrypt.hashpw(pw, salt)",
    "if password == expected:",
    "secret = None",
    "is_secret = True",
    "url = 'https://example.com:8080/path?q=1'",
    "http://localhost:8888/lab",
    "bind 0.0.0.0:8000 and 127.0.0.1",
    "loopback ::1",
    "sk-learn is spelled scikit-learn",
    "The bearer of bad news",
    "key = 'value'",
    "float('+inf'), 1e+10, x+12345678",
    "PWD=/home/ann/project",
    "email = user.email",
    "print(f'{a}@{b}.com')",
    # near-misses of the SSN rule: never-issued numbers, other shapes, longer runs
    "666-12-3456 912-34-5678 123-00-4567 123-45-0000",
    "123-45 6789",
    "123-45-67890 and 1123-45-6789",
    "release-123-45-6789-rc1",
    "rows 1 123 45 6789",
    "date = '2024-01-15', at 2024 01 15",
    # near-misses of the card rule: Luhn-invalid, ids and timestamps, other shapes
    "card 4111 1111 1111 1112",
    "4111111111111112",
    "ts = 1678901234567",
    "ns = 1700000000000000000",
    "big = 2**63 = 9223372036854775808",
    "row = '4000 5000 6000 7000'",
    "id 7 4111 1111 1111 1111",
    "411 1111 1111 1111 1",
    "x = 4111-1111 1111-1111",
    "order 4929-1234-5678",
    # near-misses of the IBAN rule: a wrong check digit, not a country, lowercase code
    "IBAN DE89 3704 0044 0532 0130 01",
    "DE00370400440532013000",
    "ZZ89370400440532013000",
    "sku AB12CDEFGHIJKLMNOP",
    "PY312 and CP1252 and UTF8",
    # secrets in prose that are not secrets
    "the password is wrong",
    "Password is required.",
    "if password is None:",
    "assert secret is not expected_secret",
    "the secret is 42",
    "the secret is to cache it",
    "pwd is /home/ann and then ls",
    "password is `getpass.getpass()`",
    "the password was reset",
    "password: str",
    "secret_key is set",
    "self.password is password",
]


@pytest.mark.parametrize(("text", "expected"), POSITIVE, ids=[p[0][:40] for p in POSITIVE])
def test_redacts(text: str, expected: str):
    assert redact(text) == expected


@pytest.mark.parametrize("code", NEGATIVE, ids=[n[:40] for n in NEGATIVE])
def test_leaves_code_alone(code: str):
    assert redact(code) == code


def test_checksums_behind_the_number_rules():
    from jupyter_ds.audit.redact import iban_valid, luhn_valid

    assert luhn_valid("4111111111111111") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234567812345678")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and iban_valid("GB82WEST12345698765432")
    assert not iban_valid("DE88 3704 0044 0532 0130 00")  # one check digit off
    assert not iban_valid("XX89 3704 0044 0532 0130 00")  # no such IBAN country


def test_new_rules_are_counted_by_name():
    red = redact_with_counts(
        "ssn 123-45-6789, card 4111 1111 1111 1111, iban DE89370400440532013000, "
        "and my password is hunter3-Secret"
    )
    assert red.counts == {"ssn": 1, "card_number": 1, "iban": 1, "secret_in_prose": 1}


def test_rule_names_are_unique_and_counted():
    names = [r.name for r in RULES]
    assert len(names) == len(set(names))
    red = redact_with_counts("a@example.com b@example.org 10.1.2.3 AKIAIOSFODNN7EXAMPLE")
    assert red.counts == {"email": 2, "ipv4": 1, "aws_access_key": 1}


def test_a_realistic_cell_keeps_its_code():
    cell = (
        "import psycopg2\n"
        "conn = psycopg2.connect('postgresql://etl:Tr0ub4dor@10.2.3.4:5432/sales')\n"
        "df = pd.read_sql('select * from orders where id > 1000', conn)\n"
        "notify('ops@acme.io', api_key='sk-" + "Q" * 40 + "')\n"
        "print(df.head(10))\n"
    )
    out = redact(cell)
    assert "Tr0ub4dor" not in out and "10.2.3.4" not in out and "ops@acme.io" not in out
    assert "QQQQ" not in out
    assert "id > 1000" in out and "df.head(10)" in out and "import psycopg2" in out
    assert out.count("[REDACTED:") == 4


def test_sample_is_redacted_before_it_is_cut():
    # A secret straddling the limit is matched whole, never written in part.
    text = "x" * 95 + " AKIAIOSFODNN7EXAMPLE tail"
    red = redact_sample(text, 100)
    assert "AKIA" not in red.text and "AKIAIOSF"[:5] not in red.text
    assert red.counts == {"aws_access_key": 1}
    assert len(red.text) <= 101


def test_truncate_never_splits_a_placeholder():
    text = "abc " + R("email") + " tail"
    assert truncate(text, 10) == "abc …"
    assert truncate(text, 100) == text


def test_cut_off_private_key_is_still_removed():
    text = "k = '" + PEM[:60]
    assert "MIIE" not in redact_sample(text, 1000).text


def test_redaction_is_fast_on_hostile_input():
    hostile = ("a" * 50 + "@" + "b." * 50 + " +" + "1 " * 200 + "password=" + ":" * 200) * 20
    start = time.perf_counter()
    redact_sample(hostile, 10_000)
    assert time.perf_counter() - start < 2.0
