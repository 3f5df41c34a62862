"""Rule files: YAML that binds a detector kind to span matchers, thresholds, severity and words.

A rule file holds one rule (a mapping with ``id``) or several under ``rules:``. Built-in rules
live in ``rules/`` at the repository root (``tracelens/_rules`` in the wheel) and load through
the very same :func:`load_dir` as a user's ``--rules DIR``; a user rule with the id of a
built-in replaces it (``enabled: false`` switches it off). Validation is strict: an unknown
key, detector kind, parameter, severity or a value of the wrong type fails with the file, the
line and the key.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tracelens.detectors.base import SEVERITIES, Rule
from tracelens.errors import RuleError

if TYPE_CHECKING:
    import polars as pl

    from tracelens.model import Span

RULE_KEYS = (
    "id",
    "detector",
    "severity",
    "match",
    "params",
    "summary",
    "fix",
    "description",
    "enabled",
)
REQUIRED_KEYS = ("id", "detector", "severity", "summary", "fix")
MATCH_KEYS = (
    "kind",
    "service",
    "name",
    "db_system",
    "peer",
    "fingerprint",
    "attributes",
    "has",
    "error",
)
SPAN_KIND_NAMES = {
    "UNSPECIFIED": 0,
    "INTERNAL": 1,
    "SERVER": 2,
    "CLIENT": 3,
    "PRODUCER": 4,
    "CONSUMER": 5,
}
# Optional span columns a rule may demand with ``has:`` (never-null columns are pointless).
HAS_COLUMNS = (
    "parent_span_id",
    "status_message",
    "db_system",
    "db_statement",
    "db_fingerprint",
    "peer",
    "http_route",
    "http_method",
    "http_url",
    "http_status",
    "rpc_method",
)
_RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --- YAML with line numbers -------------------------------------------------------------------


class _Map(dict):
    """A YAML mapping that remembers where it and each of its keys start (1-based lines)."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


# libyaml's parser when PyYAML has it: loading the built-in rules is 4-5x faster, and every
# `explain` with findings loads them. Both report the same marks (lines) on nodes and errors.
class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in out:
            raise yaml.MarkedYAMLError(
                problem=f"duplicate key {key!r} (first at line {out.key_lines[key]})",
                problem_mark=key_node.start_mark,
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read rule file: {exc}") from exc
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark, exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        started = f" ({exc.context} at line {context.line + 1})" if exc.context and context else ""
        raise RuleError(f"{where}: invalid YAML: {exc.problem or exc}{started}") from exc
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}: invalid YAML: {exc}") from exc


# --- messages ---------------------------------------------------------------------------------


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_keys(path: Path, m: _Map, allowed: Sequence[str], what: str) -> None:
    for key in m:
        if key not in allowed:
            raise RuleError(
                f"{path}:{m.line_of(key)}: unknown key {key!r} in {what}"
                f"{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})"
            )


# --- matchers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matcher:
    """Which spans a rule looks at. Empty fields match everything.

    Regexes search (unanchored) and must use the syntax Python and polars (Rust) share: no
    look-around, no back-references. ``attributes`` values that are strings are regexes;
    numbers and booleans must be equal.
    """

    kinds: frozenset[int] | None = None
    services: frozenset[str] | None = None
    name: str | None = None
    db_systems: frozenset[str] | None = None
    peer: str | None = None
    fingerprint: str | None = None
    attributes: tuple[tuple[str, Any], ...] = ()
    has: tuple[str, ...] = ()
    error: bool | None = None

    @property
    def uses_attributes(self) -> bool:
        return bool(self.attributes)

    @property
    def columns(self) -> frozenset[str]:
        """The span columns :meth:`filter` reads."""
        cols = set(self.has)
        for field, col in (
            ("kinds", "kind"),
            ("services", "service"),
            ("name", "name"),
            ("db_systems", "db_system"),
            ("peer", "peer"),
            ("fingerprint", "db_fingerprint"),
            ("error", "status_code"),
        ):
            if getattr(self, field) is not None:
                cols.add(col)
        if self.attributes:
            cols.add("attributes")
        return frozenset(cols)

    def matches(self, span: Span) -> bool:
        if self.kinds is not None and span.kind not in self.kinds:
            return False
        if self.services is not None and span.service not in self.services:
            return False
        if self.db_systems is not None and (span.db_system or "").lower() not in self.db_systems:
            return False
        for pattern, value in (
            (self.name, span.name),
            (self.peer, span.peer),
            (self.fingerprint, span.db_fingerprint),
        ):
            if pattern is not None and (value is None or not re.search(pattern, value)):
                return False
        if self.error is not None and span.is_error != self.error:
            return False
        if any(getattr(span, col) is None for col in self.has):
            return False
        return all(_attr_matches(span.attributes.get(k), want) for k, want in self.attributes)

    def expr(self) -> pl.Expr:
        """A polars boolean expression over the span columns (see :attr:`columns`)."""
        import polars as pl

        conds = [pl.lit(True)]
        if self.kinds is not None:
            conds.append(pl.col("kind").is_in(sorted(self.kinds)))
        if self.services is not None:
            conds.append(pl.col("service").is_in(sorted(self.services)))
        if self.db_systems is not None:
            conds.append(pl.col("db_system").str.to_lowercase().is_in(sorted(self.db_systems)))
        for pattern, col in (
            (self.name, "name"),
            (self.peer, "peer"),
            (self.fingerprint, "db_fingerprint"),
        ):
            if pattern is not None:
                conds.append(pl.col(col).str.contains(pattern).fill_null(False))
        if self.error is not None:
            conds.append((pl.col("status_code") == 2) == self.error)
        conds.extend(pl.col(col).is_not_null() for col in self.has)
        conds.extend(_attr_expr(k, want) for k, want in self.attributes)
        return pl.all_horizontal(conds)

    def filter(self, df: pl.DataFrame) -> pl.DataFrame:
        """The rows of a span frame this matcher accepts (vectorized)."""
        if self == MATCH_ALL:
            return df
        return df.filter(self.expr())


MATCH_ALL = Matcher()


def _attr_matches(value: Any, want: Any) -> bool:
    if value is None:
        return False
    if isinstance(want, str):
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return re.search(want, text) is not None
    if isinstance(want, bool) or isinstance(value, bool):
        return value is want
    try:
        return float(value) == float(want)
    except (TypeError, ValueError):
        return False


def _attr_expr(key: str, want: Any) -> pl.Expr:
    import polars as pl

    path = "$['" + key.replace("\\", "\\\\").replace("'", "\\'") + "']"
    raw = pl.col("attributes").str.json_path_match(path)
    if isinstance(want, str):
        return raw.str.contains(want).fill_null(False)
    if isinstance(want, bool):
        return (raw == ("true" if want else "false")).fill_null(False)
    return (raw.cast(pl.Float64, strict=False) == float(want)).fill_null(False)


def _check_regex(where: str, key: str, pattern: Any) -> str:
    import polars as pl

    if not isinstance(pattern, str):
        raise RuleError(f"{where}: {key} must be a regex string, got {_type(pattern)}")
    try:
        re.compile(pattern)
        pl.Series([""], dtype=pl.String).str.contains(pattern)
    except (re.error, pl.exceptions.PolarsError) as exc:
        raise RuleError(
            f"{where}: {key}: bad regex {pattern!r} (use the syntax Python and Rust share: "
            f"no look-around or back-references): {str(exc).splitlines()[0]}"
        ) from exc
    return pattern


def _str_set(where: str, key: str, value: Any) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise RuleError(f"{where}: {key} must be a string or a list of strings")
    return frozenset(items)


def _parse_kinds(where: str, value: Any) -> frozenset[int]:
    out = set()
    for item in _str_set(where, "match.kind", value):
        code = SPAN_KIND_NAMES.get(item.upper())
        if code is None:
            raise RuleError(
                f"{where}: unknown span kind {item!r}{did_you_mean(item.upper(), SPAN_KIND_NAMES)}"
            )
        out.add(code)
    return frozenset(out)


def parse_matcher(path: Path, m: Any, line: int) -> Matcher:
    """A ``match:`` mapping → :class:`Matcher`, validated key by key."""
    if m is None:
        return MATCH_ALL
    if not isinstance(m, _Map):
        raise RuleError(f"{path}:{line}: match must be a mapping, got {_type(m)}")
    _unknown_keys(path, m, MATCH_KEYS, "match")
    at = {key: f"{path}:{m.line_of(key)}" for key in m}
    fields: dict[str, Any] = {}
    if "kind" in m:
        fields["kinds"] = _parse_kinds(at["kind"], m["kind"])
    if "service" in m:
        fields["services"] = _str_set(at["service"], "match.service", m["service"])
    if "db_system" in m:
        systems = _str_set(at["db_system"], "match.db_system", m["db_system"])
        fields["db_systems"] = frozenset(s.lower() for s in systems)
    for key in ("name", "peer", "fingerprint"):
        if key in m:
            fields[key] = _check_regex(at[key], f"match.{key}", m[key])
    if "error" in m:
        if not isinstance(m["error"], bool):
            raise RuleError(f"{at['error']}: match.error must be true or false")
        fields["error"] = m["error"]
    if "has" in m:
        fields["has"] = _parse_has(at["has"], m["has"])
    if "attributes" in m:
        fields["attributes"] = _parse_attributes(path, at["attributes"], m["attributes"])
    return Matcher(**fields)


def _parse_has(where: str, value: Any) -> tuple[str, ...]:
    cols = sorted(_str_set(where, "match.has", value))
    for col in cols:
        if col not in HAS_COLUMNS:
            raise RuleError(
                f"{where}: match.has: unknown column {col!r}"
                f"{did_you_mean(col, HAS_COLUMNS)} (allowed: {', '.join(HAS_COLUMNS)})"
            )
    return tuple(cols)


def _parse_attributes(path: Path, where: str, value: Any) -> tuple[tuple[str, Any], ...]:
    if not isinstance(value, _Map) or not value:
        raise RuleError(f"{where}: match.attributes must be a mapping of key: regex or value")
    out = []
    for key, want in value.items():
        at = f"{path}:{value.line_of(key)}"
        if not isinstance(key, str):
            raise RuleError(f"{at}: attribute keys must be strings, got {_type(key)}")
        if isinstance(want, str):
            _check_regex(at, f"match.attributes[{key!r}]", want)
        elif not isinstance(want, bool | int | float):
            raise RuleError(
                f"{at}: match.attributes[{key!r}] must be a regex string, a number "
                f"or a boolean, got {_type(want)}"
            )
        out.append((key, want))
    return tuple(out)


# --- rules ------------------------------------------------------------------------------------


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _param_type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, list | tuple):
        return isinstance(value, list)
    return isinstance(value, type(default))


def _parse_params(path: Path, raw: Any, line: int, module: Any) -> dict[str, Any]:
    defaults: Mapping[str, Any] = module.PARAMS
    params = dict(defaults)
    if raw is None:
        return params
    if not isinstance(raw, _Map):
        raise RuleError(f"{path}:{line}: params must be a mapping, got {_type(raw)}")
    for key, value in raw.items():
        at = f"{path}:{raw.line_of(key)}"
        if key not in defaults:
            raise RuleError(
                f"{at}: unknown param {key!r} for detector {module.KIND!r}"
                f"{did_you_mean(key, defaults)} (params: {', '.join(defaults)})"
            )
        if not _param_type_ok(defaults[key], value):
            raise RuleError(
                f"{at}: param {key!r} must be {_type(defaults[key])}, got {_type(value)} {value!r}"
            )
        params[key] = float(value) if isinstance(defaults[key], float) else value
    return params


def _check_template(path: Path, line: int, key: str, text: Any, module: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        hint = " (quote it: YAML reads yes/no/on/off as booleans)" if isinstance(text, bool) else ""
        raise RuleError(
            f"{path}:{line}: {key} must be a non-empty string, got {_type(text)} {text!r}{hint}"
        )
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f]
    except ValueError as exc:
        raise RuleError(
            f"{path}:{line}: {key}: bad template ({exc}); write {{{{ for a brace"
        ) from None
    known = getattr(module, "FIELDS", None)
    for name in names:
        base = re.split(r"[.\[!:]", name, maxsplit=1)[0]
        if known is not None and base not in known:
            raise RuleError(
                f"{path}:{line}: {key}: unknown field {{{base}}}{did_you_mean(base, known)}"
                f" (fields of {module.KIND}: {', '.join(known)})"
            )
    return text


def parse_rule(path: Path, raw: Any, line: int) -> Rule | _Disabled:
    """One rule mapping → :class:`Rule` (None when it says ``enabled: false``)."""
    from tracelens import detectors

    if not isinstance(raw, _Map):
        raise RuleError(f"{path}:{line}: a rule must be a mapping, got {_type(raw)}")
    _unknown_keys(path, raw, RULE_KEYS, "rule")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise RuleError(f"{path}:{raw.line}: rule is missing {key!r}")
    at = {key: raw.line_of(key) for key in raw}
    rule_id = raw["id"]
    if not isinstance(rule_id, str) or not _RULE_ID.match(rule_id):
        raise RuleError(
            f"{path}:{at['id']}: id must be a word of letters, digits, '_.-'; got {rule_id!r}"
        )
    kind = raw["detector"]
    if not isinstance(kind, str):
        raise RuleError(f"{path}:{at['detector']}: detector must be a string")
    try:
        module = detectors.get(kind)
    except RuleError as exc:
        raise RuleError(f"{path}:{at['detector']}: {exc}") from None
    severity = raw["severity"]
    if severity not in SEVERITIES:
        raise RuleError(
            f"{path}:{at['severity']}: severity {severity!r} is not one of "
            f"{', '.join(SEVERITIES)}{did_you_mean(str(severity), SEVERITIES)}"
        )
    for key in ("enabled",):
        if key in raw and not isinstance(raw[key], bool):
            raise RuleError(f"{path}:{at[key]}: {key} must be true or false")
    if "description" in raw and not isinstance(raw["description"], str):
        raise RuleError(f"{path}:{at['description']}: description must be a string")
    rule = Rule(
        id=rule_id,
        kind=module.KIND,
        severity=severity,
        summary=_check_template(path, at["summary"], "summary", raw["summary"], module),
        fix=_check_template(path, at["fix"], "fix", raw["fix"], module),
        params=_parse_params(path, raw.get("params"), at.get("params", raw.line), module),
        match=parse_matcher(path, raw.get("match"), at.get("match", raw.line)),
        source=f"{path}:{raw.line}",
    )
    return rule if raw.get("enabled", True) else _Disabled(rule)


class _Disabled:
    """A rule switched off with ``enabled: false``: it only removes a rule of the same id."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule


def load_file(path: str | Path) -> list[Rule | _Disabled]:
    """The rules of one YAML file (a single rule, or a list under ``rules:``)."""
    path = Path(path)
    doc = _parse_yaml(path)
    if doc is None:
        raise RuleError(f"{path}: empty rule file")
    if isinstance(doc, _Map) and "rules" in doc:
        _unknown_keys(path, doc, ("rules",), "rule file (a list under 'rules:')")
        items = doc["rules"]
        if not isinstance(items, list) or not items:
            raise RuleError(f"{path}:{doc.line_of('rules')}: rules must be a non-empty list")
        return [parse_rule(path, item, getattr(item, "line", doc.line)) for item in items]
    if isinstance(doc, _Map):
        return [parse_rule(path, doc, doc.line)]
    raise RuleError(
        f"{path}:1: a rule file holds one rule mapping or 'rules: [...]', got {_type(doc)}"
    )


def load_dir(path: str | Path) -> list[Rule | _Disabled]:
    """Every ``*.yaml``/``*.yml`` in a directory (or one file), in name order."""
    path = Path(path)
    if path.is_file():
        return _no_duplicates(load_file(path))
    if not path.is_dir():
        raise RuleError(f"{path}: no such rules directory")
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise RuleError(f"{path}: no rule files (*.yaml) in this directory")
    return _no_duplicates([rule for f in files for rule in load_file(f)])


def _no_duplicates(rules: list[Rule | _Disabled]) -> list[Rule | _Disabled]:
    seen: dict[str, str] = {}
    for item in rules:
        rule = _rule_of(item)
        if rule.id in seen:
            raise RuleError(
                f"{rule.source}: duplicate rule id {rule.id!r} (already defined at {seen[rule.id]})"
            )
        seen[rule.id] = rule.source
    return rules


def _rule_of(item: Rule | _Disabled) -> Rule:
    return item.rule if isinstance(item, _Disabled) else item


def builtin_dir() -> Path:
    """The built-in rule pack: ``tracelens/_rules`` in a wheel, ``rules/`` in a checkout."""
    from importlib import resources

    packaged = resources.files("tracelens") / "_rules"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "rules"


def load_rules(extra_dirs: Iterable[str | Path] = (), *, builtins: bool = True) -> list[Rule]:
    """Built-in rules, then the user's directories; a user rule replaces a built-in of its id.

    Rule ids must be unique among the built-ins and among the user's files.
    """
    base = load_dir(builtin_dir()) if builtins else []
    user = _no_duplicates([rule for d in extra_dirs for rule in load_dir(d)])
    merged: dict[str, Rule | _Disabled] = {_rule_of(r).id: r for r in base}
    for item in user:
        merged[_rule_of(item).id] = item  # a dict keeps the built-in's position
    return [r for r in merged.values() if isinstance(r, Rule)]
