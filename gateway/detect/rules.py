"""Credential rules: the built-in pack and gitleaks-format TOML import.

A `Rule` holds a Python regex (the one that confirms a match and extracts the
secret) and, optionally, a separate hyperscan expression used as the fast
prefilter. Hyperscan finds which rules occur at all in a part in one pass;
Python `re` then runs only for those rules (see `matcher.py`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError

from .entropy import shannon

ACTIONS = ("block", "redact", "alert")


@dataclass(frozen=True)
class Allowlist:
    """Matches to ignore: a regex on the secret (or the whole match), or a stopword inside the secret."""

    regexes: tuple[str, ...] = ()
    stopwords: tuple[str, ...] = ()
    target: str = "secret"  # "secret" | "match"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple(re.compile(r.encode()) for r in self.regexes))
        object.__setattr__(self, "_stop", tuple(w.lower().encode() for w in self.stopwords))

    def allows(self, secret: bytes, match: bytes) -> bool:
        target = match if self.target == "match" else secret
        if any(rx.search(target) for rx in self._compiled):  # type: ignore[attr-defined]
            return True
        low = secret.lower()
        return any(w in low for w in self._stop)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    regex: str  # Python syntax; confirms and extracts
    keywords: tuple[str, ...] = ()
    entropy: float | None = None  # minimum Shannon entropy (bits/char) of the secret
    secret_group: int | None = None  # None: group 1 if the regex has groups, else the whole match
    allowlist: Allowlist = field(default_factory=Allowlist)
    action: str | None = None  # block | redact | alert; None: the policy decides
    hs: str | None = None  # hyperscan prefilter expression; None: use `regex`
    max_len: int = 512  # longest match this rule can produce (sizes the streaming overlap)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_re", re.compile(self.regex.encode()))
        object.__setattr__(self, "_kw", tuple(k.lower().encode() for k in self.keywords))

    @property
    def prefilter(self) -> str:
        """The hyperscan expression: `hs`, else the regex without the token-start group (a leading
        class that matches nearly every byte slows a multi-pattern database down 3x)."""
        if self.hs is not None:
            return self.hs
        return self.regex[len(_START):] if self.regex.startswith(_START) else self.regex

    @property
    def compiled(self) -> re.Pattern[bytes]:
        return self._re  # type: ignore[attr-defined]

    def secret_span(self, m: re.Match[bytes]) -> tuple[int, int]:
        g = self.secret_group
        if g is None:
            g = 1 if m.re.groups else 0
        if g and m.group(g) is None:
            g = 0
        return m.span(g)

    def accepts(self, secret: bytes, match: bytes, global_allow: Allowlist | None = None) -> bool:
        if self.entropy is not None and shannon(secret) < self.entropy:
            return False
        if self.allowlist.allows(secret, match):
            return False
        if global_allow is not None and global_allow.allows(secret, match):
            return False
        return True


@dataclass(frozen=True)
class RulePack:
    rules: tuple[Rule, ...]
    allowlist: Allowlist = field(default_factory=Allowlist)  # applies to every rule

    def __post_init__(self) -> None:
        ids = [r.id for r in self.rules]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ConfigError(f"rule pack: duplicate rule id(s) {', '.join(dup)} (fix: give every rule a unique id)")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    def merge(self, other: RulePack) -> RulePack:
        """Rules of both packs; a rule in `other` replaces one of ours with the same id."""
        theirs = {r.id for r in other.rules}
        rules = tuple(r for r in self.rules if r.id not in theirs) + other.rules
        allow = Allowlist(
            regexes=self.allowlist.regexes + other.allowlist.regexes,
            stopwords=self.allowlist.stopwords + other.allowlist.stopwords,
        )
        return RulePack(rules, allow)

    def get(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


# --- built-in pack ------------------------------------------------------------------------------

_END = r"(?:[^A-Za-z0-9/+=]|$)"  # end of a base64-alphabet token (no lookahead: hyperscan-compatible)
# start of a token: start of data, a non-word byte, or a JSON/C escape (`\n`), so a token on a new line
# of a JSON-encoded file is found without a decoded view (no lookbehind: hyperscan-compatible)
_START = r"(?:^|[^A-Za-z0-9_]|\\[nrt])"
_GENERIC_NAMES = (
    r"(?:password|passwd|passphrase|pwd|secret|client[_.-]?secret|token|auth[_.-]?token|access[_.-]?token|"
    r"api[_.-]?key|apikey|access[_.-]?key|private[_.-]?key)"
)
_GENERIC_ALLOW = Allowlist(
    regexes=(
        r"^\$\{?[A-Za-z_]",  # ${VAR} / $VAR
        r"^%\(?[A-Za-z_]",  # %(name)s / %VAR%
        r"^\{\{",  # templates
        r"^<[^>]*>?$",  # <your-token>
        r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$",  # attribute access: self.token
        r"^[A-Za-z_]+$",  # bare identifiers / words
        r"^[a-z]+(?:[-_.][a-z]+)+$",  # lower-case words joined: obs-local-part, sha256.digest
        r"^[=|&!?:]|\|\||&&",  # code: token.value==k||x, a ?: b
        r"^([*xX.#-])\1*$",  # ****** / xxxxxx
        r"^[0-9.:-]+$",  # numbers, versions, times
        r"^(?:https?|file)://",  # URLs
        r"^/",  # paths
    ),
    stopwords=("example", "changeme", "placeholder", "dummy", "sample", "redacted", "your_", "your-", "xxxx", "test"),
)

BUILTIN: tuple[Rule, ...] = (
    Rule(
        "aws-access-key-id",
        "AWS access key id",
        _START + r"((?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16})\b",
        keywords=("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        allowlist=Allowlist(regexes=(r"EXAMPLE$",)),
        max_len=24,
    ),
    Rule(
        "aws-secret-access-key",
        "AWS secret access key assigned to an aws*secret* name",
        r"(?i)aws[\w.-]{0,24}?(?:secret|sk)[\w.-]{0,24}?[\"']?\s{0,4}(?:=|:|=>|:=)\s{0,4}[\"']?([A-Za-z0-9/+]{40})"
        + _END,
        keywords=("aws",),
        entropy=3.5,
        allowlist=Allowlist(regexes=(r"EXAMPLE",)),
        max_len=140,
    ),
    Rule(
        "gcp-service-account-key",
        "GCP service-account JSON private key",
        r"\"private_key\"\s*:\s*\"(-----BEGIN (?:RSA )?PRIVATE KEY-----(?:\\n|\n)[A-Za-z0-9+/=\\\n]{64,8192})",
        keywords=("private_key",),
        hs=r"\"private_key\"\s*:\s*\"-----BEGIN (?:RSA )?PRIVATE KEY-----",
        max_len=8300,
    ),
    Rule(
        "gcp-service-account-email",
        "GCP service-account client_email (part of a service-account key file)",
        r"\"client_email\"\s*:\s*\"([a-z0-9-]{6,30}@[a-z0-9-]{6,30}\.iam\.gserviceaccount\.com)\"",
        keywords=("gserviceaccount",),
        action="alert",
        max_len=120,
    ),
    Rule(
        "azure-storage-account-key",
        "Azure storage account key / connection string",
        r"(?i)(?:AccountKey|SharedAccessKey|azure[\w.-]{0,20}?(?:storage|account)[\w.-]{0,20}?key[\"']?\s{0,4}[:=]\s{0,4}[\"']?)=?([A-Za-z0-9+/]{86}==)",
        keywords=("AccountKey", "SharedAccessKey", "azure"),
        max_len=200,
    ),
    Rule(
        "azure-ad-client-secret",
        "Azure AD (Entra ID) application client secret",
        r"(?:^|[\\'\"`\s>=:(,)])([A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34})(?:$|[\\'\"`\s<),])",
        keywords=("q~",),
        max_len=48,
    ),
    Rule("github-pat", "GitHub personal access token (classic)", _START + r"(ghp_[A-Za-z0-9]{36})\b", keywords=("ghp_",), max_len=40),
    Rule("github-oauth", "GitHub OAuth access token", _START + r"(gho_[A-Za-z0-9]{36})\b", keywords=("gho_",), max_len=40),
    Rule("github-user-token", "GitHub user-to-server token", _START + r"(ghu_[A-Za-z0-9]{36})\b", keywords=("ghu_",), max_len=40),
    Rule("github-app-token", "GitHub server-to-server (app installation) token", _START + r"(ghs_[A-Za-z0-9]{36})\b", keywords=("ghs_",), max_len=40),
    Rule("github-refresh-token", "GitHub refresh token", _START + r"(ghr_[A-Za-z0-9]{36,76})\b", keywords=("ghr_",), max_len=80),
    Rule(
        "github-fine-grained-pat",
        "GitHub fine-grained personal access token",
        _START + r"(github_pat_[A-Za-z0-9_]{82})\b",
        keywords=("github_pat_",),
        max_len=93,
    ),
    Rule("gitlab-pat", "GitLab personal access token", _START + r"(glpat-[A-Za-z0-9_-]{20,50})\b", keywords=("glpat-",), max_len=56),
    Rule(
        "slack-token",
        "Slack bot/user/app token",
        _START + r"(xox[abposr]-[0-9A-Za-z]{8,}-[0-9A-Za-z-]{8,250})",
        keywords=("xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-"),
        max_len=270,
    ),
    Rule(
        "slack-webhook-url",
        "Slack incoming webhook URL",
        r"(hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,150})",
        keywords=("hooks.slack.com",),
        max_len=180,
    ),
    Rule("stripe-live-key", "Stripe live secret / restricted key", _START + r"((?:sk|rk)_live_[A-Za-z0-9]{20,247})\b", keywords=("sk_live_", "rk_live_"), max_len=256),
    Rule(
        "openai-api-key",
        "OpenAI API key",
        _START + r"(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{16,200}T3BlbkFJ[A-Za-z0-9_-]{16,200})\b",
        keywords=("T3BlbkFJ",),
        hs=r"sk-[A-Za-z0-9_-]{16,200}T3BlbkFJ",
        max_len=420,
    ),
    Rule(
        "openai-project-key",
        "OpenAI project / service-account / admin key",
        _START + r"(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,250})\b",
        keywords=("sk-proj-", "sk-svcacct-", "sk-admin-"),
        max_len=270,
    ),
    Rule(
        "anthropic-api-key",
        "Anthropic API key",
        _START + r"(sk-ant-(?:api|admin|sid)\d{2}-[A-Za-z0-9_-]{80,120})",
        keywords=("sk-ant-",),
        max_len=140,
    ),
    Rule("huggingface-token", "Hugging Face access token", _START + r"(hf_[A-Za-z0-9]{34,40})\b", keywords=("hf_",), entropy=3.0, max_len=44),
    Rule("npm-token", "npm access token", _START + r"(npm_[A-Za-z0-9]{36})\b", keywords=("npm_",), max_len=40),
    Rule("pypi-token", "PyPI upload token", r"(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,1000})", keywords=("pypi-AgEIcHlwaS5vcmc",), max_len=1024),
    Rule(
        "jwt",
        "JSON Web Token",
        _START + r"(eyJ[A-Za-z0-9_-]{8,4000}\.eyJ[A-Za-z0-9_-]{8,8000}\.[A-Za-z0-9_-]{16,2000})",
        keywords=("eyJ",),
        hs=r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16}",
        max_len=14100,
    ),
    Rule(
        "private-key",
        "PEM private key (RSA, EC, DSA, OpenSSH, PKCS#8, encrypted)",
        r"(-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[A-Za-z0-9+/=\s:,.\\-]{16,16384}?-----END [A-Z ]{0,16}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,.\\-]{16,16384}))",
        keywords=("PRIVATE KEY",),
        hs=r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----",
        max_len=16500,
    ),
    Rule(
        "generic-secret-assignment",
        "password= / secret= / token= / api_key: assignment with a high-entropy value",
        r"(?i)" + _GENERIC_NAMES + r"[\w.-]{0,16}[\"']?\s{0,3}(?:=|:|=>|:=)\s{0,3}[\"']?([^\s\"'`&;,<>{}()\[\]\\]{8,120})",
        keywords=("pass", "pwd", "secret", "token", "key"),
        entropy=3.5,
        allowlist=_GENERIC_ALLOW,
        hs=r"(?i)" + _GENERIC_NAMES + r"[\w.-]{0,16}[\"']?\s{0,3}(?:=|:|=>|:=)\s{0,3}[\"']?[^\s\"'`&;,<>{}()\[\]\\]{8}",
        max_len=200,
    ),
)


def builtin_rules() -> RulePack:
    """The built-in credential rule pack (ids and descriptions listed in docs/detection.md)."""
    return RulePack(BUILTIN)


# --- gitleaks TOML ------------------------------------------------------------------------------


def go_regex_to_python(rx: str) -> str:
    """Translate the RE2 (Go) syntax gitleaks uses into Python `re` syntax.

    Handles flag groups in the middle of a pattern (`a(?i)b` means `a(?i:b)` up to the end of the
    enclosing group, which Python 3.11+ refuses as a global flag) and `\\z`.
    """
    out: list[str] = []
    closers: list[int] = [0]  # per open group: how many extra ')' to emit when it closes
    i, n, in_class = 0, len(rx), False
    while i < n:
        c = rx[i]
        if c == "\\" and i + 1 < n:
            nxt = rx[i + 1]
            out.append("\\Z" if nxt == "z" and not in_class else c + nxt)
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            if i + 1 < n and rx[i + 1] == "^":
                out.append("^")
                i += 1
            if i + 1 < n and rx[i + 1] == "]":
                out.append("\\]")
                i += 1
        elif c == "(":
            m = re.match(r"\(\?([imsU-]+)\)", rx[i:])
            if m:
                flags = m.group(1).replace("U", "")
                at_start = not "".join(out).strip() and len(closers) == 1
                if at_start:
                    out.append(f"(?{flags})")
                elif flags:
                    out.append(f"(?{flags}:")
                    closers[-1] += 1
                i += len(m.group(0))
                continue
            closers.append(0)
            out.append(c)
        elif c == ")":
            out.append(")" * closers.pop() if len(closers) > 1 else "")
            out.append(")")
        elif c == "|" and closers[-1]:
            # a flag group opened in this branch ends at the alternation
            out.append(")" * closers[-1])
            closers[-1] = 0
            out.append(c)
        else:
            out.append(c)
        i += 1
    out.append(")" * closers[0])
    return "".join(out)


def _line_of(text: str, needle: str) -> int:
    idx = text.find(needle)
    return text.count("\n", 0, idx) + 1 if idx >= 0 else 0


def _nth_line(text: str, needle: str, n: int) -> int:
    idx = -1
    for _ in range(n):
        idx = text.find(needle, idx + 1)
        if idx < 0:
            return 0
    return text.count("\n", 0, idx) + 1


def _allowlist_from(tbl: object, where: str) -> Allowlist:
    if not isinstance(tbl, dict):
        raise ValueError(f"{where} must be a table")
    regexes = tbl.get("regexes", [])
    stop = tbl.get("stopwords", [])
    target = tbl.get("regexTarget", "secret")
    if not isinstance(regexes, list) or not all(isinstance(r, str) for r in regexes):
        raise ValueError(f"{where}.regexes must be a list of strings")
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ValueError(f"{where}.stopwords must be a list of strings")
    if target not in ("secret", "match", "line"):
        raise ValueError(f"{where}.regexTarget must be secret, match or line")
    conv = tuple(go_regex_to_python(r) for r in regexes)
    for r in conv:
        try:
            re.compile(r)
        except re.error as e:
            raise ValueError(f"{where}.regexes: invalid regex ({e})") from None
    return Allowlist(conv, tuple(stop), "match" if target == "line" else target)


def _merge_allow(lists: list[Allowlist]) -> Allowlist:
    if not lists:
        return Allowlist()
    return Allowlist(
        regexes=tuple(r for a in lists for r in a.regexes),
        stopwords=tuple(s for a in lists for s in a.stopwords),
        target=lists[0].target,
    )


def load_gitleaks(path: str | Path) -> RulePack:
    """Rules from a gitleaks-format TOML file. Errors name the file, the line and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read gitleaks rules ({e.__class__.__name__}) (fix: check the path)") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e} (fix: correct the TOML syntax at that line)") from None
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise ConfigError(f"{path}:1: no [[rules]] found (fix: add at least one [[rules]] table with id and regex)")
    try:
        global_allow = _merge_allow(
            [_allowlist_from(doc["allowlist"], "[allowlist]")] if "allowlist" in doc else []
        )
    except ValueError as e:
        raise ConfigError(f"{path}:{_line_of(text, '[allowlist]')}: {e} (fix: see gitleaks' allowlist format)") from None
    rules: list[Rule] = []
    for n, tbl in enumerate(raw_rules, 1):
        rid = tbl.get("id") if isinstance(tbl, dict) else None
        where = f"rule {rid!r}" if isinstance(rid, str) else f"[[rules]] #{n}"
        line = _line_of(text, f'"{rid}"') if isinstance(rid, str) else _nth_line(text, "[[rules]]", n)
        loc = f"{path}:{line}" if line else str(path)
        try:
            rules.append(_rule_from(tbl, n))
        except ValueError as e:
            raise ConfigError(f"{loc}: {where}: {e}") from None
    try:
        return RulePack(tuple(rules), global_allow)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _rule_from(tbl: object, n: int) -> Rule:
    if not isinstance(tbl, dict):
        raise ValueError("must be a table (fix: use [[rules]])")
    rid = tbl.get("id")
    if not isinstance(rid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", rid):
        raise ValueError("needs an id of letters, digits, '-', '_', '.' (fix: add id = \"my-rule\")")
    rx = tbl.get("regex")
    if not isinstance(rx, str) or not rx:
        if "path" in tbl:
            raise ValueError("path-only rules are not supported (fix: give the rule a regex)")
        raise ValueError("needs a regex (fix: add regex = '''...''')")
    pyrx = go_regex_to_python(rx)
    try:
        compiled = re.compile(pyrx.encode())
    except re.error as e:
        raise ValueError(f"regex does not compile ({e}) (fix: correct the regex)") from None
    group = tbl.get("secretGroup")
    if group is not None and (not isinstance(group, int) or group < 0 or group > compiled.groups):
        raise ValueError(f"secretGroup {group!r} is not a group of the regex (fix: use 0..{compiled.groups})")
    ent = tbl.get("entropy")
    if ent is not None and (not isinstance(ent, (int, float)) or not 0 <= ent <= 8):
        raise ValueError("entropy must be a number between 0 and 8 (fix: e.g. entropy = 3.5)")
    kws = tbl.get("keywords", [])
    if not isinstance(kws, list) or not all(isinstance(k, str) for k in kws):
        raise ValueError("keywords must be a list of strings")
    action = tbl.get("action")
    if action is not None and action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    lists = []
    if "allowlist" in tbl:
        lists.append(_allowlist_from(tbl["allowlist"], "[rules.allowlist]"))
    for al in tbl.get("allowlists", []) or []:
        lists.append(_allowlist_from(al, "[[rules.allowlists]]"))
    desc = tbl.get("description", rid)
    return Rule(
        id=rid,
        description=str(desc),
        regex=pyrx,
        keywords=tuple(kws),
        entropy=float(ent) if ent is not None else None,
        secret_group=group,
        allowlist=_merge_allow(lists),
        action=action,
        max_len=int(tbl.get("maxLength", 1024)) if isinstance(tbl.get("maxLength", 1024), int) else 1024,
    )
