"""`spec.detection` YAML -> Detection, with the loader's own line-and-fix problems.

Rule files (gitleaks TOML) are read here, at load time, so a broken file is
a policy problem naming both files and lines, never a surprise at request time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import yaml

from .hosts import HostError, name_selector, pattern_selector
from .model import (
    DEFAULT_HIGH_ENTROPY_BYTES,
    DEFAULT_SPLIT_WINDOW,
    DEFAULT_STREAM_BYTES,
    DETECTION_ACTIONS,
    Detection,
    DetectionRule,
    HostSelector,
    UploadBudget,
)

if TYPE_CHECKING:
    from .load import _Reader

DETECTION_KEYS = (
    "enabled", "action", "rules", "rulesFiles", "splitWindowSeconds", "uploadBudget", "highEntropyBytes",
    "streamBytes",
)
_RULE_KEYS = ("action", "allow")
_ALLOW_KEYS = ("matchName", "matchPattern", "regex")
_BUDGET_KEYS = ("bytes", "windowSeconds")
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
# Rules the gateway itself raises (not in any rule pack).
GATEWAY_RULES = ("known-value", "high-entropy-upload", "dns-tunnel")
MAX_WINDOW = 7 * 24 * 3600


def read_detection(reader: "_Reader", node: yaml.Node | None, base_dir: str | None) -> Detection | None:
    """The detection block (defaults when absent); None when it has problems (they are recorded)."""
    if node is None:
        return Detection()
    fields = reader.mapping(node, "spec.detection", DETECTION_KEYS)
    if fields is None:
        return None
    before = len(reader.problems)
    where = "spec.detection"
    enabled = reader.scalar(fields.get("enabled"), f"{where}.enabled", _BOOL, "write `enabled: true` or `false`")
    action = reader.choice(fields.get("action"), f"{where}.action", DETECTION_ACTIONS)
    files, packs = _rules_files(reader, fields.get("rulesFiles"), base_dir)
    rules = _rules(reader, fields.get("rules"), packs)
    window = _positive(reader, fields.get("splitWindowSeconds"), f"{where}.splitWindowSeconds", MAX_WINDOW,
                       "write a number of seconds, e.g. `splitWindowSeconds: 300`; 0 turns split detection off",
                       zero_ok=True)
    budget = _budget(reader, fields.get("uploadBudget"))
    entropy = _positive(reader, fields.get("highEntropyBytes"), f"{where}.highEntropyBytes", 1 << 40,
                        "write a size in bytes, e.g. `highEntropyBytes: 65536`")
    stream = _positive(reader, fields.get("streamBytes"), f"{where}.streamBytes", 1 << 40,
                       "write a size in bytes, e.g. `streamBytes: 1048576`")
    if len(reader.problems) > before:
        return None
    return Detection(
        enabled=enabled is not False,
        action=action,
        rules=rules,
        rules_files=files,
        split_window_seconds=DEFAULT_SPLIT_WINDOW if window is None else window,
        upload_budget=budget,
        high_entropy_bytes=entropy or DEFAULT_HIGH_ENTROPY_BYTES,
        stream_bytes=stream or DEFAULT_STREAM_BYTES,
        declared=True,
        packs=packs,
    )


def _positive(reader: "_Reader", node, where: str, limit: int, fix: str, zero_ok: bool = False) -> int | None:
    value = reader.scalar(node, where, _INT, fix)
    if value is None:
        return None
    if value < (0 if zero_ok else 1) or value > limit:
        reader.problem(node, f"{where}: {value} is out of range", fix)
        return None
    return value


def _budget(reader: "_Reader", node) -> UploadBudget | None:
    where = "spec.detection.uploadBudget"
    fix = "write `uploadBudget: {bytes: 10485760, windowSeconds: 3600}`"
    fields = reader.mapping(node, where, _BUDGET_KEYS, {"bytes": fix, "windowSeconds": fix})
    if fields is None:
        return None
    size = _positive(reader, fields.get("bytes"), f"{where}.bytes", 1 << 50, fix)
    window = _positive(reader, fields.get("windowSeconds"), f"{where}.windowSeconds", MAX_WINDOW, fix)
    if size is None or window is None:
        return None
    return UploadBudget(size, window)


def _rules_files(reader: "_Reader", node, base_dir: str | None) -> tuple[tuple[str, ...], tuple]:
    where = "spec.detection.rulesFiles"
    items = reader.sequence(node, where, "list gitleaks TOML files: `rulesFiles: [rules/gitleaks.toml]`")
    if not items:
        return (), ()
    paths, packs = [], []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        text = reader.scalar(item, here, _STR, "write a path to a gitleaks TOML file")
        if text is None:
            continue
        if not os.path.isabs(text):
            if base_dir is None:
                reader.problem(item, f"{here}: relative path {text!r} in a policy that was not read from a file",
                               "write an absolute path (a policy sent through the control API has no directory)")
                continue
            text = os.path.normpath(os.path.join(base_dir, text))
        pack = _load_pack(reader, item, here, text)
        if pack is not None:
            paths.append(text)
            packs.append(pack)
    return tuple(paths), tuple(packs)


def _load_pack(reader: "_Reader", item: yaml.Node, where: str, path: str):
    from gateway.detect import load_gitleaks
    from gateway.errors import EgressgwError

    if not os.path.isfile(path):
        reader.problem(item, f"{where}: {path}: file not found", "check the path (relative to the policy file)")
        return None
    try:
        return load_gitleaks(path)
    except (EgressgwError, OSError, ValueError) as exc:  # the message names the TOML file, its line and a fix
        message, _, fix = str(exc).rpartition(" (fix: ")
        if not message:
            message, fix = str(exc), "fix the rules file (gitleaks TOML: [[rules]] with id and regex)"
        reader.problem(item, f"{where}: {message}", fix.removesuffix(")"))
    return None


def _known_rule_ids(packs) -> tuple[str, ...]:
    from gateway.detect import builtin_rules

    ids: list[str] = []
    for pack in (builtin_rules(), *packs):
        ids.extend(pack.ids)
    return tuple(dict.fromkeys((*ids, *GATEWAY_RULES)))


def _rules(reader: "_Reader", node, packs) -> tuple[DetectionRule, ...]:
    where = "spec.detection.rules"
    if node is None:
        return ()
    if not isinstance(node, yaml.MappingNode):
        reader.problem(node, f"{where} must be a mapping of rule id to settings",
                       "write `rules: {generic-api-key: {action: alert}}`")
        return ()
    known = _known_rule_ids(packs)
    out, seen = [], set()
    for key_node, value in node.value:
        rule_id = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(rule_id, str) or key_node.tag != _STR:
            reader.problem(key_node, f"{where}: a rule id must be a word", "write a rule id such as `aws-access-key`")
            continue
        here = f"{where}.{rule_id}"
        if rule_id in seen:
            reader.problem(key_node, f"{where}: duplicate rule {rule_id!r}", "keep one of them")
            continue
        seen.add(rule_id)
        if rule_id not in known:
            from .load import _closest

            close = _closest(rule_id, known)
            reader.problem(key_node, f"{where}: unknown rule {rule_id!r}",
                           f"did you mean `{close}`?" if close else
                           "use an id from `egressgw policy rules` or from one of the rulesFiles")
            continue
        fields = reader.mapping(value, here, _RULE_KEYS)
        if fields is None:
            continue
        action = reader.choice(fields.get("action"), f"{here}.action", DETECTION_ACTIONS)
        hosts, regexes = _allow(reader, fields.get("allow"), f"{here}.allow")
        out.append(DetectionRule(rule_id, action, hosts, regexes, line=key_node.start_mark.line + 1))
    return tuple(out)


def _allow(reader: "_Reader", node, where: str) -> tuple[tuple[HostSelector, ...], tuple[str, ...]]:
    import re

    items = reader.sequence(node, where, "write `allow: [{matchName: api.example.com}, {regex: '^test_'}]`")
    hosts: list[HostSelector] = []
    regexes: list[str] = []
    for i, item in enumerate(items or ()):
        here = f"{where}[{i}]"
        fields = reader.mapping(item, here, _ALLOW_KEYS)
        if fields is None:
            continue
        if len(fields) != 1:
            if not fields.suggested:
                reader.problem(item, f"{here} needs exactly one of matchName, matchPattern or regex",
                               "write one entry per list item")
            continue
        ((key, value_node),) = fields.items()
        value = reader.scalar(value_node, f"{here}.{key}", _STR, "write a string")
        if value is None:
            continue
        if key == "regex":
            try:
                re.compile(value.encode())
            except re.error as exc:
                reader.problem(value_node, f"{here}.regex: {exc}", "write a valid (Python) regular expression")
                continue
            regexes.append(value)
            continue
        try:
            hosts.append(name_selector(value) if key == "matchName" else pattern_selector(value))
        except HostError as exc:
            reader.problem(value_node, f"{here}: {exc}", exc.fix)
    return tuple(hosts), tuple(regexes)
