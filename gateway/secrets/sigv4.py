"""AWS Signature Version 4: re-sign a sandbox's request with the real credentials.

The sandbox only ever holds PLACEHOLDER AWS credentials. Its SDK signs each request
with them (``Authorization: AWS4-HMAC-SHA256 Credential=PLACEHOLDER/...``); on the way
to an approved AWS host the gateway throws that signature away and signs the very same
request again with the real key. This module is the pure part of that: no mitmproxy,
no I/O, no logging. The signing arithmetic (canonical request, string to sign, signing
key, HMAC) is botocore's ``SigV4Auth``; what is decided here is *which* request is signed:

* **The request as it will be sent.** Method, path and query come from ``url`` (the
  path and query exactly as on the wire); the headers from ``headers``. The gateway
  vouches for what it forwards, so the payload hash is the hash of ``body`` as
  forwarded (which may differ from what the sandbox hashed if another addon rewrote it).
* **Signed headers** = the ones the client listed in ``SignedHeaders`` that are still
  present, minus hop-by-hop headers a proxy may rewrite (``connection``, ``expect``,
  ``transfer-encoding``, ...), plus what SigV4 requires: ``host``, the date header,
  ``x-amz-security-token`` when a session token is used, ``x-amz-content-sha256`` when
  present, and every other ``x-amz-*`` header present (S3 rejects unsigned ``x-amz-*``).
  A header the client signed but that is gone is left out of the list instead of failing:
  AWS checks the signature against the list we send.
* **Host** is signed with the value the client sent and never rewritten. With no Host
  header (HTTP/2 ``:authority``) the authority of ``url`` is signed, verbatim, and no
  Host header is added.
* **Date**: the client's ``X-Amz-Date`` (the sandbox's clock) is kept unless ``amz_date``
  is given, in which case ``X-Amz-Date`` is set/replaced. A request dated only by an
  HTTP ``Date`` header is accepted (SigV4 allows it) and signed with that date.
* **X-Amz-Security-Token** is replaced by ``session_token``, added if the client had
  none, removed if ``session_token`` is None (the placeholder token never leaves).
* **X-Amz-Content-Sha256**, when present: a real hex digest is recomputed from ``body``
  (for every service, not only S3: a stale hash fails wherever it is checked, a fresh
  one never does); ``UNSIGNED-PAYLOAD`` and ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` are
  kept as they are. The *signed* streaming modes
  (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``, ``STREAMING-AWS4-ECDSA-...``) are
  REFUSED: every aws-chunked chunk of such a body carries its own signature chained from
  the header signature with the secret key, so re-signing the headers alone would send a
  body AWS rejects at the first chunk (re-signing would mean rewriting the body).
  Botocore/the AWS CLI never use them over HTTPS (they use the unsigned trailer mode);
  some other SDKs can be configured to.
* **Canonical query**: each name and value is percent-decoded as received and encoded
  again the SigV4 way (RFC 3986 unreserved kept, everything else ``%XX`` upper-case, a
  literal ``+`` is a plus, i.e. ``%2B``), then sorted by name, then value. So the
  signature does not depend on how loosely the client encoded its wire query.
* **Canonical path**: S3 (``s3``, ``s3-object-lambda``, ``s3-outposts``) encodes each
  segment once (decoded as received, re-encoded; ``%2F`` inside a segment stays ``%2F``;
  no dot-segment removal). Every other service: botocore's rule (dot segments and empty
  segments removed, then the wire path encoded again, i.e. the spec's double encoding).

**Presigned URLs (query-string auth) are REFUSED** (``PresignedURLRefused``; test with
``is_presigned_url``): there is deliberately no ``resign_query``. Re-signing one would mint a
bearer URL valid with the REAL key for up to ``X-Amz-Expires`` (7 days), usable from
anywhere, by anyone, for that method and path, with the body unsigned for S3 (a presigned
PUT uploads anything). Unlike a header signature (bound to a 15-minute window and the exact
headers), it is exactly the kind of artefact that travels back to the sandbox: S3 307
redirects carry the full URL in ``Location``, and caller-owned endpoints (API Gateway /
Lambda function URLs with IAM auth) can echo their query string; flow logs and proxies keep
URLs. Presigning exists to hand a URL to a third party, which by construction cannot work
with placeholder credentials, so the legitimate use inside a sandbox is rare. A caller that
sees no SigV4 ``Authorization`` header must still check ``is_presigned_url`` and refuse,
not forward.

Nothing here logs, and no exception message, ``repr`` or chained exception carries the
secret access key, the session token or header values; errors are ``SigV4Error``
(a ``ValueError``) naming the problem only. ``SigV4Auth.add_auth`` is not used: it reads the
wall clock, rewrites the request and logs the canonical request at DEBUG.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_to_bytes, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

__all__ = [
    "ALGORITHM",
    "PresignedURLRefused",
    "SigV4Error",
    "SigV4Header",
    "is_presigned_url",
    "parse_authorization",
    "resign",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_PAYLOAD_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
S3_SERVICES = frozenset({"s3", "s3-object-lambda", "s3-outposts"})

# Hop-by-hop and proxy-managed headers: never signed even if the client signed them, since
# the proxy may drop or rewrite them after we sign (mitmproxy answers Expect itself, HTTP/2
# forbids Transfer-Encoding/Connection, ...). Leaving a header out of SignedHeaders is always
# accepted by AWS; signing one that then changes is not.
_NEVER_SIGN = frozenset({
    "authorization", "connection", "expect", "keep-alive", "proxy-authenticate",
    "proxy-authorization", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
_PRESIGN_PARAMS = frozenset({"x-amz-algorithm", "x-amz-credential", "x-amz-signature",
                             "x-amz-signedheaders"})

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")  # lower-case, as SignedHeaders requires
_AKID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_DATE = re.compile(r"\d{8}")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_SERVICE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")
_SIGV4_TIMESTAMP = "%Y%m%dT%H%M%SZ"


class SigV4Error(ValueError):
    """A request (or Authorization header) this module will not re-sign. Never carries values."""


class PresignedURLRefused(SigV4Error):
    """The request authenticates with query-string SigV4 (a presigned URL); see module docs."""


@dataclass(frozen=True)
class SigV4Header:
    """A parsed ``Authorization: AWS4-HMAC-SHA256 ...`` header.

    The signature is left out of ``repr``: parsed from a re-signed header it is a credential
    for as long as AWS accepts the request.
    """

    access_key_id: str
    date: str  # YYYYMMDD, from the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str = field(repr=False)


def parse_authorization(value: str) -> SigV4Header | None:
    """Parse an Authorization header value.

    Returns None when it is not SigV4 (``Bearer``, ``Basic``, SigV2's ``AWS AKID:sig``, empty).
    Raises ``SigV4Error`` (a ``ValueError``) when it is SigV4 but malformed, and also for
    another ``AWS4-*`` algorithm (SigV4a's ``AWS4-ECDSA-P256-SHA256``): that is an AWS signature
    the gateway cannot re-sign, and a caller treating None as "not AWS, pass it through" should
    fail closed on it instead. Components may come in any order, each exactly once.
    """
    if not isinstance(value, str):
        raise TypeError("Authorization value must be str")
    text = value.strip()
    scheme, _, rest = re.sub(r"\s", " ", text).partition(" ")
    if scheme.upper() != ALGORITHM:
        if scheme.upper().startswith("AWS4-"):
            raise SigV4Error("unsupported AWS signature algorithm (only AWS4-HMAC-SHA256)")
        return None
    rest = rest.strip()
    if not rest:
        raise SigV4Error("malformed SigV4 Authorization: no components")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, eq, val = part.strip().partition("=")
        if not eq or name not in ("Credential", "SignedHeaders", "Signature"):
            raise SigV4Error("malformed SigV4 Authorization: unexpected component")
        if name in fields:
            raise SigV4Error(f"malformed SigV4 Authorization: {name} given twice")
        if not val or any(c.isspace() for c in val):
            raise SigV4Error(f"malformed SigV4 Authorization: bad {name}")
        fields[name] = val
    for name in ("Credential", "SignedHeaders", "Signature"):
        if name not in fields:
            raise SigV4Error(f"malformed SigV4 Authorization: {name} missing")

    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise SigV4Error("malformed SigV4 Authorization: Credential is not AKID/date/region/service/aws4_request")
    akid, date, region, service = scope[:4]
    if not _AKID.fullmatch(akid):
        raise SigV4Error("malformed SigV4 Authorization: bad access key id")
    if not _DATE.fullmatch(date) or not _valid_date(date, "%Y%m%d"):
        raise SigV4Error("malformed SigV4 Authorization: bad credential date")
    if not _REGION.fullmatch(region):
        raise SigV4Error("malformed SigV4 Authorization: bad region")
    if not _SERVICE.fullmatch(service):
        raise SigV4Error("malformed SigV4 Authorization: bad service")

    names = fields["SignedHeaders"].split(";")
    if not all(_HEADER_NAME.fullmatch(n) for n in names):
        raise SigV4Error("malformed SigV4 Authorization: bad SignedHeaders")
    if len(set(names)) != len(names):
        raise SigV4Error("malformed SigV4 Authorization: repeated name in SignedHeaders")

    if not _SIGNATURE.fullmatch(fields["Signature"]):
        raise SigV4Error("malformed SigV4 Authorization: Signature is not 64 lower-case hex digits")
    return SigV4Header(akid, date, region, service, tuple(names), fields["Signature"])


def is_presigned_url(url: str) -> bool:
    """True when the URL's query carries SigV4 query authentication (X-Amz-Signature & co).

    Names are compared case-insensitively and percent-decoded, so a disguised spelling still
    counts (fail closed).
    """
    return any(_pct_decode(p.partition("=")[0], lenient=True).decode("utf-8", "replace").lower() in _PRESIGN_PARAMS
               for p in urlsplit(url).query.split("&") if p)


def resign(method: str, url: str, headers: list[tuple[str, str]], body: bytes | None, *,
           access_key_id: str, secret_access_key: str, session_token: str | None = None,
           region: str, service: str, amz_date: str | None = None) -> list[tuple[str, str]]:
    """Re-sign a header-authenticated SigV4 request with the real credentials.

    ``url`` is absolute (``https://host[:port]/path?query``), path and query as on the wire.
    ``headers`` are the request's headers, in order, repeats allowed. ``body`` is the body
    that will be forwarded; None means "not available" (streamed), which is fine only when
    the payload hash is ``UNSIGNED-PAYLOAD``/``STREAMING-UNSIGNED-PAYLOAD-TRAILER``.
    ``region``/``service`` make the credential scope (normally the client's, from
    ``parse_authorization``; checking that they fit the destination host is the caller's job).

    Returns the headers, same order and names, with Authorization re-signed and X-Amz-Date,
    X-Amz-Security-Token, X-Amz-Content-Sha256 adjusted as described in the module docstring.
    Raises ``PresignedURLRefused`` for query-string auth and ``SigV4Error`` for anything else it
    will not sign (no/malformed SigV4 Authorization, ambiguous repeated headers, signed
    streaming payloads, bad arguments). Exception texts never contain the secret key, the
    session token or header values.
    """
    _check_arguments(access_key_id, secret_access_key, session_token, region, service, amz_date)
    if not isinstance(method, str) or not _TOKEN.fullmatch(method):
        raise SigV4Error("bad HTTP method")
    method = method.upper()
    if not isinstance(url, str):
        raise SigV4Error("url must be str")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SigV4Error("url must be absolute http(s)://host/...")
    if is_presigned_url(url):
        raise PresignedURLRefused("presigned URLs (SigV4 query authentication) are not re-signed")
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
        raise SigV4Error("body must be bytes or None")

    out: list[tuple[str, str]] = []
    for item in headers:
        if (not isinstance(item, tuple) or len(item) != 2
                or not isinstance(item[0], str) or not isinstance(item[1], str)):
            raise SigV4Error("headers must be a list of (str, str) pairs")
        out.append(item)

    def positions(name: str) -> list[int]:
        return [i for i, (n, _) in enumerate(out) if n.lower() == name]

    def single(name: str) -> int | None:
        found = positions(name)
        if len(found) > 1:
            raise SigV4Error(f"more than one {name} header")
        return found[0] if found else None

    # The client's signature: which headers it signed.
    auth_at = single("authorization")
    if auth_at is None:
        raise SigV4Error("request has no Authorization header")
    auth_name, client = out[auth_at][0], parse_authorization(out[auth_at][1])
    if client is None:
        raise SigV4Error("Authorization header is not SigV4")
    host_at = single("host")

    # Date: the client's, unless told otherwise.
    date_at = single("x-amz-date")
    if amz_date is not None:
        timestamp = amz_date
        out = _set_header(out, "x-amz-date", "X-Amz-Date", amz_date)
    elif date_at is not None:
        timestamp = out[date_at][1].strip()
        if not _AMZ_DATE.fullmatch(timestamp) or not _valid_date(timestamp, _SIGV4_TIMESTAMP):
            raise SigV4Error("X-Amz-Date is not YYYYMMDDTHHMMSSZ")
    else:
        http_date_at = single("date")
        if http_date_at is None:
            raise SigV4Error("request has neither X-Amz-Date nor Date")
        timestamp = _timestamp_from_http_date(out[http_date_at][1])
    date_signed = "x-amz-date" if (amz_date is not None or date_at is not None) else "date"

    # Session token: exactly the real one, or none.
    if session_token is not None:
        out = _set_header(out, "x-amz-security-token", "X-Amz-Security-Token", session_token)
    else:
        out = [(n, v) for n, v in out if n.lower() != "x-amz-security-token"]

    # Payload hash.
    sha_at = single("x-amz-content-sha256")
    if sha_at is not None:
        declared = out[sha_at][1].strip()
        if _HEX_SHA256.fullmatch(declared):
            payload_hash = _sha256_hex(body)
            out[sha_at] = (out[sha_at][0], payload_hash)
        elif declared in (UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_PAYLOAD_TRAILER):
            payload_hash = declared
        elif declared.startswith("STREAMING-"):
            raise SigV4Error("signed aws-chunked streaming payloads (per-chunk signatures) are not re-signed")
        else:
            raise SigV4Error("unrecognised X-Amz-Content-Sha256 value")
    else:
        payload_hash = _sha256_hex(body)

    # Headers to sign.
    present = {n.lower() for n, _ in out}
    signed = {h for h in client.signed_headers if h in present} - _NEVER_SIGN
    signed |= {n for n in present if n.startswith("x-amz-")}
    signed |= {"host", date_signed}
    header_map = HTTPHeaders()
    for name, value in out:
        lname = name.lower()
        if lname in signed:
            if _BAD_HEADER_CHARS.search(value) or _has_surrogates(value):
                raise SigV4Error(f"signed header {lname} has a value that cannot be signed")
            header_map[lname] = value
    if host_at is None:
        header_map["host"] = parts.netloc.rpartition("@")[2]

    authorization = None
    try:
        signer = _Signer(
            Credentials(access_key_id, secret_access_key, session_token),
            service, region,
            header_map=header_map,
            canonical_query=_canonical_query(parts.query),
            payload_hash=payload_hash,
            s3=service in S3_SERVICES,
        )
        request = AWSRequest(method=method, url=url)
        request.context["timestamp"] = timestamp
        canonical_request = signer.canonical_request(request)
        string_to_sign = signer.string_to_sign(request, canonical_request)
        signature = signer.signature(string_to_sign, request)
        authorization = (f"{ALGORITHM} Credential={signer.scope(request)}, "
                         f"SignedHeaders={signer.signed_headers(header_map)}, Signature={signature}")
        failure = None
    except Exception as exc:  # noqa: BLE001 - re-raised below without the original (it may hold values)
        failure = type(exc).__name__
    if authorization is None:
        # Raised outside the except block so no __context__ drags the original along.
        raise SigV4Error(f"could not compute the signature ({failure}); the request has a part SigV4 cannot encode")
    return _set_header(out, "authorization", auth_name, authorization)


class _Signer(SigV4Auth):
    """botocore's SigV4 with the request's parts fixed by ``resign`` instead of guessed.

    botocore's defaults suit requests botocore built: it signs every header present, takes
    the query verbatim and hashes ``request.body``. A proxy forwards someone else's request,
    so the header set, the canonical query and the payload hash are decided by ``resign``.
    """

    def __init__(self, credentials, service_name, region_name, *, header_map, canonical_query,
                 payload_hash, s3):
        super().__init__(credentials, service_name, region_name)
        self._header_map = header_map
        self._canonical_query = canonical_query
        self._payload_hash = payload_hash
        self._s3 = s3

    def __repr__(self) -> str:
        return f"<_Signer {self._service_name}/{self._region_name}>"

    def headers_to_sign(self, request):
        return self._header_map

    def canonical_query_string(self, request):
        return self._canonical_query

    def payload(self, request):
        return self._payload_hash

    def _normalize_url_path(self, path):
        if self._s3:
            return _s3_canonical_path(path)
        return super()._normalize_url_path(path)


# -- helpers ---------------------------------------------------------------------------------

def _check_arguments(access_key_id, secret_access_key, session_token, region, service, amz_date):
    # Messages name the argument, never its value.
    if not isinstance(access_key_id, str) or not _AKID.fullmatch(access_key_id):
        raise SigV4Error("access_key_id is not a valid access key id")
    if not isinstance(secret_access_key, str) or not secret_access_key or _has_surrogates(secret_access_key):
        raise SigV4Error("secret_access_key must be a non-empty str")
    if session_token is not None and (not isinstance(session_token, str)
                                      or not _VISIBLE_ASCII.fullmatch(session_token)):
        raise SigV4Error("session_token must be None or a non-empty printable-ASCII str")
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise SigV4Error("region is not a valid region name")
    if not isinstance(service, str) or not _SERVICE.fullmatch(service):
        raise SigV4Error("service is not a valid signing name")
    if amz_date is not None and (not isinstance(amz_date, str) or not _AMZ_DATE.fullmatch(amz_date)
                                 or not _valid_date(amz_date, _SIGV4_TIMESTAMP)):
        raise SigV4Error("amz_date is not YYYYMMDDTHHMMSSZ")


def _valid_date(text: str, fmt: str) -> bool:
    try:
        _dt.datetime.strptime(text, fmt)
    except ValueError:
        return False
    return True


def _timestamp_from_http_date(value: str) -> str:
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        when = None
    if when is None:
        raise SigV4Error("Date header is not an HTTP date")
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).strftime(_SIGV4_TIMESTAMP)


def _set_header(headers: list[tuple[str, str]], lname: str, name: str, value: str) -> list[tuple[str, str]]:
    """Replace the first ``lname`` header's value (keeping its spelling), drop repeats, else append."""
    result: list[tuple[str, str]] = []
    done = False
    for n, v in headers:
        if n.lower() == lname:
            if not done:
                result.append((n, value))
                done = True
            continue
        result.append((n, v))
    if not done:
        result.append((name, value))
    return result


def _sha256_hex(body) -> str:
    if body is None:
        raise SigV4Error("the payload hash needs the body, which was not given")
    return hashlib.sha256(body).hexdigest()


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _pct_decode(text: str, *, lenient: bool = False) -> bytes:
    # mitmproxy hands over non-UTF-8 bytes as surrogate escapes; keep them as the bytes they were.
    # Any other lone surrogate came from no bytes at all: an error when signing (UnicodeEncodeError),
    # tolerated when merely looking for presigning parameter names.
    return unquote_to_bytes(text.encode("utf-8", "surrogatepass" if lenient else "surrogateescape"))


def _uri_encode(raw: bytes) -> str:
    return quote(raw, safe="-_.~")


def _canonical_query(query: str) -> str:
    pairs = []
    for piece in query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        pairs.append((_uri_encode(_pct_decode(name)), _uri_encode(_pct_decode(value))))
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


def _s3_canonical_path(path: str) -> str:
    if not path:
        return "/"
    return "/".join(_uri_encode(_pct_decode(segment)) for segment in path.split("/"))
