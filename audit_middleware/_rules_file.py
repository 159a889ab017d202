"""Rules files: audit rules, the unmatched policy, JWT settings and org sources from TOML or YAML.

``AUDIT_LOG_RULES=path/to/rules.toml`` (or ``.yaml``/``.yml``) configures an app's audit rules
without code changes. :func:`load_rules_file` reads and validates the whole file up front; every
problem raises :class:`RulesFileError`, whose message names the file, the line and the problem::

    unmatched = "state_changing"

    [jwt]
    algorithms = ["HS256"]
    key_env = "APP_JWT_SECRET"

    [org]
    sources = ["path.org_id", "jwt.org_id"]

    [[rule]]
    method = "POST"
    route = "/auth/login"
    action = { success = "user.login.succeeded", "4xx" = "user.login.failed" }

    [[rule]]
    method = "POST"
    route = "/internal/metrics"
    action = false      # never audit this route

A YAML file has the same structure (``rule:`` is a list of mappings; ``action: null`` or
``false`` skips a route) and needs PyYAML (``pip install 'audit-log-middleware[yaml]'``).
Each rule is built with :class:`~audit_middleware._rules.Rule`, so its validation applies.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from audit_middleware._rules import (
    UNMATCHED_POLICIES,
    Rule,
    RuleSet,
    Source,
    UnmatchedPolicy,
    normalize_template,
)
from audit_middleware._warn import logger

if TYPE_CHECKING:
    import yaml

__all__ = ["JWTSettings", "RulesConfig", "RulesFileError", "load_rules_file"]

#: Larger files are refused before parsing.
MAX_FILE_BYTES: Final = 1024 * 1024
EXTENSIONS: Final = (".toml", ".yaml", ".yml")
TOP_LEVEL_KEYS: Final = ("jwt", "org", "rule", "unmatched")
RULE_KEYS: Final = (
    "action",
    "actor_email",
    "actor_id",
    "metadata",
    "method",
    "org",
    "route",
    "target_id",
    "target_type",
)
JWT_KEYS: Final = (
    "algorithms",
    "audience",
    "email_claim",
    "id_claim",
    "issuer",
    "key",
    "key_env",
    "key_file",
    "leeway_seconds",
    "org_claim",
    "type_claim",
)
ORG_KEYS: Final = ("sources",)
_JWT_KEY_FIELDS: Final = ("key", "key_file", "key_env")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_YAML_HINT: Final = "YAML rules files need PyYAML: pip install 'audit-log-middleware[yaml]'"

#: Where a value sits in the file, e.g. ``("rule", 2, "action")`` (rule indexes are 0-based).
_Path = tuple[str | int, ...]


class RulesFileError(ValueError):
    """Raised for an unreadable or invalid rules file; str() is 'path:line: problem'."""

    path: str
    line: int | None
    problem: str

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        super().__init__(path, line, problem)
        self.path = path
        self.line = line
        self.problem = problem

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.problem}"
        return f"{self.path}:{self.line}: {self.problem}"


@dataclass(frozen=True, slots=True)
class JWTSettings:
    """The ``[jwt]`` table, validated for shape only (keys are neither read nor checked here).

    Exactly one of ``key`` (inline; discouraged), ``key_file`` (made absolute, relative to the
    rules file's folder) and ``key_env`` (an environment variable's name) is set.
    """

    algorithms: tuple[str, ...]
    key: str | None = field(default=None, repr=False)
    key_file: str | None = None
    key_env: str | None = None
    audience: str | None = None
    issuer: str | None = None
    id_claim: str = "sub"
    email_claim: str = "email"
    org_claim: str | None = "org_id"
    type_claim: str | None = None
    leeway_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """Everything a rules file configures; ``unmatched`` and ``jwt`` are None when not given."""

    rules: tuple[Rule, ...]
    unmatched: UnmatchedPolicy | None = None
    jwt: JWTSettings | None = None
    org_sources: tuple[str, ...] = ()
    path: str = ""


def load_rules_file(path: str | os.PathLike[str]) -> RulesConfig:
    """Read and validate a ``.toml``, ``.yaml`` or ``.yml`` rules file.

    Raises :class:`RulesFileError` naming the file, the line (when known) and the problem.
    """
    name = os.fspath(path)
    extension = os.path.splitext(name)[1].lower()
    if extension not in EXTENSIONS:
        shown = repr(extension) if extension else "no extension"
        raise RulesFileError(
            name, None, f"unsupported rules file type ({shown}): expected .toml, .yaml or .yml"
        )
    text = _read_text(name)
    locator: _Locator
    if extension == ".toml":
        data, locator, style = _parse_toml(name, text), _TomlLocator(text), _TOML_STYLE
    else:
        data, locator = _parse_yaml(name, text)
        style = _YAML_STYLE
    return _Builder(name, locator, style).config(data)


def _read_text(name: str) -> str:
    try:
        with open(name, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise RulesFileError(name, None, "rules file not found") from None
    except OSError as exc:
        raise RulesFileError(name, None, f"cannot read rules file: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise RulesFileError(name, None, "rules file is larger than 1 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RulesFileError(name, line, "rules file is not valid UTF-8 text") from None
    return text.removeprefix("\ufeff")


def _last_line(text: str) -> int:
    """The number of the last line that is not blank (1 for a blank text)."""
    return max(len(text.rstrip().split("\n")), 1)


# --- TOML ------------------------------------------------------------------------------------

_TOML_POSITION: Final = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


def _parse_toml(name: str, text: str) -> object:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise RulesFileError(name, None, f"invalid TOML: {message}") from None
        problem = message[: position.start()]
        if position.group(1) is None:  # the error is at the very end of the text
            line = _last_line(text)
            raise RulesFileError(name, line, f"invalid TOML: {problem} (at end of file)") from None
        line, column = int(position.group(1)), int(position.group(2))
        raise RulesFileError(name, line, f"invalid TOML: {problem} (column {column})") from None
    except RecursionError:
        raise RulesFileError(name, None, "invalid TOML: nested too deeply") from None


_TOML_KEY_PART: Final = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)"""
_TOML_KEY: Final = re.compile(rf"\s*({_TOML_KEY_PART}(?:\s*\.\s*{_TOML_KEY_PART})*)\s*=")
_TOML_HEADER: Final = re.compile(
    rf"\s*(\[\[?)\s*({_TOML_KEY_PART}(?:\s*\.\s*{_TOML_KEY_PART})*)\s*\]\]?\s*(?:#.*)?$"
)
_TOML_PART: Final = re.compile(_TOML_KEY_PART)


def _toml_key_parts(dotted: str) -> list[str]:
    parts = []
    for match in _TOML_PART.finditer(dotted):
        part = match.group()
        parts.append(part[1:-1] if part[0] in "\"'" else part)
    return parts


def _toml_statements(text: str) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) for lines that start a statement.

    Lines inside a multi-line string or a multi-line array are skipped: their text could look
    like a header or a key. This is a scanner for locating lines in an already valid document.
    """
    open_string: str | None = None  # '"""' or "'''" while inside a multi-line string
    depth = 0  # open [ and { of a value spanning lines
    for number, line in enumerate(text.split("\n"), 1):
        if open_string is None and depth == 0:
            yield number, line
            if _TOML_HEADER.match(line):
                continue
        i, end = 0, len(line)
        while i < end:
            if open_string is not None:
                if open_string == '"""' and line[i] == "\\":
                    i += 2
                elif line.startswith(open_string, i):
                    open_string, i = None, i + 3
                else:
                    i += 1
                continue
            char = line[i]
            if char == "#":
                break
            if line.startswith(('"""', "'''"), i):
                open_string, i = line[i : i + 3], i + 3
            elif char in "\"'":
                i += 1
                while i < end and line[i] != char:
                    i += 2 if char == '"' and line[i] == "\\" else 1
                i += 1
            else:
                if char in "[{":
                    depth += 1
                elif char in "]}":
                    depth = max(depth - 1, 0)
                i += 1


class _Locator(Protocol):
    def line(self, path: _Path) -> int | None:
        """The line of the value at ``path``, or of its nearest located ancestor."""


@dataclass(slots=True)
class _TomlSection:
    line: int
    keys: dict[str, int] = field(default_factory=dict)


class _TomlLocator:
    """Lines of top-level keys, of the [jwt]/[org] tables and of each [[rule]] and its keys."""

    def __init__(self, text: str) -> None:
        self._top: dict[str, int] = {}
        self._tables: dict[str, _TomlSection] = {}
        self._rules: list[_TomlSection] = []
        current: dict[str, int] | None = self._top  # where the next `key =` lines belong
        for number, line in _toml_statements(text):
            header = _TOML_HEADER.match(line)
            if header is not None:
                current = self._header(number, header.group(1), _toml_key_parts(header.group(2)))
                continue
            key = _TOML_KEY.match(line)
            if key is None or current is None:
                continue
            parts = _toml_key_parts(key.group(1))
            current.setdefault(parts[0], number)
            if current is self._top and len(parts) > 1 and parts[0] in ("jwt", "org"):
                self._tables.setdefault(parts[0], _TomlSection(number)).keys.setdefault(
                    parts[1], number
                )

    def _header(self, number: int, brackets: str, parts: list[str]) -> dict[str, int] | None:
        self._top.setdefault(parts[0], number)
        if parts == ["rule"] and brackets == "[[":
            self._rules.append(_TomlSection(number))
            return self._rules[-1].keys
        if parts[0] == "rule" and len(parts) > 1 and self._rules:
            self._rules[-1].keys.setdefault(parts[1], number)  # [rule.metadata]
        elif parts[0] in ("jwt", "org"):
            section = self._tables.setdefault(parts[0], _TomlSection(number))
            if len(parts) == 1:
                return section.keys
            section.keys.setdefault(parts[1], number)
        return None

    def line(self, path: _Path) -> int | None:
        if not path or not isinstance(path[0], str):
            return None
        top = self._top.get(path[0])
        if path[0] == "rule" and len(path) > 1 and isinstance(path[1], int):
            if path[1] >= len(self._rules):  # e.g. `rule = [{...}]`: no [[rule]] headers
                return top
            section = self._rules[path[1]]
            key = path[2] if len(path) > 2 else None
            return section.keys.get(key, section.line) if isinstance(key, str) else section.line
        if path[0] in self._tables and len(path) > 1 and isinstance(path[1], str):
            return self._tables[path[0]].keys.get(path[1], top)
        return top


# --- YAML ------------------------------------------------------------------------------------


def _parse_yaml(name: str, text: str) -> tuple[object, _Locator]:
    try:
        import yaml
    except ImportError:
        raise RulesFileError(name, None, _YAML_HINT) from None

    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character
        at = text.count("\n", 0, exc.position) + 1
        raise RulesFileError(name, at, f"invalid YAML: {exc.reason}") from None
    try:
        root = loader.get_single_node()
        if root is None:
            return {}, _YamlLocator(None)
        _check_duplicate_keys(name, root)
        return loader.construct_document(root), _YamlLocator(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            problem = f"{exc.problem} ({exc.context})"
        # A mark at the end of the stream would name the line after the last one.
        line = min(mark.line + 1, _last_line(text)) if mark else None
        raise RulesFileError(name, line, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise RulesFileError(name, None, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise RulesFileError(name, None, "invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _check_duplicate_keys(name: str, root: yaml.Node) -> None:
    """PyYAML keeps the last of duplicate keys silently; a rules file must not."""
    import yaml

    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:  # aliases share nodes
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in keys:
                        line = key.start_mark.line + 1
                        raise RulesFileError(name, line, f"duplicate key {key.value!r}")
                    keys.add(key.value)
                stack += (key, value)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


class _YamlLocator:
    """Lines from the composed node tree (start marks survive construction)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root

    def line(self, path: _Path) -> int | None:
        import yaml

        node = self._root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        line, node = key.start_mark.line + 1, value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    return line
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


# --- Validation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Style:
    """How type names read in messages for one format."""

    table: str
    array: str
    a_table: str
    an_array: str


_TOML_STYLE: Final = _Style("table", "array", "a table", "an array")
_YAML_STYLE: Final = _Style("mapping", "list", "a mapping", "a list")


class _Builder:
    def __init__(self, name: str, locator: _Locator, style: _Style) -> None:
        self._name = name
        self._locator = locator
        self._style = style

    def error(self, path: _Path, problem: str) -> RulesFileError:
        """An error at the line of ``path`` (or its nearest located ancestor)."""
        return RulesFileError(self._name, self._locator.line(path), problem)

    def kind(self, value: object) -> str:
        """A type name as the file format calls it."""
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "boolean"
        if isinstance(value, Mapping):
            return self._style.table
        if isinstance(value, list):
            return self._style.array
        names = {str: "string", int: "integer", float: "float"}
        return names.get(type(value), type(value).__name__)

    def check_keys(
        self, path: _Path, where: str, raw: Mapping[Any, object], accepted: Sequence[str]
    ) -> None:
        """Fail on the first key not in ``accepted``; ``where`` reads e.g. ' in rule 2'."""
        for key in raw:
            if key not in accepted:
                problem = f"unknown key {key!r}{where}; accepted: {', '.join(accepted)}"
                close = difflib.get_close_matches(str(key), accepted, n=1)
                if close:
                    problem += f"; did you mean {close[0]!r}?"
                raise self.error((*path, str(key)), problem)

    def config(self, data: object) -> RulesConfig:
        if not isinstance(data, dict):
            raise self.error(
                (), f"expected {self._style.a_table} at the top level, got {self.kind(data)}"
            )
        self.check_keys((), " at the top level", data, TOP_LEVEL_KEYS)
        unmatched = self.unmatched(data["unmatched"]) if data.get("unmatched") is not None else None
        jwt = self.jwt(data["jwt"]) if data.get("jwt") is not None else None
        org_sources = self.org(data["org"]) if data.get("org") is not None else ()
        return RulesConfig(self.rules(data.get("rule")), unmatched, jwt, org_sources, self._name)

    def unmatched(self, value: object) -> UnmatchedPolicy:
        for policy in UNMATCHED_POLICIES:
            if value == policy:
                return policy
        accepted = ", ".join(repr(p) for p in UNMATCHED_POLICIES)
        shown = repr(value) if isinstance(value, str) else self.kind(value)
        raise self.error(("unmatched",), f"'unmatched' must be one of {accepted}, got {shown}")

    def rules(self, raw: object) -> tuple[Rule, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            expected = "an array of tables ([[rule]])" if self._style is _TOML_STYLE else "a list"
            raise self.error(("rule",), f"'rule' must be {expected}, got {self.kind(raw)}")
        rules = tuple(self.rule(index, item) for index, item in enumerate(raw))
        try:
            RuleSet(rules)
        except ValueError as exc:
            raise self.duplicate(rules, exc) from None
        return rules

    def duplicate(self, rules: tuple[Rule, ...], exc: ValueError) -> RulesFileError:
        first: dict[tuple[str, str], int] = {}
        for index, rule in enumerate(rules):
            key = (rule.method, normalize_template(rule.route))
            if key in first:
                earlier = first[key]
                line = self._locator.line(("rule", earlier))
                where = f"rule {earlier + 1}" + (f", line {line}" if line is not None else "")
                return self.error(
                    ("rule", index),
                    f"rule {index + 1} ({rule.method} {rule.route}): {exc} (first in {where})",
                )
            first[key] = index
        return self.error(("rule",), str(exc))

    def rule(self, index: int, raw: object) -> Rule:
        path: _Path = ("rule", index)
        number = index + 1
        if not isinstance(raw, dict):
            raise self.error(
                path, f"rule {number} must be {self._style.a_table}, got {self.kind(raw)}"
            )
        self.check_keys(path, f" in rule {number}", raw, RULE_KEYS)
        method, route = raw.get("method"), raw.get("route")
        label = f"rule {number}"
        if isinstance(method, str) and isinstance(route, str):
            label += f" ({method} {route})"
        for required in ("method", "route", "action"):
            if required not in raw:
                raise self.error(path, f"{label}: missing required key {required!r}")
        fields: dict[str, Any] = {
            key: self.string((*path, key), label, key, raw[key]) for key in ("method", "route")
        }
        fields["action"] = self.action(path, label, raw["action"])
        for key in ("target_type", "target_id", "org", "actor_id", "actor_email"):
            if raw.get(key) is not None:
                fields[key] = self.string((*path, key), label, key, raw[key])
        if "metadata" in raw:
            fields["metadata"] = self.metadata((*path, "metadata"), label, raw["metadata"])
        try:
            return Rule(**fields)
        except ValueError as exc:
            raise self.error(path, f"{label}: {exc}") from None

    def string(self, path: _Path, label: str, key: str, value: object) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"{label}: {key!r} must be a string, got {self.kind(value)}")
        return value

    def action(self, path: _Path, label: str, value: object) -> str | dict[str, str] | None:
        if value is None or value is False:
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            actions: dict[str, str] = {}
            for key, action in value.items():
                # YAML reads `401: ...` as an integer key; TOML keys are always strings.
                if isinstance(key, int) and not isinstance(key, bool):
                    key = str(key)
                if not isinstance(key, str):
                    problem = f"action keys must be strings, got {self.kind(key)} {key!r}"
                    raise self.error((*path, "action"), f"{label}: {problem}")
                if not isinstance(action, str):
                    problem = f"action for {key!r} must be a string, got {self.kind(action)}"
                    raise self.error((*path, "action"), f"{label}: {problem}")
                actions[key] = action
            return actions
        problem = (
            f"'action' must be a string, {self._style.a_table} of outcome or status to action, "
            f"or false (never audit), got {self.kind(value)}"
        )
        raise self.error((*path, "action"), f"{label}: {problem}")

    def metadata(self, path: _Path, label: str, value: object) -> dict[str, str]:
        if not isinstance(value, dict):
            problem = f"'metadata' must be {self._style.a_table}, got {self.kind(value)}"
            raise self.error(path, f"{label}: {problem}")
        for key, spec in value.items():
            if not isinstance(key, str):
                problem = f"'metadata' names must be strings, got {self.kind(key)} {key!r}"
                raise self.error(path, f"{label}: {problem}")
            if not isinstance(spec, str):
                problem = f"metadata {key!r} must be a value source string, got {self.kind(spec)}"
                raise self.error((*path, key), f"{label}: {problem}")
        return dict(value)

    def jwt(self, raw: object) -> JWTSettings:
        if not isinstance(raw, dict):
            raise self.error(("jwt",), f"'jwt' must be {self._style.a_table}, got {self.kind(raw)}")
        self.check_keys(("jwt",), " in [jwt]", raw, JWT_KEYS)
        if "algorithms" not in raw:
            raise self.error(("jwt",), "[jwt]: missing required key 'algorithms', e.g. ['RS256']")
        algorithms = raw["algorithms"]
        where: _Path = ("jwt", "algorithms")
        if not isinstance(algorithms, list) or not all(
            isinstance(a, str) and a for a in algorithms
        ):
            problem = f"[jwt] algorithms must be {self._style.an_array} of non-empty strings"
            raise self.error(where, problem + ", e.g. ['RS256']")
        if not algorithms:
            raise self.error(where, "[jwt] algorithms must not be empty")
        if any(a.lower() == "none" for a in algorithms):
            raise self.error(where, "[jwt] algorithm 'none' is refused: tokens must be signed")
        given = [k for k in _JWT_KEY_FIELDS if raw.get(k) is not None]
        if len(given) != 1:
            found = " and ".join(given) if given else "none"
            raise self.error(
                ("jwt", given[1]) if given else ("jwt",),
                f"[jwt] needs exactly one of key, key_file, key_env; got {found}",
            )
        source = given[0]
        value = self.jwt_string(source, raw[source])
        settings: dict[str, Any] = {"algorithms": tuple(algorithms), source: value}
        if source == "key":
            logger.warning(
                "%s:%s: [jwt] key is inline; prefer key_file or key_env",
                self._name,
                self._locator.line(("jwt", "key")),
            )
        elif source == "key_file":
            folder = os.path.dirname(os.path.abspath(self._name))
            settings["key_file"] = os.path.normpath(os.path.join(folder, value))
        elif not _ENV_NAME.fullmatch(value):
            raise self.error(("jwt", "key_env"), f"[jwt] key_env {value!r} is not a variable name")
        for key in ("audience", "issuer"):
            if raw.get(key) is not None:
                settings[key] = self.jwt_string(key, raw[key])
        for key in ("id_claim", "email_claim"):
            if key in raw:
                settings[key] = self.jwt_string(key, raw[key])
        for key in ("org_claim", "type_claim"):  # false / null: do not read this claim
            if key in raw:
                claim = raw[key]
                disabled = claim is None or claim is False
                settings[key] = None if disabled else self.jwt_string(key, claim)
        if "leeway_seconds" in raw:
            settings["leeway_seconds"] = self.leeway(raw["leeway_seconds"])
        return JWTSettings(**settings)

    def jwt_string(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value:
            got = "an empty string" if value == "" else self.kind(value)
            raise self.error(("jwt", key), f"[jwt] {key} must be a non-empty string, got {got}")
        return value

    def leeway(self, value: object) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            shown = repr(value) if isinstance(value, int | float) else self.kind(value)
            problem = f"[jwt] leeway_seconds must be a number of seconds >= 0, got {shown}"
            raise self.error(("jwt", "leeway_seconds"), problem)
        return float(value)

    def org(self, raw: object) -> tuple[str, ...]:
        if not isinstance(raw, dict):
            raise self.error(("org",), f"'org' must be {self._style.a_table}, got {self.kind(raw)}")
        self.check_keys(("org",), " in [org]", raw, ORG_KEYS)
        sources = raw.get("sources", [])
        path: _Path = ("org", "sources")
        if not isinstance(sources, list):
            problem = f"[org] sources must be {self._style.an_array} of strings"
            raise self.error(path, f"{problem}, got {self.kind(sources)}")
        specs: list[str] = []
        for index, spec in enumerate(sources):
            if not isinstance(spec, str):
                problem = f"[org] sources[{index}] must be a string, got {self.kind(spec)}"
                raise self.error((*path, index), problem)
            try:
                source = Source.parse(spec)
            except ValueError as exc:
                raise self.error((*path, index), f"[org] sources[{index}]: {exc}") from None
            specs.append(f"{source.kind}.{source.name}")  # canonical: header names lowercased
        return tuple(specs)
