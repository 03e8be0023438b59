"""Corpora for the detection tests and benchmark, built at run time from files on this machine.

Clean (negative) payloads: a wheel zipped from a site-packages package, a tar.gz of a stdlib
package, minified JS and images shipped with mitmproxy's web UI, stdlib Python sources, and
generated JSON API bodies / access logs / form posts. Positive payloads: known values under every
encoding and container, and one sample credential per built-in rule.

Nothing here depends on /tmp or the network.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import random
import string
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import brotli
import zstandard

STDLIB = Path(os.__file__).parent


def _site_packages() -> Path:
    import yaml  # any pure package in the venv

    return Path(yaml.__file__).parent.parent


def _mitm_static() -> Path:
    import mitmproxy

    return Path(mitmproxy.__file__).parent / "tools" / "web" / "static"


@dataclass(frozen=True)
class Payload:
    name: str
    kind: str
    data: bytes
    content_type: str | None = None
    content_encoding: str | None = None
    part: str = "body"


# --- clean payloads -----------------------------------------------------------------------------


def wheel(pkg: str = "idna") -> bytes:
    """A wheel-shaped zip of an installed package directory."""
    root = _site_packages() / pkg
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                z.write(p, f"{pkg}/{p.relative_to(root)}")
        z.writestr(f"{pkg}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 1.0\n")
    return buf.getvalue()


def tarball(pkg: str = "email") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.add(str(STDLIB / pkg), arcname=pkg, filter=lambda ti: None if "__pycache__" in ti.name else ti)
    return buf.getvalue()


def static_files() -> list[tuple[str, bytes]]:
    out = []
    for p in sorted(_mitm_static().iterdir()):
        if p.suffix in (".js", ".png", ".ico", ".css", ".svg", ".ttf", ".woff", ".woff2", ".eot"):
            out.append((p.name, p.read_bytes()))
    return out


def stdlib_sources(limit: int = 200) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(STDLIB.glob("*.py"))[:limit]]


_WORDS = (
    "the quick brown fox jumps over lazy dog release build merge fix update issue request review "
    "deploy cluster node service error retry timeout cache config user admin report data value "
    "index query result page item list detail summary status pending closed open label milestone"
).split()


def _sentence(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choice(_WORDS) for _ in range(n)).capitalize() + "."


def json_api_body(rnd: random.Random, items: int = 30, escaped: bool = False) -> bytes:
    """A GitHub-API-like list of issues: ids, node ids, URLs, SHAs, timestamps, markdown bodies."""
    out = []
    for _ in range(items):
        n = rnd.randint(1, 99999)
        login = "".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(4, 12)))
        out.append(
            {
                "id": rnd.randint(10**8, 10**9),
                "node_id": base64.b64encode(f"04:Issue{n}".encode()).decode().rstrip("="),
                "number": n,
                "url": f"https://api.example.test/repos/{login}/project/issues/{n}",
                "html_url": f"https://example.test/{login}/project/issues/{n}?q=is%3Aopen+label%3Abug",
                "title": _sentence(rnd, 6),
                "user": {"login": login, "id": rnd.randint(1, 10**7), "avatar_url": f"https://avatars.example.test/u/{n}?v=4"},
                "labels": [{"name": rnd.choice(_WORDS), "color": "%06x" % rnd.randrange(1 << 24)} for _ in range(2)],
                "state": rnd.choice(["open", "closed"]),
                "created_at": f"2026-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}T1{rnd.randint(0, 9)}:2{rnd.randint(0, 9)}:00Z",
                "merge_commit_sha": "%040x" % rnd.getrandbits(160),
                "body": "\n".join(_sentence(rnd, rnd.randint(5, 20)) for _ in range(rnd.randint(1, 5)))
                + "\n\n```python\nprint('héllo wörld — ok')\n```",
                "reactions": {"+1": rnd.randint(0, 9), "total_count": rnd.randint(0, 20)},
            }
        )
    text = json.dumps(out, ensure_ascii=escaped, indent=None if escaped else 1)
    if escaped:
        text = text.replace("/", "\\/")  # PHP-style escaped slashes
    return text.encode()


def access_log(rnd: random.Random, lines: int = 2000) -> bytes:
    out = []
    for i in range(lines):
        path = "/".join(rnd.choice(_WORDS) for _ in range(rnd.randint(1, 4)))
        q = "&".join(f"{rnd.choice(_WORDS)}={quote_from_bytes(_sentence(rnd, 2).encode())}" for _ in range(rnd.randint(0, 3)))
        out.append(
            f'10.0.{i % 250}.{rnd.randint(1, 254)} - - [23/Nov/2026:01:{i % 60:02d}:00 +0000] "GET /{path}?{q} HTTP/1.1" '
            f'{rnd.choice([200, 200, 304, 404])} {rnd.randint(100, 90000)} "-" "Mozilla/5.0 (X11; Linux x86_64)"'
        )
    return ("\n".join(out) + "\n").encode()


def form_post(rnd: random.Random, fields: int = 20) -> bytes:
    return "&".join(
        f"{rnd.choice(_WORDS)}_{i}={quote_from_bytes(_sentence(rnd, 4).encode())}".replace("%20", "+") for i in range(fields)
    ).encode()


def clean_corpus(seed: int = 7) -> list[Payload]:
    """One of each clean payload kind (about 5 MB)."""
    rnd = random.Random(seed)
    out: list[Payload] = [
        Payload("wheel:idna", "wheel", wheel("idna"), "application/zip"),
        Payload("wheel:yaml", "wheel", wheel("yaml"), "application/octet-stream"),
        Payload("tarball:email", "tarball", tarball("email"), "application/gzip"),
        Payload("tarball:json", "tarball", tarball("json"), "application/x-tar", None),
    ]
    for name, data in static_files():
        kind = "js" if name.endswith(".js") else ("image" if name.endswith((".png", ".ico", ".svg")) else "static")
        out.append(Payload(f"static:{name}", kind, data))
    for name, data in stdlib_sources(120):
        out.append(Payload(f"py:{name}", "source", data, "text/x-python"))
    for i in range(12):
        body = json_api_body(rnd, 40, escaped=i % 3 == 0)
        if i % 4 == 1:
            out.append(Payload(f"json:{i}:gzip", "json", gzip.compress(body, 6), "application/json", "gzip"))
        else:
            out.append(Payload(f"json:{i}", "json", body, "application/json"))
    out.append(Payload("log:access", "text", access_log(rnd, 3000), "text/plain"))
    for i in range(4):
        out.append(Payload(f"form:{i}", "form", form_post(rnd, 30), "application/x-www-form-urlencoded"))
    return out


# --- known values and encodings -----------------------------------------------------------------

VALUES = {
    "token": b"cnry_Tk7Qm2Vx9Lp4Rz8Wn3Yb6Hd1Fs5Gj0",
    "binaryish": base64.b64decode(b"q+/z1xL9Pm0/Gh+a8Kc2ZyWe"),  # base64 of it has + and /; ascii-unsafe bytes
    "unicode": "p@ss w/rd+=&?#中文-x1".encode(),
}


def _b64_aligned(v: bytes, k: int, pad: bool, urlsafe: bool = False) -> bytes:
    enc = base64.b64encode(b"AB"[:k] + v + b"!")
    if urlsafe:
        enc = enc.translate(bytes.maketrans(b"+/", b"-_"))
    return enc if pad else enc.rstrip(b"=")


def _b32_aligned(v: bytes, k: int, lower: bool = False) -> bytes:
    enc = base64.b32encode(b"ABCD"[:k] + v + b"?")
    return enc.lower() if lower else enc


def _pct(v: bytes, upper: bool = True, every: int = 1) -> bytes:
    out = []
    for i, b in enumerate(v):
        if i % every == 0 or not (chr(b).isascii() and chr(b).isalnum()):
            out.append(("%%%02X" if upper else "%%%02x") % b)
        else:
            out.append(chr(b))
    return "".join(out).encode()


def _json_u(v: bytes, every: int = 1) -> bytes:
    """Every byte as \\u00XX (what the literal json-u form is), or every `every`-th code point of
    the UTF-8 text escaped (what a JSON encoder does to text)."""
    if every == 1:
        return "".join("\\u%04x" % b for b in v).encode()
    text = v.decode("utf-8")
    out = []
    for i, ch in enumerate(text):
        out.append("\\u%04x" % ord(ch) if (i % every == 0 or not ch.isascii()) else ch)
    return "".join(out).encode("utf-8")


def _json_u_utf8(v: bytes) -> bytes:
    """JSON escapes of the text (non-ASCII as \\uXXXX), what json.dumps(ensure_ascii) does."""
    return json.dumps(v.decode("utf-8"))[1:-1].encode()


def _qp(v: bytes, soft: bool) -> bytes:
    out = "".join("=%02X" % b if (b < 33 or b > 126 or b == 61 or i % 2 == 0) else chr(b) for i, b in enumerate(v))
    if soft:
        mid = len(out) // 2
        while out[mid - 1] == "=" or out[mid - 2] == "=":
            mid += 1
        out = out[:mid] + "=\r\n" + out[mid:]
    return out.encode()


def _mime_b64(v: bytes, k: int) -> bytes:
    """Base64 with MIME line breaks, placed so a break falls inside the value's encoding."""
    lead = b"x" * (57 - len(v) // 2 + k)
    return base64.encodebytes(lead + v + b"tail" * 10)


# name -> (encoder, expected encoding token, needs utf-8 value?)
ENCODINGS: dict[str, tuple] = {
    "raw": (lambda v: v, "raw"),
    **{f"base64-a{k}{'-pad' if p else ''}": ((lambda v, k=k, p=p: _b64_aligned(v, k, p)), "base64") for k in range(3) for p in (True, False)},
    **{f"base64url-a{k}": ((lambda v, k=k: _b64_aligned(v, k, False, True)), "base64url") for k in range(3)},
    **{f"base32-a{k}": ((lambda v, k=k: _b32_aligned(v, k)), "base32") for k in range(5)},
    "base32-lower": (lambda v: _b32_aligned(v, 2, True), "base32"),
    "hex-lower": (lambda v: v.hex().encode(), "hex"),
    "hex-upper": (lambda v: v.hex().upper().encode(), "hex"),
    "url-full-upper": (lambda v: _pct(v, True), "url"),
    "url-full-lower": (lambda v: _pct(v, False), "url"),
    "url-partial": (lambda v: _pct(v, True, 3), "url"),
    "url2-full": (lambda v: _pct(v, True).replace(b"%", b"%25"), "url2"),
    "url2-partial": (lambda v: _pct(_pct(v, False, 4), True, 5), "url2"),
    "json-u-full": (lambda v: _json_u(v), "json-u"),
    "json-u-partial": (lambda v: _json_u(v, 3), "json-u"),
    "qp-full": (lambda v: "".join("=%02X" % b for b in v).encode(), "qp"),
    "qp-soft-break": (lambda v: _qp(v, True), "qp"),
    **{f"mime-base64-a{k}": ((lambda v, k=k: _mime_b64(v, k)), "base64") for k in range(3)},
    "reversed": (lambda v: v[::-1], "reversed"),
}


def _multipart(field: bytes, cte: str | None) -> tuple[bytes, str]:
    boundary = "----egressgwBoundary7MA4YWxk"
    body = field
    headers = 'Content-Disposition: form-data; name="upload"; filename="notes.txt"\r\nContent-Type: text/plain\r\n'
    if cte == "base64":
        body = base64.encodebytes(field)
        headers += "Content-Transfer-Encoding: base64\r\n"
    elif cte == "quoted-printable":
        import quopri

        body = quopri.encodestring(field)
        headers += "Content-Transfer-Encoding: quoted-printable\r\n"
    data = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n"
        f"--{boundary}\r\n{headers}\r\n"
    ).encode() + body + f"\r\n--{boundary}--\r\n".encode()
    return data, f"multipart/form-data; boundary={boundary}"


def _surround(enc: bytes) -> bytes:
    return b"POST data follows: [" + enc + b"] end of data\n"


# container name -> function(encoded bytes) -> (data, content_type, content_encoding, expected part, part name)
CONTAINERS: dict[str, object] = {
    "plain": lambda e: (_surround(e), "text/plain", None, "body", "body"),
    "gzip": lambda e: (gzip.compress(_surround(e)), "text/plain", "gzip", "body>gzip", "body"),
    "deflate-zlib": lambda e: (zlib.compress(_surround(e)), None, "deflate", "body>deflate", "body"),
    "deflate-raw": lambda e: (_raw_deflate(_surround(e)), None, "deflate", "body>deflate", "body"),
    "br": lambda e: (brotli.compress(_surround(e)), None, "br", "body>br", "body"),
    "zstd": lambda e: (zstandard.ZstdCompressor().compress(_surround(e)), None, "zstd", "body>zstd", "body"),
    "gzip-sniffed": lambda e: (gzip.compress(_surround(e)), "application/octet-stream", None, "body>gzip", "body"),
    "zstd-sniffed": lambda e: (zstandard.ZstdCompressor().compress(_surround(e)), None, None, "body>zstd", "body"),
    "gzip-in-gzip": lambda e: (gzip.compress(gzip.compress(_surround(e))), None, "gzip", "body>gzip>gzip", "body"),
    "multipart": lambda e: (*_multipart(_surround(e), None), None, "body>multipart[upload]", "body"),
    "multipart-b64": lambda e: (*_multipart(_surround(e), "base64"), None, "body>multipart[upload]", "body"),
    "multipart-qp": lambda e: (*_multipart(_surround(e), "quoted-printable"), None, "body>multipart[upload]", "body"),
    "form": lambda e: (
        b"user=alice&note=" + quote_from_bytes(e).encode() + b"&x=1",
        "application/x-www-form-urlencoded",
        None,
        "body>form[note]",
        "body",
    ),
    "json": lambda e: (
        json.dumps({"note": e.decode("utf-8"), "n": 1}, ensure_ascii=True).encode(),
        "application/json",
        None,
        "body",
        "body",
    ),
    "query": lambda e: (b"page=2&q=" + quote_from_bytes(e).encode(), None, None, "query>form[q]", "query"),
    "header": lambda e: (b"Bearer " + e, None, None, "header:authorization", "header:authorization"),
}


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


# containers that add their own encoding layer on top of the value's encoding
_EXTRA = {"form": "url", "query": "url", "json": "json-u", "multipart-b64": "base64", "multipart-qp": "qp"}


def applicable(value: bytes, encoding: str, container: str) -> bool:
    """Combinations that exist in real traffic: JSON carries text, not arbitrary bytes."""
    if encoding == "qp-soft-break" and container == "json":
        return False  # a QP soft break inside a JSON string is not something encoders produce
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        if encoding == "json-u-partial":
            return False
    try:
        ENCODINGS[encoding][0](value).decode("utf-8")
    except UnicodeDecodeError:
        return container not in ("json",)
    return True


def encoding_matches(expected: str, got: str, container: str) -> bool:
    got = got.replace("base64url", "base64")  # a value whose base64 has no +/ looks the same in both
    expected = expected.replace("base64url", "base64")
    extra = _EXTRA.get(container)
    toks = [t for t in got.replace("url2", "url+url").split("+")]
    if extra and toks and toks[0] == extra:
        toks = toks[1:] or ["raw"]
    exp = expected.replace("url2", "url+url").split("+")
    # the expected encoding's tokens appear in order in what was found; containers may add layers
    i = 0
    for t in toks:
        if i < len(exp) and t == exp[i]:
            i += 1
    if i == len(exp):
        return True
    # a literal form of the whole encoded value may be found directly in a decoded view (e.g. the
    # url-decoded view of a partially encoded value is the raw value): accept the raw or url layer
    return expected in ("url", "url2", "json-u", "qp") and (got in ("raw", "url", "url2", "json-u", "qp") or got.endswith("+url"))


def positive_cases() -> list[tuple[str, str, str, Payload, str]]:
    """(value name, encoding name, container name, payload, expected encoding, expected part)."""
    out = []
    for vname, v in VALUES.items():
        for ename, (enc_fn, expected) in ENCODINGS.items():
            for cname, cfn in CONTAINERS.items():
                if cname == "header" and not ename.startswith(("raw", "base64", "hex", "url", "base32")):
                    continue
                if not applicable(v, ename, cname):
                    continue
                enc = enc_fn(v)
                data, ct, ce, part, pname = cfn(enc)  # type: ignore[operator]
                out.append((vname, ename, cname, Payload(f"{vname}/{ename}/{cname}", "positive", data, ct, ce, pname), expected, part))
    return out


# --- credential samples (built at run time so this file holds no realistic secret) ---------------


def _rs(rnd: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


def rule_samples(seed: int = 11) -> dict[str, bytes]:
    rnd = random.Random(seed)
    b64 = string.ascii_letters + string.digits + "+/"
    key_body = base64.encodebytes(bytes(rnd.getrandbits(8) for _ in range(600))).decode()
    u = string.ascii_uppercase
    return {
        "aws-access-key-id": ("AKIA" + _rs(rnd, 16, u + "234567")).encode(),
        "aws-secret-access-key": ("aws_secret_access_key = " + _rs(rnd, 40, b64)).encode(),
        "gcp-service-account-key": json.dumps(
            {
                "type": "service_account",
                "private_key_id": "%040x" % rnd.getrandbits(160),
                "private_key": "-----BEGIN PRIVATE KEY-----\n" + key_body + "-----END PRIVATE KEY-----\n",
                "client_email": "builder-bot@my-project-123.iam.gserviceaccount.com",
            }
        ).encode(),
        "gcp-service-account-email": b'{"client_email": "builder-bot@my-project-123.iam.gserviceaccount.com"}',
        "azure-storage-account-key": (
            "DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey=" + _rs(rnd, 86, b64) + "==;EndpointSuffix=core.windows.net"
        ).encode(),
        "azure-ad-client-secret": ('client_secret: "' + _rs(rnd, 3) + "8Q~" + _rs(rnd, 34, string.ascii_letters + string.digits + "_~.-") + '"').encode(),
        "github-pat": ("ghp_" + _rs(rnd, 36)).encode(),
        "github-oauth": ("gho_" + _rs(rnd, 36)).encode(),
        "github-user-token": ("ghu_" + _rs(rnd, 36)).encode(),
        "github-app-token": ("ghs_" + _rs(rnd, 36)).encode(),
        "github-refresh-token": ("ghr_" + _rs(rnd, 76)).encode(),
        "github-fine-grained-pat": ("github_pat_" + _rs(rnd, 22) + "_" + _rs(rnd, 59)).encode(),
        "gitlab-pat": ("glpat-" + _rs(rnd, 20)).encode(),
        "slack-token": ("xoxb-" + _rs(rnd, 12, string.digits) + "-" + _rs(rnd, 13, string.digits) + "-" + _rs(rnd, 24)).encode(),
        "slack-webhook-url": ("https://hooks.slack.com/services/T" + _rs(rnd, 10, u) + "/B" + _rs(rnd, 10, u) + "/" + _rs(rnd, 24)).encode(),
        "stripe-live-key": ("sk_live_" + _rs(rnd, 99)).encode(),
        "openai-api-key": ("sk-" + _rs(rnd, 20) + "T3BlbkFJ" + _rs(rnd, 20)).encode(),
        "openai-project-key": ("sk-proj-" + _rs(rnd, 156, string.ascii_letters + string.digits + "_-")).encode(),
        "anthropic-api-key": ("sk-ant-api03-" + _rs(rnd, 93, string.ascii_letters + string.digits + "_-") + "AA").encode(),
        "huggingface-token": ("hf_" + _rs(rnd, 34)).encode(),
        "npm-token": ("npm_" + _rs(rnd, 36)).encode(),
        "pypi-token": ("pypi-AgEIcHlwaS5vcmc" + _rs(rnd, 70, string.ascii_letters + string.digits + "_-")).encode(),
        "jwt": (
            base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
            + b"."
            + base64.urlsafe_b64encode(json.dumps({"sub": _rs(rnd, 12), "iat": 1763800000}).encode()).rstrip(b"=")
            + b"."
            + _rs(rnd, 43, string.ascii_letters + string.digits + "_-").encode()
        ),
        "private-key": ("-----BEGIN RSA PRIVATE KEY-----\n" + key_body + "-----END RSA PRIVATE KEY-----\n").encode(),
        "generic-secret-assignment": ("DB_PASSWORD=" + _rs(rnd, 24, string.ascii_letters + string.digits + "!@%^*")).encode(),
    }
