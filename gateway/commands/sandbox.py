"""`egressgw sandbox`: network-namespace sandboxes on this host, each with its own session."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path

import netns
from gateway.client import CA_VARIABLES
from gateway.commands.common import (
    add_config_argument,
    add_secret_arguments,
    config_from_args,
    control_client,
    secrets_from_args,
)
from gateway.errors import ConfigError, ControlAPIError, SandboxError
from gateway.policy import load_policy_file
from gateway.trust import sandbox_bundle_path

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
}


def sandbox_env(config, session_id: str | None) -> dict[str, str]:
    bundle = sandbox_bundle_path(config)
    env = {name: bundle for name in CA_VARIABLES}
    if session_id:
        env["EGRESSGW_SESSION"] = session_id
    return env


def add_parser(sub) -> None:
    p = sub.add_parser("sandbox", help="sandbox network namespaces on this host")
    s = p.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")

    up = s.add_parser("up", help="create a sandbox namespace governed by a policy")
    up.add_argument("name")
    up.add_argument("--policy", required=True, metavar="FILE")
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    add_secret_arguments(up)
    up.set_defaults(func=_up)

    at = s.add_parser("attach", help="govern a sandbox that already has its own namespace, or a microVM's tap")
    at.add_argument("name")
    at.add_argument("--policy", required=True, metavar="FILE")
    which = at.add_mutually_exclusive_group(required=True)
    which.add_argument("--netns-pid", type=int, metavar="PID", help="a process inside the sandbox's namespace")
    which.add_argument("--netns-path", metavar="PATH", help="/proc/PID/ns/net or /run/netns/NAME")
    which.add_argument("--tap", metavar="DEV", help="a Firecracker tap device in the gateway namespace")
    at.add_argument("--json", action="store_true", help="print the result as JSON")
    add_secret_arguments(at)
    at.set_defaults(func=_attach)

    ex = s.add_parser("exec", help="run a command inside a sandbox (unprivileged by default)")
    ex.add_argument("name")
    ex.add_argument("--user", default="nobody", help="user to run as (default nobody; 'root' keeps root)")
    ex.add_argument("cmd", nargs="*", metavar="CMD", help="the command, after --")
    ex.set_defaults(func=_exec)

    ls = s.add_parser("list", help="list sandboxes")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    down = s.add_parser("down", help="remove a sandbox and its session (idempotent)")
    down.add_argument("name")
    down.set_defaults(func=_down)
    for parser in (up, at, ex, ls, down):
        add_config_argument(parser)


def _up(args) -> int:
    return _govern(args, None)


def _attach(args) -> int:
    # Checked before anything is allocated: a target that is not there fails with a fix.
    return _govern(args, netns.target(netns_pid=args.netns_pid, netns_path=args.netns_path, tap=args.tap))


def _govern(args, target) -> int:
    """up and attach: the same rules, the same session, the same rollback."""
    config = config_from_args(args)
    if ipaddress.ip_address(config.transparent.host).is_loopback or ipaddress.ip_address(config.dns.host).is_loopback:
        raise ConfigError(
            f"{config.source}: listen.transparent and listen.dns must not be loopback for namespace sandboxes "
            "(fix: listen on 0.0.0.0; the sandbox's own rules keep other hosts out)"
        )
    load_policy_file(args.policy)  # every problem, with lines, before anything is made
    policy_text = Path(args.policy).read_text()
    secrets = secrets_from_args(args)
    client = control_client(config)
    client.health()
    ports, worker = (config.transparent.port, config.dns.port), None
    if config.workers > 1:  # pinned: the redirect goes to the ports of the worker the gateway picks
        pool = client.workers()
        worker = pool["pick"]
        ports = next((w["transparent"], w["dns"]) for w in pool["workers"] if w["index"] == worker)
    sb = netns.up(args.name, transparent_port=ports[0], dns_port=ports[1],
                  pool=config.sandbox_pool, state_dir=config.state_dir, target=target)
    try:
        session = client.create_session(args.name, policy_text, [sb.sandbox_addr], secrets=secrets,
                                        policy_dir=str(Path(args.policy).resolve().parent),
                                        policy_file=str(Path(args.policy).resolve()), worker=worker)
        netns.set_session(args.name, session["id"], state_dir=config.state_dir)
    except BaseException:
        netns.down(args.name, state_dir=config.state_dir)
        raise
    env = {**sandbox_env(config, session["id"]), **session.get("env", {})}
    result = {
        "name": sb.name, "netns": sb.netns, "address": sb.sandbox_addr, "gateway": sb.host_addr,
        "session": session["id"], "policy": session["policy"], "mode": session["mode"], "env": env,
        "kind": sb.kind, "prefix": sb.prefix,
    }
    if worker is not None:
        result["worker"] = worker
    if sb.kind == "tap":
        result.update(tap=sb.host_if, boot_args=netns.boot_args(sb))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        where = f"tap {sb.host_if}" if sb.kind == "tap" else f"netns {sb.netns}"
        print(f"sandbox {sb.name} up ({sb.kind}): {where}, address {sb.sandbox_addr}, session {session['id']}")
        if sb.kind != "netns":
            print(f"the sandbox's side: address {sb.sandbox_addr}/{sb.prefix}, default route and DNS via {sb.host_addr}"
                  + (f"; microVM kernel argument: {netns.boot_args(sb)}" if sb.kind == "tap" else ""))
        print(f"policy {session['policy']} ({session['mode']}); environment for processes inside:")
        for k, v in env.items():
            print(f"  export {k}={v}")
        print(f"run a command inside: egressgw sandbox exec {sb.name} -- CMD")
    return 0


def _exec(args) -> int:
    config = config_from_args(args)
    cmd = args.cmd
    if not cmd:
        raise SandboxError("no command given (fix: egressgw sandbox exec NAME -- CMD ARGS...)")
    sb = netns.get(args.name, state_dir=config.state_dir)
    env = {**BASE_ENV, **sandbox_env(config, sb.session_id), **_placeholders(config, sb.session_id)}
    argv = netns.exec_argv(sb, cmd, user=None if args.user == "root" else args.user, env=env)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _placeholders(config, session_id: str | None) -> dict[str, str]:
    """The session's placeholders, asked of the gateway (they live there, not on disk)."""
    if not session_id:
        return {}
    try:
        return control_client(config).get_session(session_id).get("env", {})
    except ControlAPIError as e:
        print(f"egressgw: warning: no placeholders for session {session_id}: {e}", file=sys.stderr)
        return {}


def _list(args) -> int:
    config = config_from_args(args)
    boxes = netns.list_sandboxes(state_dir=config.state_dir)
    if args.json:
        print(json.dumps([b.__dict__ for b in boxes], indent=2))
        return 0
    print(f"{'NAME':<20} {'ADDRESS':<16} {'SESSION':<20} NETNS")
    for b in boxes:
        print(f"{b.name:<20} {b.sandbox_addr:<16} {b.session_id or '-':<20} {b.netns}")
    return 0


def _down(args) -> int:
    config = config_from_args(args)
    try:
        sb = netns.get(args.name, state_dir=config.state_dir)
    except SandboxError:
        sb = None
    if sb is not None and sb.session_id:
        try:
            control_client(config).delete_session(sb.session_id)
        except ControlAPIError as e:
            print(f"egressgw: warning: session {sb.session_id} not deleted: {e}", file=sys.stderr)
    removed = netns.down(args.name, state_dir=config.state_dir)
    print(f"sandbox {args.name} {'removed' if removed else 'was not present'}")
    return 0
