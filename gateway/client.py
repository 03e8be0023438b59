"""Hand a sandbox to egressgw from any provider's SDK: one session, its environment, the CA to trust.

    from gateway.client import create_sandbox_access

    access = create_sandbox_access(
        "http://127.0.0.1:8081", control_token, "agent-7", policy_text,
        proxy="gw.internal:3128",                 # the proxy as the sandbox reaches it
        secrets=[{"name": "OPENAI_API_KEY", "source": "vault://kv/openai#key", "hosts": ["api.openai.com"]}],
    )
    sandbox = provider.create(env=access.env)     # E2B envs=, Modal secrets, Daytona env_vars, docker -e
    sandbox.write_file(access.ca_path, access.ca_pem)

`env` holds the proxy URL with the session's credentials (HTTPS_PROXY, HTTP_PROXY and
lowercase forms), NO_PROXY, every CA variable pointing at `ca_path`, and the secret
placeholders. The token is in the proxy URL only: treat `env` as a secret, and delete
the session (`delete_sandbox_access`) when the sandbox ends. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from gateway.errors import ControlAPIError
from gateway.sessions.client import ControlClient

# Where each runtime looks for extra CAs; all point at the one bundle.
CA_VARIABLES = (
    "SSL_CERT_FILE",  # OpenSSL, Python ssl/httpx, Go, Ruby
    "REQUESTS_CA_BUNDLE",  # Python requests
    "CURL_CA_BUNDLE",  # curl
    "NODE_EXTRA_CA_CERTS",  # Node.js
    "GIT_SSL_CAINFO",  # git over HTTPS
    "PIP_CERT",  # pip
    "AWS_CA_BUNDLE",  # AWS CLI and SDKs
    "DENO_CERT",  # Deno
    "CARGO_HTTP_CAINFO",  # cargo
    "NPM_CONFIG_CAFILE",  # npm
)
DEFAULT_CA_PATH = "/etc/egressgw/ca-bundle.pem"
DEFAULT_NO_PROXY = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class SandboxAccess:
    session_id: str
    proxy_url: str = field(repr=False)  # carries the token
    env: dict[str, str] = field(repr=False)
    ca_pem: str = field(repr=False)
    ca_path: str = DEFAULT_CA_PATH
    placeholders: dict[str, str] = field(default_factory=dict, repr=False)


def proxy_env(proxy_url: str, no_proxy=DEFAULT_NO_PROXY) -> dict[str, str]:
    """Both spellings: curl and Go read the lowercase ones, most others the uppercase."""
    bypass = ",".join(no_proxy)
    env = {}
    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = env[name.lower()] = proxy_url
    env["NO_PROXY"] = env["no_proxy"] = bypass
    return env


def create_sandbox_access(
    control_url: str,
    control_token: str,
    name: str,
    policy_text: str,
    *,
    proxy: str | None = None,
    secrets: list[dict] | None = None,
    ca_path: str = DEFAULT_CA_PATH,
    no_proxy=DEFAULT_NO_PROXY,
    timeout: float = 10.0,
) -> SandboxAccess:
    """Create a session on the gateway at `control_url` and return what the sandbox needs.

    `proxy` is host:port of the explicit proxy as the sandbox reaches it (default: the address the
    gateway reports, which is only right when the sandbox shares its network)."""
    client = ControlClient(control_url, control_token, timeout=timeout)
    session = client.create_session(name, policy_text, secrets=secrets)
    try:
        hostport = proxy or session.get("proxy")
        if not hostport:
            raise ControlAPIError("the gateway has no explicit proxy (fix: set listen.proxy, or pass proxy=HOST:PORT)")
        url = f"http://{quote(session['id'], safe='')}:{quote(session['token'], safe='')}@{hostport}"
        ca_pem = client.ca_bundle()
    except BaseException:
        client.delete_session(session["id"])  # nothing half-made is left behind
        raise
    placeholders = dict(session.get("env", {}))
    env = {**proxy_env(url, no_proxy), **{v: ca_path for v in CA_VARIABLES}, **placeholders}
    return SandboxAccess(session["id"], url, env, ca_pem, ca_path, placeholders)


def delete_sandbox_access(control_url: str, control_token: str, access: SandboxAccess | str) -> None:
    """End the session: its credentials and placeholders are worthless from the next request."""
    session_id = access if isinstance(access, str) else access.session_id
    ControlClient(control_url, control_token).delete_session(session_id)
