"""Policy YAML (or JSON) -> Policy, reporting every problem with its line and a fix.

The document is composed into YAML nodes (never constructed into Python
objects first), so each problem can point at the line of the node at fault.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable
from typing import Any

import yaml

from ..errors import PolicyError, Problem
from .decide import normalize_path
from .hosts import HostError, name_selector, pattern_selector
from .load_detection import read_detection
from .load_limits import read_limits
from .model import API_VERSION, DEFAULT_PORTS, KIND, MODES, PROTOCOLS, HostSelector, Network, Policy, Rule

MAX_BYTES = 1 << 20
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_TYPE_NAMES = {_STR: "a string", _INT: "an integer", _BOOL: "true or false"}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_PORT_RANGE = re.compile(r"\s*\d+\s*-\s*\d+\s*")

_TOP_KEYS = ("apiVersion", "kind", "metadata", "spec")
_TOP_REQUIRED = {
    "apiVersion": f"add `apiVersion: {API_VERSION}`",
    "kind": f"add `kind: {KIND}`",
    "metadata": "add `metadata: {name: my-policy}`",
    "spec": "add `spec:` with `egress:` rules",
}
_METADATA_KEYS = ("name",)
_SPEC_KEYS = ("mode", "egress", "detection", "limits")
_RULE_KEYS = ("name", "protocol", "hosts", "cidrs", "ports", "methods", "paths", "inspect", "uploads")
_HOST_KEYS = ("matchName", "matchPattern")


def load_policy_text(text: str, source: str = "<string>", base_dir: str | None = None) -> Policy:
    """Parse a policy document. Raises PolicyError carrying every problem found.

    `base_dir`: where relative paths in the policy (detection rulesFiles) are resolved."""
    reader = _Reader(source, base_dir)
    policy = reader.read(text)
    if reader.problems or policy is None:
        raise PolicyError(sorted(reader.problems, key=lambda p: p.line))
    return policy


def load_policy_file(path: str | os.PathLike[str]) -> Policy:
    """Read and parse a policy file. Raises PolicyError carrying every problem found."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError([Problem(source, 0, "file not found", "check the path")]) from None
    except IsADirectoryError:
        raise PolicyError([Problem(source, 0, "is a directory", "name a policy file")]) from None
    except OSError as exc:
        raise PolicyError(
            [Problem(source, 0, f"cannot read the file: {exc.strerror}", "check the file's permissions")]
        ) from None
    if len(data) > MAX_BYTES:
        raise PolicyError([_too_large(source)])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError(
            [Problem(source, line, f"not UTF-8 (byte 0x{data[exc.start]:02x})", "save the file as UTF-8")]
        ) from None
    return load_policy_text(text, source, os.path.dirname(os.path.abspath(source)))


def check_files(paths: Iterable[str | os.PathLike[str]]) -> list[Problem]:
    """Every problem in every file; an empty list means all of them load."""
    problems: list[Problem] = []
    for path in paths:
        try:
            load_policy_file(path)
        except PolicyError as exc:
            problems.extend(exc.problems)
    return problems


def _too_large(source: str) -> Problem:
    return Problem(source, 0, "larger than 1 MiB", "a policy lists hosts; trim or split the file")


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else next((c for c in choices if c.lower() == word.lower()), None)


def _suggest(word: str, choices: tuple[str, ...], what: str) -> str:
    close = _closest(word, choices)
    return f"did you mean `{close}`?" if close else f"valid {what}: {', '.join(choices)}"


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "empty"
    if node.tag == _STR:
        return f"the string {node.value!r}"
    return node.value


class _Fields(dict[str, yaml.Node]):
    """The values of one mapping by key, each key's line, and the valid keys that
    unknown keys were taken for (so a typo is not also reported as a missing key)."""

    def __init__(self) -> None:
        super().__init__()
        self.key_lines: dict[str, int] = {}
        self.suggested: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self or key in self.suggested


class _Reader:
    def __init__(self, source: str, base_dir: str | None = None):
        self.source = source
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def problem(self, where: yaml.Node | int, message: str, fix: str) -> None:
        line = where if isinstance(where, int) else _line(where)
        self.problems.append(Problem(self.source, line, message, fix))

    # -- document ---------------------------------------------------------

    def read(self, text: str) -> Policy | None:
        if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
            self.problems.append(_too_large(self.source))
            return None
        try:
            aliases = [e for e in yaml.parse(text, Loader=_LOADER) if isinstance(e, yaml.AliasEvent)]
            root = yaml.compose(text, Loader=_LOADER)
        except yaml.reader.ReaderError as exc:
            self.problem(
                text.count("\n", 0, exc.position) + 1,
                f"character {exc.character!r} is not allowed in YAML",
                "remove it (control characters must be escaped inside a quoted string)",
            )
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            detail = f"{exc.context}, {exc.problem}" if exc.context else exc.problem
            if isinstance(exc, yaml.composer.ComposerError) and "single document" in str(exc.context):
                fix = "keep one policy per file: remove the `---` and what follows it"
            else:
                fix = "check indentation, colons and quotes on this line and the one before"
            self.problem(mark.line + 1 if mark else 0, f"invalid YAML: {detail}", fix)
            return None
        for alias in aliases:
            self.problem(
                alias.start_mark.line + 1,
                f"YAML alias *{alias.anchor} is not supported",
                "write the value out in full",
            )
        if aliases:
            return None
        if root is None:
            self.problem(0, "the file is empty", "start from policies/deny-all.yaml")
            return None
        return self.policy(root)

    def policy(self, root: yaml.Node) -> Policy | None:
        top = self.mapping(root, "the policy", _TOP_KEYS, _TOP_REQUIRED)
        if top is None:
            return None
        for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
            value = self.scalar(top.get(key), key, _STR, f"write `{key}: {expected}`")
            if value is not None and value != expected:
                self.problem(
                    top[key], f"{key} is {value!r}; expected {expected!r}", f"write `{key}: {expected}`"
                )
        name = None
        metadata = self.mapping(
            top.get("metadata"), "metadata", _METADATA_KEYS, {"name": "add `name: my-policy` under metadata"}
        )
        if metadata is not None:
            name = self.name(metadata.get("name"), "metadata.name")
        mode, rules, detection, limits = "enforce", None, None, None
        spec = self.mapping(
            top.get("spec"),
            "spec",
            _SPEC_KEYS,
            {"egress": "add `egress: []` to deny everything, or list rules"},
        )
        if spec is not None:
            mode = self.choice(spec.get("mode"), "spec.mode", MODES) or "enforce"
            rules = self.rules(spec.get("egress"))
            detection = read_detection(self, spec.get("detection"), self.base_dir)
            limits = read_limits(self, spec.get("limits"))
        if self.problems or name is None or rules is None or detection is None or limits is None:
            return None
        return Policy(name=name, mode=mode, rules=rules, source=self.source, detection=detection,
                      limits=limits)

    def rules(self, node: yaml.Node | None) -> tuple[Rule, ...] | None:
        items = self.sequence(
            node, "spec.egress", "write `egress: []` to deny everything, or list rules", allow_empty=True
        )
        if items is None:
            return None
        rules, first_line = [], {}
        for index, item in enumerate(items):
            rule = self.rule(item, index)
            if rule is None:
                continue
            if rule.name in first_line:
                self.problem(
                    rule.line,
                    f"rule name {rule.name!r} is already used by the rule at line {first_line[rule.name]}",
                    "give each rule a unique name",
                )
            first_line.setdefault(rule.name, rule.line)
            rules.append(rule)
        return tuple(rules)

    def rule(self, node: yaml.Node, index: int) -> Rule | None:
        where = f"spec.egress[{index}]"
        fields = self.mapping(node, where, _RULE_KEYS)
        if fields is None:
            return None
        before = len(self.problems)
        name = self.name(fields.get("name"), f"{where}.name") or f"egress[{index}]"
        protocol = self.choice(fields.get("protocol"), f"{where}.protocol", PROTOCOLS) or "http"
        hosts = self.hosts(fields.get("hosts"), f"{where}.hosts")
        cidrs = self.cidrs(fields.get("cidrs"), f"{where}.cidrs")
        ports = self.ports(fields.get("ports"), f"{where}.ports")
        methods = self.methods(fields.get("methods"), f"{where}.methods")
        paths = self.paths(fields.get("paths"), f"{where}.paths")
        inspect = self.scalar(
            fields.get("inspect"), f"{where}.inspect", _BOOL, "write `inspect: false` or remove it"
        )
        uploads = self.scalar(
            fields.get("uploads"), f"{where}.uploads", _BOOL, "write `uploads: true` or remove it"
        )
        if not fields.has("hosts") and not fields.has("cidrs"):
            self.problem(
                node,
                f"{where}: a rule needs `hosts` or `cidrs`",
                "add `hosts: [{matchName: api.example.com}]` or `cidrs: [198.18.5.0/24]`",
            )
        if protocol == "tcp":
            if not fields.has("ports"):
                self.problem(node, f"{where}: a tcp rule needs `ports`", "list the ports, e.g. `ports: [22]`")
            for key in ("methods", "paths", "inspect", "uploads"):
                if key in fields:
                    self.problem(
                        fields.key_lines[key],
                        f"{where}.{key} is not allowed in a tcp rule",
                        f"remove `{key}`: raw TCP has no methods, paths or TLS to inspect",
                    )
        elif inspect is False:
            for key in ("methods", "paths", "uploads"):
                if key in fields:
                    self.problem(
                        fields.key_lines[key],
                        f"{where}.{key} needs inspection, but the rule has `inspect: false`",
                        f"remove `{key}`, or remove `inspect: false` so requests can be checked",
                    )
        if len(self.problems) > before:
            return None
        return Rule(
            name=name,
            protocol=protocol,
            hosts=hosts or (),
            cidrs=cidrs or (),
            ports=ports or DEFAULT_PORTS,
            ports_explicit=ports is not None,
            methods=methods,
            paths=paths,
            inspect=protocol == "http" and inspect is not False,
            line=_line(node),
            uploads=uploads is True,
        )

    # -- rule fields ------------------------------------------------------

    def hosts(self, node: yaml.Node | None, where: str) -> tuple[HostSelector, ...] | None:
        items = self.sequence(node, where, "list hosts: `hosts: [{matchName: api.example.com}]`")
        if items is None:
            return None
        selectors = []
        for i, item in enumerate(items):
            here = f"{where}[{i}]"
            if isinstance(item, yaml.ScalarNode) and item.tag == _STR:
                self.problem(item, f"{here} is a bare string", f"write `- matchName: {item.value}`")
                continue
            fields = self.mapping(item, here, _HOST_KEYS)
            if fields is None:
                continue
            if len(fields) != 1:
                if not fields.suggested:
                    self.problem(
                        item,
                        f"{here} needs exactly one of matchName or matchPattern",
                        "write one selector per list entry",
                    )
                continue
            ((key, value_node),) = fields.items()
            value = self.scalar(value_node, f"{here}.{key}", _STR, "write a host name")
            if value is None:
                continue
            try:
                selectors.append(name_selector(value) if key == "matchName" else pattern_selector(value))
            except HostError as exc:
                self.problem(value_node, f"{here}: {exc}", exc.fix)
        return tuple(selectors)

    def cidrs(self, node: yaml.Node | None, where: str) -> tuple[Network, ...] | None:
        items = self.sequence(node, where, "list networks: `cidrs: [198.18.5.0/24]`")
        if items is None:
            return None
        networks = []
        for i, item in enumerate(items):
            text = self.scalar(item, f"{where}[{i}]", _STR, "write a network such as 198.18.5.0/24")
            if text is None:
                continue
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=True))
            except ValueError as exc:
                try:
                    network = ipaddress.ip_network(text.strip(), strict=False)
                    fix = f"write {network} (the network containing it)"
                except ValueError:
                    fix = "write a network such as 198.18.5.0/24 or 2001:db8::/32"
                self.problem(item, f"{where}[{i}]: {exc}", fix)
        return tuple(networks)

    def ports(self, node: yaml.Node | None, where: str) -> tuple[int, ...] | None:
        items = self.sequence(node, where, "write `ports: [443]`, or remove it for the default 443")
        if items is None:
            return None
        ports = set()
        for i, item in enumerate(items):
            here = f"{where}[{i}]"
            if isinstance(item, yaml.ScalarNode) and item.tag == _STR:
                if _PORT_RANGE.fullmatch(item.value):
                    fix = "ranges are not supported: list each port as a number"
                elif item.value.strip().isdigit():
                    fix = f"write {item.value.strip()} without quotes"
                else:
                    fix = "write a port number from 1 to 65535"
                self.problem(item, f"{here} must be an integer, not {_describe(item)}", fix)
                continue
            port = self.scalar(item, here, _INT, "write a port number from 1 to 65535")
            if port is None:
                continue
            if not 1 <= port <= 65535:
                self.problem(
                    item, f"{here}: port {port} is out of range", "write a port number from 1 to 65535"
                )
                continue
            ports.add(port)
        return tuple(sorted(ports))

    def methods(self, node: yaml.Node | None, where: str) -> frozenset[str] | None:
        items = self.sequence(node, where, "write `methods: [GET, HEAD]`, or remove it to allow any method")
        if items is None:
            return None
        methods = set()
        for i, item in enumerate(items):
            here = f"{where}[{i}]"
            text = self.scalar(item, here, _STR, "write a method such as GET")
            if text is None:
                continue
            method = text.strip().upper()
            if method == "CONNECT":
                self.problem(
                    item,
                    f"{here}: CONNECT cannot be listed",
                    "remove it: CONNECT is allowed by hosts and ports",
                )
            elif method == "*":
                self.problem(item, f"{here}: '*' is not a method", "remove `methods` to allow any method")
            elif not _TOKEN.fullmatch(method):
                self.problem(
                    item, f"{here}: {text!r} is not a valid HTTP method", "write a method such as GET or POST"
                )
            else:
                methods.add(method)
        return frozenset(methods)

    def paths(self, node: yaml.Node | None, where: str) -> tuple[str, ...] | None:
        items = self.sequence(node, where, 'write `paths: ["/api/*"]`, or remove it to allow any path')
        if items is None:
            return None
        paths = []
        for i, item in enumerate(items):
            here = f"{where}[{i}]"
            glob = self.scalar(item, here, _STR, 'write a path glob such as "/api/*"')
            if glob is None:
                continue
            normal = normalize_path(glob)
            if not glob.startswith("/"):
                self.problem(item, f"{here}: {glob!r} does not start with '/'", f"write {'/' + glob!r}")
            elif "#" in glob:
                self.problem(
                    item, f"{here}: {glob!r} contains '#'", "remove the fragment: only the path is matched"
                )
            elif normal is None:
                self.problem(
                    item,
                    f"{here}: {glob!r} can never match: requests with an encoded slash, backslash or "
                    "ambiguous dot segments match no path rule",
                    "write the plain path",
                )
            elif normal != glob:
                self.problem(
                    item,
                    f"{here}: {glob!r} is not in normal form; "
                    f"requests are normalised to {normal!r} before matching",
                    f"write {normal!r}",
                )
            else:
                paths.append(glob)
        return tuple(paths)

    # -- generic nodes ----------------------------------------------------

    def mapping(
        self,
        node: yaml.Node | None,
        where: str,
        keys: tuple[str, ...],
        required: dict[str, str] | None = None,
    ) -> _Fields | None:
        """The mapping's values by key; ``required`` maps each required key to its fix."""
        if node is None:
            return None
        if not isinstance(node, yaml.MappingNode):
            self.problem(
                node,
                f"{where} must be a mapping, not {_describe(node)}",
                f"write the keys: {', '.join(keys)}",
            )
            return None
        fields = _Fields()
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                self.problem(
                    key_node,
                    f"{where}: a key must be a word, not {_describe(key_node)}",
                    f"valid keys: {', '.join(keys)}",
                )
            elif key in fields:
                self.problem(
                    key_node,
                    f"{where}: duplicate key {key!r} (first at line {fields.key_lines[key]})",
                    "keep one of them",
                )
            elif key not in keys:
                fields.suggested.add(_closest(key, keys) or "")
                self.problem(key_node, f"{where}: unknown key {key!r}", _suggest(key, keys, "keys here"))
            else:
                fields[key] = value_node
                fields.key_lines[key] = _line(key_node)
        for key, fix in (required or {}).items():
            if not fields.has(key):
                self.problem(node, f"{where}: missing required key {key!r}", fix)
        return fields

    def sequence(
        self, node: yaml.Node | None, where: str, fix: str, allow_empty: bool = False
    ) -> list[yaml.Node] | None:
        if node is None:
            return None
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{where} must be a list, not {_describe(node)}", fix)
            return None
        if not node.value and not allow_empty:
            self.problem(
                node, f"{where} is empty", f"remove `{where.rpartition('.')[2]}` or list at least one entry"
            )
            return None
        return node.value

    def scalar(self, node: yaml.Node | None, where: str, tag: str, fix: str) -> Any:
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag != tag:
            self.problem(node, f"{where} must be {_TYPE_NAMES[tag]}, not {_describe(node)}", fix)
            return None
        return node.value if tag == _STR else self._constructor.construct_object(node)

    def name(self, node: yaml.Node | None, where: str) -> str | None:
        name = self.scalar(node, where, _STR, "write a name such as `pypi`")
        if name is not None and not name.strip():
            self.problem(node, f"{where} is empty", "write a name such as `pypi`")
            return None
        return name

    def choice(self, node: yaml.Node | None, where: str, choices: tuple[str, ...]) -> str | None:
        value = self.scalar(node, where, _STR, f"write one of: {', '.join(choices)}")
        if value is not None and value not in choices:
            self.problem(
                node,
                f"{where}: {value!r} is not one of {', '.join(choices)}",
                _suggest(value, choices, "values"),
            )
            return None
        return value
