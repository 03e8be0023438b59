"""gateway.secrets.sigv4: parse SigV4 Authorization headers, re-sign requests with the real key.

Every request shape is built and signed by botocore itself with PLACEHOLDER credentials (a real
client, stopped at ``before-send`` so nothing leaves the process), re-signed with the REAL
credentials, then checked two independent ways:

* ``Reference`` below: SigV4 written from the AWS spec with hashlib/hmac only (canonical request,
  string to sign, signing key). It must accept the client's placeholder signature with the
  placeholder key (so the reference itself is right), accept the re-signed one with the real key,
  and reject the placeholder signature under the real key;
* botocore's own signer (``add_auth``, clock pinned to the request's date) signing the same request
  with the real credentials must produce the same Authorization header, byte for byte.

(Note: no ``__init__.py`` in this directory on purpose: with ``tests/`` on sys.path a package
named ``secrets`` would shadow the standard library's ``secrets``.)
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import logging
import re
import traceback
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from gateway.secrets import sigv4
from gateway.secrets.sigv4 import (
    PresignedURLRefused,
    SigV4Error,
    SigV4Header,
    is_presigned_url,
    parse_authorization,
    resign,
)

PLACEHOLDER_AKID = "AKIAPLACEHOLDER00000"
PLACEHOLDER_SECRET = "placeholder/secret/0000000000000000000000"
PLACEHOLDER_TOKEN = "PLACEHOLDER-SESSION-TOKEN-0000"
REAL_AKID = "AKIAREALKEY123456789"
REAL_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzREALSECRET"
REAL_TOKEN = "FwoGZXIvYXdzEJr//////////REALSESSIONTOKEN+/abc=="
CLIENT_TIME = dt.datetime(2026, 11, 22, 23, 33, 1)  # botocore's clock is naive UTC
REGION = "us-east-1"

MANAGED = {"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"}
HOP_BY_HOP = {"connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization",
              "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


# ---------------------------------------------------------------------------------------------
# Reference SigV4, from the AWS spec ("Create a canonical request", "Create a string to sign",
# "Calculate the signature"). Deliberately shares nothing with the module or botocore.
# ---------------------------------------------------------------------------------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})")


class Reference:
    @staticmethod
    def uri_encode(raw: bytes) -> str:
        return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)

    @staticmethod
    def pct_decode(text: str) -> bytes:
        raw, out, i = text.encode("utf-8"), bytearray(), 0
        while i < len(raw):
            if raw[i] == 0x25 and i + 2 < len(raw) and raw[i + 1] in _HEXDIGITS and raw[i + 2] in _HEXDIGITS:
                out.append(int(raw[i + 1:i + 3], 16))
                i += 3
            else:
                out.append(raw[i])
                i += 1
        return bytes(out)

    @classmethod
    def canonical_uri(cls, path: str, service: str) -> str:
        path = path or "/"
        if service.startswith("s3"):  # S3: each segment encoded once, no normalisation
            return "/".join(cls.uri_encode(cls.pct_decode(s)) for s in path.split("/"))
        kept: list[str] = []  # others: RFC 3986 dot segments and empty segments removed,
        for seg in path.split("/")[1:]:  # each segment encoded twice
            if seg in ("", "."):
                continue
            if seg == "..":
                if kept:
                    kept.pop()
                continue
            kept.append(seg)
        encoded = [cls.uri_encode(cls.uri_encode(cls.pct_decode(s)).encode("ascii")) for s in kept]
        return "/" + "/".join(encoded) + ("/" if path.endswith("/") and kept else "")

    @classmethod
    def canonical_query(cls, query: str) -> str:
        pairs = []
        for piece in query.split("&"):
            if piece:
                k, _, v = piece.partition("=")
                pairs.append((cls.uri_encode(cls.pct_decode(k)), cls.uri_encode(cls.pct_decode(v))))
        return "&".join(f"{k}={v}" for k, v in sorted(pairs))

    @staticmethod
    def timestamp(headers: list[tuple[str, str]]) -> str:
        for n, v in headers:
            if n.lower() == "x-amz-date":
                return v.strip()
        for n, v in headers:
            if n.lower() == "date":
                when = parsedate_to_datetime(v)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=dt.timezone.utc)
                return when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        raise AssertionError("no date")

    @classmethod
    def signature(cls, method: str, url: str, headers: list[tuple[str, str]], body: bytes, secret: str) -> str:
        """The signature AWS expects for this request under ``secret``, given its Authorization header."""
        auth = [v for n, v in headers if n.lower() == "authorization"]
        assert len(auth) == 1
        m = _AUTH.fullmatch(auth[0])
        assert m, auth[0]
        _akid, date, region, service, signed, _sig = m.groups()
        parts = urlsplit(url)
        lines = []
        for name in signed.split(";"):
            values = [v for n, v in headers if n.lower() == name]
            if name == "host" and not values:
                values = [parts.netloc]
            assert values, f"signed header {name} missing"
            lines.append(f"{name}:" + ",".join(" ".join(v.split()) for v in values) + "\n")
        declared = [v for n, v in headers if n.lower() == "x-amz-content-sha256"]
        payload = declared[0].strip() if declared else hashlib.sha256(body).hexdigest()
        canonical_request = "\n".join([
            method.upper(),
            cls.canonical_uri(parts.path, service),
            cls.canonical_query(parts.query),
            "".join(lines),
            signed,
            payload,
        ])
        timestamp = cls.timestamp(headers)
        assert timestamp[:8] == date, "credential scope date must be the request date"
        scope = f"{date}/{region}/{service}/aws4_request"
        string_to_sign = "\n".join(["AWS4-HMAC-SHA256", timestamp, scope,
                                    hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()])
        key = ("AWS4" + secret).encode("utf-8")
        for part in (date, region, service, "aws4_request"):
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
        return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()

    @classmethod
    def verifies(cls, wire: Wire, secret: str, headers: list[tuple[str, str]] | None = None,
                 body: bytes | None = None) -> bool:
        headers = wire.headers if headers is None else headers
        body = wire.body if body is None else body
        given = _AUTH.fullmatch(_header(headers, "authorization")).group(6)
        return hmac.compare_digest(cls.signature(wire.method, wire.url, headers, body, secret), given)


# ---------------------------------------------------------------------------------------------
# Requests as the sandbox's SDK puts them on the wire, signed with the placeholder credentials.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Wire:
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    botocore_params: tuple[tuple[str, str], ...] | None = None  # query for botocore's cross-check
    checksum_context: dict = field(default_factory=dict)


class _Captured(Exception):
    def __init__(self, request):
        super().__init__("captured")
        self.request = request


@contextlib.contextmanager
def pinned_clock(when: dt.datetime):
    """botocore's signing clock, pinned (the only thing replaced; SigV4 logic stays botocore's)."""
    original = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda *a, **k: when
    try:
        yield
    finally:
        botocore.auth.get_current_datetime = original


def _text(value) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    found = [v for n, v in headers if n.lower() == name]
    assert len(found) <= 1, f"{name} repeated"
    return found[0] if found else None


def sdk_request(service: str, operation: str, params: dict, *, config: Config | None = None,
                token: str | None = None) -> Wire:
    session = botocore.session.get_session()
    client = session.create_client(service, region_name=REGION, aws_access_key_id=PLACEHOLDER_AKID,
                                   aws_secret_access_key=PLACEHOLDER_SECRET, aws_session_token=token,
                                   config=config)

    def stop(request, **_):
        raise _Captured(request)

    client.meta.events.register("before-send", stop)
    with pinned_clock(CLIENT_TIME), pytest.raises(_Captured) as caught:
        getattr(client, operation)(**params)
    req = caught.value.request
    body = req.body
    if hasattr(body, "read"):
        body = body.read()
    body = b"" if body is None else body.encode() if isinstance(body, str) else bytes(body)
    # urllib3 adds Host (the signed one: the URL's authority) first; do the same.
    headers = [("Host", urlsplit(req.url).netloc)] + [(n, _text(v)) for n, v in req.headers.items()]
    return Wire(req.method, req.url, headers, body)


def hand_signed(signer_cls, service: str, method: str, wire_url: str, headers: dict | list, body: bytes = b"",
                params: list[tuple[str, str]] | None = None) -> Wire:
    """A request a non-botocore client might send: botocore signs the canonical form (``params``),
    the wire carries ``wire_url`` as written."""
    split = urlsplit(wire_url)
    sign_url = wire_url if params is None else f"{split.scheme}://{split.netloc}{split.path}"
    req = AWSRequest(method=method, url=sign_url, data=body, params=params or {})
    for n, v in (headers.items() if isinstance(headers, dict) else headers):
        req.headers[n] = v
    creds = Credentials(PLACEHOLDER_AKID, PLACEHOLDER_SECRET)
    with pinned_clock(CLIENT_TIME):
        signer_cls(creds, service, REGION).add_auth(req)
    return Wire(method, wire_url, [(n, _text(v)) for n, v in req.headers.items()], body,
                botocore_params=tuple(params) if params is not None else None)


@dataclass(frozen=True)
class Case:
    id: str
    build: object  # () -> Wire
    real_token: str | None = None


S3_UNSIGNED = Config(s3={"payload_signing_enabled": False})
S3_SIGNED_BODY = Config(s3={"payload_signing_enabled": True}, request_checksum_calculation="when_required")

CASES = [
    Case("s3-get-object-unsigned-payload",
         lambda: sdk_request("s3", "get_object", {"Bucket": "bkt", "Key": "dir/ü ñ+=&@:~ x.txt"}, config=S3_UNSIGNED)),
    Case("s3-put-object-signed-body",
         lambda: sdk_request("s3", "put_object", {"Bucket": "bkt", "Key": "data/report.csv",
                                                  "Body": b"a,b,c\n1,2,3\n" * 50, "ContentType": "text/csv"},
                             config=S3_SIGNED_BODY)),
    Case("s3-put-object-unsigned-trailer",  # botocore's default upload: aws-chunked + trailing CRC32
         lambda: sdk_request("s3", "put_object", {"Bucket": "bkt", "Key": "k", "Body": b"hello world"})),
    Case("sts-get-caller-identity-form-post",
         lambda: sdk_request("sts", "get_caller_identity", {})),
    Case("dynamodb-get-item-json-target",
         lambda: sdk_request("dynamodb", "get_item", {"TableName": "t", "Key": {"id": {"S": "1"}}})),
    Case("sqs-session-token-replaced",
         lambda: sdk_request("sqs", "send_message", {"QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
                                                      "MessageBody": "hi"}, token=PLACEHOLDER_TOKEN),
         real_token=REAL_TOKEN),
    Case("s3-list-objects-v2-query-order-and-encoding-token-removed",
         lambda: sdk_request("s3", "list_objects_v2", {"Bucket": "bkt", "Prefix": "photos/2024 summer/ü+~",
                                                       "Delimiter": "/", "StartAfter": "a&b=c"},
                             config=S3_UNSIGNED, token=PLACEHOLDER_TOKEN)),
    Case("lambda-arn-in-path-double-encoded-token-added",
         lambda: sdk_request("lambda", "get_function_configuration",
                             {"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:my-fn",
                              "Qualifier": "$LATEST"}),
         real_token=REAL_TOKEN),
    Case("s3-loosely-encoded-wire-query-repeated-header",
         lambda: hand_signed(
             botocore.auth.S3SigV4Auth, "s3", "GET",
             "https://bkt.s3.us-east-1.amazonaws.com/?prefix=a/b%20c%7e&list-type=2&marker=%7e%2fx&acl",
             [("Host", "bkt.s3.us-east-1.amazonaws.com"), ("X-Amz-Meta-Tag", "  a    b "),
              ("x-amz-meta-tag", "c")],
             params=[("prefix", "a/b c~"), ("list-type", "2"), ("marker", "~/x"), ("acl", "")])),
    Case("ec2-form-post-dated-by-http-date-header",
         lambda: hand_signed(
             botocore.auth.SigV4Auth, "ec2", "POST", "https://ec2.us-east-1.amazonaws.com/",
             {"Host": "ec2.us-east-1.amazonaws.com", "Date": "x",
              "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
             body=b"Action=DescribeRegions&Version=2016-11-15"),
         real_token=REAL_TOKEN),
]


@functools.lru_cache(maxsize=None)
def wire_of(case_id: str) -> Wire:
    return next(c for c in CASES if c.id == case_id).build()


def do_resign(wire: Wire, *, real_token: str | None = None, body: bytes | None = None, headers=None,
              **kw) -> list[tuple[str, str]]:
    client = parse_authorization(_header(wire.headers, "authorization"))
    return resign(wire.method, wire.url, list(wire.headers if headers is None else headers),
                  wire.body if body is None else body,
                  access_key_id=REAL_AKID, secret_access_key=REAL_SECRET, session_token=real_token,
                  region=client.region, service=client.service, **kw)


def botocore_authorization(wire: Wire, resigned: list[tuple[str, str]], real_token: str | None,
                           body: bytes) -> str:
    """What botocore's own signer puts in Authorization for the same request with the real credentials."""
    ours = parse_authorization(_header(resigned, "authorization"))
    service = ours.service
    split = urlsplit(wire.url)
    params = list(wire.botocore_params) if wire.botocore_params is not None else None
    url = wire.url if params is None else f"{split.scheme}://{split.netloc}{split.path}"
    req = AWSRequest(method=wire.method, url=url, data=body, params=params or {})
    for n, v in resigned:
        if n.lower() in ours.signed_headers and n.lower() not in ("x-amz-date", "x-amz-security-token"):
            req.headers[n] = v
    declared = _header(resigned, "x-amz-content-sha256")
    if service == "s3":
        signer_cls = botocore.auth.S3SigV4Auth
        if declared == "UNSIGNED-PAYLOAD":
            req.context["client_config"] = S3_UNSIGNED
        elif declared == "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
            req.context["checksum"] = {"request_algorithm": {"in": "trailer", "name": "x-amz-checksum-crc32"}}
    else:
        signer_cls = botocore.auth.SigV4Auth
    when = dt.datetime.strptime(Reference.timestamp(resigned), "%Y%m%dT%H%M%SZ")
    with pinned_clock(when):
        signer_cls(Credentials(REAL_AKID, REAL_SECRET, real_token), service, REGION).add_auth(req)
    return req.headers["Authorization"]


# ---------------------------------------------------------------------------------------------
# parse_authorization
# ---------------------------------------------------------------------------------------------

SIG = "f" * 64
GOOD = f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature={SIG}"


@pytest.mark.parametrize("value, expected", [
    (GOOD, SigV4Header("AKIDEXAMPLE", "20261122", "us-east-1", "s3", ("host", "x-amz-date"), SIG)),
    (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-3/execute-api/aws4_request,SignedHeaders=content-type;host;x-amz-date;x-amz-target,Signature={SIG}",
     SigV4Header("AKIDEXAMPLE", "20150830", "eu-west-3", "execute-api",
                 ("content-type", "host", "x-amz-date", "x-amz-target"), SIG)),
    (f"  AWS4-HMAC-SHA256   Signature={SIG} , SignedHeaders=host , Credential=ASIA0/20240229/us-gov-west-1/s3-object-lambda/aws4_request  ",
     SigV4Header("ASIA0", "20240229", "us-gov-west-1", "s3-object-lambda", ("host",), SIG)),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", None),
    ("Basic dXNlcjpwYXNz", None),
    ("AWS AKIDEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=", None),  # SigV2
    ("", None),
    ("   ", None),
    ("Digest username=x", None),
], ids=["s3", "no-spaces-after-commas", "any-order-extra-whitespace", "bearer", "basic", "sigv2", "empty",
        "blank", "digest"])
def test_parse_authorization(value, expected):
    assert parse_authorization(value) == expected


@pytest.mark.parametrize("value", [
    "AWS4-HMAC-SHA256",
    "AWS4-HMAC-SHA256 ",
    f"AWS4-HMAC-SHA256 SignedHeaders=host, Signature={SIG}",
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3, SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_reqest, SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKID/EXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=/20261122/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261322/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2026112/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/US East/s3/aws4_request, SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1//aws4_request, SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=Host;x-amz-date, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host;;x-amz-date, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host;host, Signature={SIG}",
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIG.upper()}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIG}, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIG}, Extra=1",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request SignedHeaders=host, Signature={SIG}",
    f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/s3/aws4_request, SignedHeaders=host, Signature={SIG},",
    f"AWS4-ECDSA-P256-SHA256 Credential=AKIDEXAMPLE/20261122/s3/aws4_request, SignedHeaders=host, Signature={SIG}",
], ids=["scheme-only", "scheme-space", "no-credential", "no-signature", "no-signedheaders", "short-scope",
        "bad-terminator", "slash-in-akid", "empty-akid", "bad-month", "short-date", "bad-region", "empty-service",
        "uppercase-signed-header", "empty-signed-header", "repeated-signed-header", "short-signature",
        "uppercase-signature", "duplicate-component", "unknown-component", "missing-comma", "trailing-comma",
        "sigv4a"])
def test_parse_authorization_malformed(value):
    with pytest.raises(ValueError):
        parse_authorization(value)


def test_parsed_header_repr_hides_signature():
    parsed = parse_authorization(GOOD)
    assert SIG not in repr(parsed) and "AKIDEXAMPLE" in repr(parsed)


# ---------------------------------------------------------------------------------------------
# resign: real request shapes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reference_accepts_client_placeholder_signature(case):
    """The reference is right: it accepts what botocore signed with the placeholder key, only that key."""
    wire = wire_of(case.id)
    assert Reference.verifies(wire, PLACEHOLDER_SECRET)
    assert not Reference.verifies(wire, REAL_SECRET)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resign_verifies_with_real_key_by_reference(case):
    wire = wire_of(case.id)
    resigned = do_resign(wire, real_token=case.real_token)
    ours = parse_authorization(_header(resigned, "authorization"))
    client = parse_authorization(_header(wire.headers, "authorization"))

    assert ours.access_key_id == REAL_AKID
    assert (ours.date, ours.region, ours.service) == (client.date, client.region, client.service)
    assert ours.signature == Reference.signature(wire.method, wire.url, resigned, wire.body, REAL_SECRET)
    assert Reference.verifies(wire, REAL_SECRET, headers=resigned)
    assert not Reference.verifies(wire, PLACEHOLDER_SECRET, headers=resigned)
    assert ours.signature != client.signature


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resign_equals_botocore_signing_with_real_key(case):
    wire = wire_of(case.id)
    resigned = do_resign(wire, real_token=case.real_token)
    assert _header(resigned, "authorization") == botocore_authorization(wire, resigned, case.real_token, wire.body)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_resign_changes_only_the_auth_headers(case):
    wire = wire_of(case.id)
    resigned = do_resign(wire, real_token=case.real_token)

    assert [(n, v) for n, v in resigned if n.lower() not in MANAGED] == \
           [(n, v) for n, v in wire.headers if n.lower() not in MANAGED]
    assert _header(resigned, "host") == _header(wire.headers, "host")
    assert _header(resigned, "x-amz-date") == _header(wire.headers, "x-amz-date")  # the client's clock
    assert _header(resigned, "x-amz-security-token") == case.real_token
    assert PLACEHOLDER_TOKEN not in repr(resigned) and PLACEHOLDER_AKID not in repr(resigned)
    assert _header(resigned, "x-amz-content-sha256") == _header(wire.headers, "x-amz-content-sha256")
    assert REAL_SECRET not in repr(resigned)

    client = parse_authorization(_header(wire.headers, "authorization"))
    ours = parse_authorization(_header(resigned, "authorization"))
    present = {n.lower() for n, _ in resigned}
    must = (set(client.signed_headers) & (present - HOP_BY_HOP)) | {"host"}
    must |= {n.lower() for n, _ in resigned if n.lower().startswith("x-amz-")}
    must |= {"x-amz-date"} if _header(resigned, "x-amz-date") else {"date"}
    assert set(ours.signed_headers) == must
    assert list(ours.signed_headers) == sorted(ours.signed_headers)


def test_s3_query_canonicalisation_is_what_was_signed():
    # Spot check of the case the table is about: unsorted, percent-encoded, UTF-8 query.
    wire = wire_of("s3-list-objects-v2-query-order-and-encoding-token-removed")
    assert "list-type=2&prefix=" in wire.url
    assert Reference.canonical_query(urlsplit(wire.url).query) == (
        "delimiter=%2F&encoding-type=url&list-type=2&prefix=photos%2F2024%20summer%2F%C3%BC%2B~&start-after=a%26b%3Dc")
    assert sigv4._canonical_query(urlsplit(wire.url).query) == Reference.canonical_query(urlsplit(wire.url).query)
    loose = wire_of("s3-loosely-encoded-wire-query-repeated-header")
    assert sigv4._canonical_query(urlsplit(loose.url).query) == "acl=&list-type=2&marker=~%2Fx&prefix=a%2Fb%20c~"


def test_s3_put_real_hash_is_recomputed_for_the_forwarded_body():
    wire = wire_of("s3-put-object-signed-body")
    assert _header(wire.headers, "x-amz-content-sha256") == hashlib.sha256(wire.body).hexdigest()
    new_body = wire.body.replace(b"1,2,3", b"4,5,6")  # e.g. another addon substituted something
    resigned = do_resign(wire, body=new_body)
    assert _header(resigned, "x-amz-content-sha256") == hashlib.sha256(new_body).hexdigest()
    assert Reference.verifies(wire, REAL_SECRET, headers=resigned, body=new_body)
    assert _header(resigned, "authorization") == botocore_authorization(wire, resigned, None, new_body)


def test_unsigned_payload_needs_no_body():
    wire = wire_of("s3-get-object-unsigned-payload")
    resigned = resign(wire.method, wire.url, wire.headers, None, access_key_id=REAL_AKID,
                      secret_access_key=REAL_SECRET, region=REGION, service="s3")
    assert Reference.verifies(wire, REAL_SECRET, headers=resigned)


def test_amz_date_override():
    wire = wire_of("dynamodb-get-item-json-target")
    resigned = do_resign(wire, amz_date="20261123T000501Z")
    assert _header(resigned, "x-amz-date") == "20261123T000501Z"
    assert [n for n, _ in resigned].count("X-Amz-Date") == 1
    assert parse_authorization(_header(resigned, "authorization")).date == "20261123"
    assert Reference.verifies(wire, REAL_SECRET, headers=resigned)
    assert _header(resigned, "authorization") == botocore_authorization(wire, resigned, None, wire.body)


def test_missing_host_header_signs_url_authority_without_adding_one():
    # HTTP/2: the authority travels as :authority, not as a Host header.
    wire = wire_of("dynamodb-get-item-json-target")
    headers = [(n, v) for n, v in wire.headers if n.lower() != "host"]
    resigned = do_resign(wire, headers=headers)
    assert _header(resigned, "host") is None
    assert "host" in parse_authorization(_header(resigned, "authorization")).signed_headers
    assert Reference.verifies(wire, REAL_SECRET, headers=resigned)


def test_hop_by_hop_and_vanished_signed_headers_are_left_out():
    wire = wire_of("sts-get-caller-identity-form-post")
    auth = _header(wire.headers, "authorization").replace("SignedHeaders=content-type;host;x-amz-date",
                                                          "SignedHeaders=content-type;expect;host;x-amz-date;x-gone")
    headers = [(n, auth if n.lower() == "authorization" else v) for n, v in wire.headers] + [("Expect", "100-continue")]
    resigned = do_resign(wire, headers=headers)
    assert parse_authorization(_header(resigned, "authorization")).signed_headers == ("content-type", "host", "x-amz-date")
    assert Reference.verifies(wire, REAL_SECRET, headers=resigned)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------

def presigned_url() -> str:
    session = botocore.session.get_session()
    client = session.create_client("s3", region_name=REGION, aws_access_key_id=PLACEHOLDER_AKID,
                                   aws_secret_access_key=PLACEHOLDER_SECRET,
                                   config=Config(signature_version="s3v4"))
    return client.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "k"}, ExpiresIn=600)


def test_presigned_urls_are_refused():
    url = presigned_url()
    assert "X-Amz-Signature=" in url and is_presigned_url(url)
    host = urlsplit(url).netloc
    auth = GOOD  # even with a header signature too
    with pytest.raises(PresignedURLRefused):
        resign("GET", url, [("Host", host), ("X-Amz-Date", "20261122T233301Z"), ("Authorization", auth)], b"",
               access_key_id=REAL_AKID, secret_access_key=REAL_SECRET, region=REGION, service="s3")


@pytest.mark.parametrize("url, expected", [
    ("https://bkt.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=A%2F1", True),
    ("https://bkt.s3.amazonaws.com/k?x-amz-signature=abc", True),
    ("https://bkt.s3.amazonaws.com/k?X-Amz-%53ignature=abc", True),
    ("https://bkt.s3.amazonaws.com/k?X-Amz-SignedHeaders", True),
    ("https://bkt.s3.amazonaws.com/k?list-type=2&prefix=X-Amz-Signature", False),
    ("https://bkt.s3.amazonaws.com/k?versionId=3&X-Amz-Date=20261122T233301Z", False),
    ("https://bkt.s3.amazonaws.com/k", False),
])
def test_is_presigned_url(url, expected):
    assert is_presigned_url(url) is expected


@pytest.mark.parametrize("declared", ["STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                                      "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "streaming-whatever", "not-a-hash"])
def test_signed_streaming_and_unknown_payload_hashes_are_refused(declared):
    wire = wire_of("s3-put-object-signed-body")
    headers = [(n, declared if n.lower() == "x-amz-content-sha256" else v) for n, v in wire.headers]
    with pytest.raises(SigV4Error):
        do_resign(wire, headers=headers)


def _replace(headers, name, value):
    return [(n, value if n.lower() == name else v) for n, v in headers]


def _drop(headers, name):
    return [(n, v) for n, v in headers if n.lower() != name]


DYNAMO = "dynamodb-get-item-json-target"
S3PUT = "s3-put-object-signed-body"

# (id, case, overrides for resign()) -- every one must raise SigV4Error without leaking anything.
REFUSALS = [
    ("no-authorization", DYNAMO, lambda w: dict(headers=_drop(w.headers, "authorization"))),
    ("bearer-authorization", DYNAMO, lambda w: dict(headers=_replace(w.headers, "authorization", "Bearer x"))),
    ("malformed-authorization", DYNAMO, lambda w: dict(headers=_replace(w.headers, "authorization", "AWS4-HMAC-SHA256 x"))),
    ("two-authorizations", DYNAMO, lambda w: dict(headers=w.headers + [("Authorization", GOOD)])),
    ("two-hosts", DYNAMO, lambda w: dict(headers=w.headers + [("host", "evil.example")])),
    ("two-dates", DYNAMO, lambda w: dict(headers=w.headers + [("X-Amz-Date", "20261122T233301Z")])),
    ("bad-x-amz-date", DYNAMO, lambda w: dict(headers=_replace(w.headers, "x-amz-date", "2026-11-22T23:33:01Z"))),
    ("impossible-x-amz-date", DYNAMO, lambda w: dict(headers=_replace(w.headers, "x-amz-date", "20261122T253301Z"))),
    ("no-date-at-all", DYNAMO, lambda w: dict(headers=_drop(w.headers, "x-amz-date"))),
    ("bad-http-date", DYNAMO, lambda w: dict(headers=_drop(w.headers, "x-amz-date") + [("Date", "yesterday")])),
    ("bad-amz-date-arg", DYNAMO, lambda w: dict(amz_date="20261122")),
    ("crlf-in-signed-header", DYNAMO, lambda w: dict(headers=_replace(w.headers, "x-amz-target", "a\r\nX-Evil: 1"))),
    ("surrogate-in-signed-header", DYNAMO, lambda w: dict(headers=_replace(w.headers, "x-amz-target", "a\udcff"))),
    ("lone-surrogate-query", DYNAMO, lambda w: dict(url="https://dynamodb.us-east-1.amazonaws.com/?a=\ud800")),
    ("undecodable-path", DYNAMO, lambda w: dict(url="https://dynamodb.us-east-1.amazonaws.com/\udcff")),
    ("relative-url", DYNAMO, lambda w: dict(url="/")),
    ("ftp-url", DYNAMO, lambda w: dict(url="ftp://dynamodb.us-east-1.amazonaws.com/")),
    ("bad-method", DYNAMO, lambda w: dict(method="GET /x")),
    ("header-not-a-pair", DYNAMO, lambda w: dict(headers=w.headers + [("X-Only",)])),
    ("bytes-header", DYNAMO, lambda w: dict(headers=w.headers + [(b"X-B", b"1")])),
    ("body-missing-for-hash", DYNAMO, lambda w: dict(body=None)),
    ("body-missing-for-s3-hash", S3PUT, lambda w: dict(body=None)),
    ("body-not-bytes", DYNAMO, lambda w: dict(body="text")),
    ("akid-with-comma", DYNAMO, lambda w: dict(access_key_id="AKIA,Signature=x")),
    ("akid-with-crlf", DYNAMO, lambda w: dict(access_key_id="AKIA\r\nX: y")),
    ("empty-secret", DYNAMO, lambda w: dict(secret_access_key="")),
    ("bytes-secret", DYNAMO, lambda w: dict(secret_access_key=REAL_SECRET.encode())),
    ("token-with-crlf", DYNAMO, lambda w: dict(session_token=REAL_TOKEN + "\r\nX: y")),
    ("token-empty", DYNAMO, lambda w: dict(session_token="")),
    ("bad-region", DYNAMO, lambda w: dict(region="us east 1")),
    ("bad-service", DYNAMO, lambda w: dict(service="Dynamo/DB")),
]


@pytest.mark.parametrize("name, case_id, overrides", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_never_leak_credentials(name, case_id, overrides, caplog):
    wire = wire_of(case_id)
    args = dict(method=wire.method, url=wire.url, headers=list(wire.headers), body=wire.body,
                access_key_id=REAL_AKID, secret_access_key=REAL_SECRET, session_token=REAL_TOKEN,
                region=REGION, service=parse_authorization(_header(wire.headers, "authorization")).service)
    args.update(overrides(wire))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SigV4Error) as caught:
        resign(args.pop("method"), args.pop("url"), args.pop("headers"), args.pop("body"), **args)
    exc = caught.value
    rendered = "".join(traceback.format_exception(exc)) + str(exc) + repr(exc) + repr(exc.args)
    for secret in (REAL_SECRET, REAL_TOKEN, REAL_SECRET.encode().decode("latin-1")):
        assert secret not in rendered
        assert secret not in caplog.text
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_internal_failure_is_not_chained():
    wire = wire_of(DYNAMO)
    with pytest.raises(SigV4Error) as caught:
        resign(wire.method, "https://dynamodb.us-east-1.amazonaws.com/\udcff", wire.headers, wire.body,
            access_key_id=REAL_AKID, secret_access_key=REAL_SECRET, region=REGION, service="dynamodb")
    assert caught.value.__context__ is None and caught.value.__cause__ is None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_success_logs_nothing_secret(case, caplog):
    caplog.set_level(logging.DEBUG)
    do_resign(wire_of(case.id), real_token=case.real_token)
    assert REAL_SECRET not in caplog.text and REAL_TOKEN not in caplog.text


def test_module_is_pure():
    tree = ast.parse(Path(sigv4.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.split(".")[0] in ("mitmproxy", "logging", "gateway") for m in imported), imported
