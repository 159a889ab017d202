"""Action rules: declarative mapping from method + route template (+ outcome) to an action."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, NamedTuple

from audit_middleware._event import OUTCOMES, Outcome

__all__ = [
    "ACTION_PATTERN",
    "STATE_CHANGING_METHODS",
    "Rule",
    "RuleSet",
    "Source",
    "UnmatchedPolicy",
    "generic_action",
    "is_valid_action",
    "normalize_template",
]

ACTION_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*){1,4}")
STATE_CHANGING_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SOURCE_KINDS: Final = (
    "path",
    "query",
    "header",
    "body",
    "jwt",
    "response",
    "response_header",
    "response_jwt",
)
#: Kinds whose values need a copy of the request body / the response body.
REQUEST_BODY_KINDS: Final = frozenset({"body"})
RESPONSE_BODY_KINDS: Final = frozenset({"response", "response_jwt"})
UnmatchedPolicy = Literal["state_changing", "all", "none"]
UNMATCHED_POLICIES: Final[tuple[UnmatchedPolicy, ...]] = ("state_changing", "all", "none")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")
_CONVERTOR_REGEX: Final = {
    "str": "[^/]+",
    "path": ".*",
    "int": "[0-9]+",
    "float": r"[0-9]+(?:\.[0-9]+)?",
    "uuid": "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
}
_STATUS_CLASS = re.compile(r"[1-5]xx")
_NO_PARAMS: Final[Mapping[str, str]] = MappingProxyType({})


MAX_ACTION_LENGTH: Final = 128


def is_valid_action(action: str) -> bool:
    """``noun.verb[.qualifier]``: lowercase dotted words, at most 128 characters."""
    return len(action) <= MAX_ACTION_LENGTH and ACTION_PATTERN.fullmatch(action) is not None


def normalize_template(template: str) -> str:
    """Drop convertors so ``/items/{id:int}`` and ``/items/{id}`` name the same route."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + "}", template)


def generic_action(method: str) -> str:
    """The action for a request no rule names, e.g. ``http.post``."""
    verb = re.sub(r"[^a-z0-9_]", "_", method.lower())[:32] or "unknown"
    if not verb[0].isalpha():
        verb = "m" + verb
    return f"http.{verb}"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value comes from.

    ``path.<param>``, ``query.<name>``, ``header.<name>``; ``body.<field>``: one field of a
    JSON or form request body (at most 64 KiB, only if the app read it; never a secret-named
    field); ``jwt.<claim>``: a claim of the request's verified bearer token;
    ``response.<json.path>``: a field of a JSON response body; ``response_header.<name>``;
    ``response_jwt.<json.path>``: a token in the JSON response, verified, giving its claims
    (its subject for ``actor_id``).
    """

    kind: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> Source:
        """Parse ``kind.name``; raise ValueError naming the accepted kinds."""
        kind, sep, name = spec.partition(".")
        if not sep or not name or kind not in SOURCE_KINDS:
            raise ValueError(
                f"invalid value source {spec!r}: expected one of "
                + ", ".join(f"'{k}.<name>'" for k in SOURCE_KINDS)
            )
        if kind in ("header", "response_header"):
            name = name.lower()
        if kind == "body" and _is_secret_field(name):
            raise ValueError(
                f"value source {spec!r} names a secret field: a request body's passwords, "
                "tokens and secrets are never read"
            )
        return cls(kind, name)


@dataclass(frozen=True, slots=True)
class Rule:
    """Map ``method route`` to an action, optionally per outcome or status.

    ``action`` is a string, or a mapping whose keys are a status (``"401"``), a status class
    (``"4xx"``), an outcome (``"success"``, ``"denied"``, ``"failure"``, ``"error"``) or ``"*"``,
    tried in that order. ``None`` means: never audit this route. ``target_id``, ``org`` and
    ``metadata`` values are sources such as ``path.key_id`` or ``response.id``; ``actor_id``
    and ``actor_email`` name who acted where the request carries no authenticated user yet
    (``response_jwt.access_token`` on a login, ``body.email`` on a password reset request).
    """

    method: str
    route: str
    action: str | Mapping[str, str] | None
    target_type: str | None = None
    target_id: str | None = None
    org: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    actor_id: str | None = None
    actor_email: str | None = None
    sources: tuple[Source, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        method = self.method.upper()
        if not re.fullmatch(r"\*|[A-Z]+", method):
            raise ValueError(f"rule method must be an HTTP method or '*', got {self.method!r}")
        object.__setattr__(self, "method", method)
        if not self.route.startswith("/"):
            raise ValueError(f"rule route must start with '/', got {self.route!r}")
        for m in _PARAM.finditer(self.route):
            if m.group(2) and m.group(2) not in _CONVERTOR_REGEX:
                raise ValueError(f"unknown convertor {m.group(2)!r} in route {self.route!r}")
        actions = self.action.values() if isinstance(self.action, Mapping) else [self.action]
        for action in actions:
            if action is not None and not is_valid_action(action):
                raise ValueError(
                    f"invalid action {action!r} in rule {self.method} {self.route}: "
                    "expected lowercase noun.verb[.qualifier], e.g. 'user.login.failed'"
                )
        if isinstance(self.action, Mapping):
            for key in self.action:
                valid = key == "*" or key in OUTCOMES or _STATUS_CLASS.fullmatch(key)
                if not valid and not (key.isdigit() and 100 <= int(key) <= 599):
                    raise ValueError(
                        f"invalid action key {key!r} in rule {self.method} {self.route}: "
                        "expected a status ('401'), a status class ('4xx'), an outcome or '*'"
                    )
        if self.target_id is not None and self.target_type is None:
            raise ValueError(f"rule {self.method} {self.route}: target_id needs target_type")
        specs = (self.target_id, self.org, self.actor_id, self.actor_email, *self.metadata.values())
        # Every value source this rule reads, parsed once.
        object.__setattr__(self, "sources", tuple(Source.parse(s) for s in specs if s is not None))

    def action_for(self, status: int | None, outcome: Outcome) -> str | None:
        """The action for this outcome, or None when the rule does not name one."""
        action = self.action
        if action is None or type(action) is str or not isinstance(action, Mapping):
            return action  # the common cases first: an ABC check costs more than the rest
        mapping = action
        if status is not None:
            found = mapping.get(str(status)) or mapping.get(f"{status // 100}xx")
            if found:
                return found
        return mapping.get(outcome) or mapping.get("*")


class RuleMatch(NamedTuple):
    """A rule that matched, the route template and the path parameters it captured."""

    rule: Rule | None
    route: str | None
    params: Mapping[str, str]


class RuleSet:
    """Rules compiled for lookup: exact by (method, template), else by regex on the path."""

    def __init__(
        self, rules: Iterable[Rule] = (), unmatched: UnmatchedPolicy = "state_changing"
    ) -> None:
        if unmatched not in UNMATCHED_POLICIES:
            raise ValueError(
                f"unmatched policy must be one of {UNMATCHED_POLICIES}, got {unmatched!r}"
            )
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.unmatched: UnmatchedPolicy = unmatched
        self._exact: dict[tuple[str, str], Rule] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Rule]] = []
        for rule in self.rules:
            key = (rule.method, normalize_template(rule.route))
            if key in self._exact:
                raise ValueError(f"duplicate rule for {rule.method} {rule.route}")
            self._exact[key] = rule
            self._patterns.append((rule.method, _compile(rule.route), rule))
        self.rule_methods: frozenset[str] = frozenset(r.method for r in self.rules)
        self.body_methods: frozenset[str] = frozenset(
            r.method for r in self.rules if any(s.kind in RESPONSE_BODY_KINDS for s in r.sources)
        )
        self.request_body_methods: frozenset[str] = frozenset(
            r.method for r in self.rules if any(s.kind in REQUEST_BODY_KINDS for s in r.sources)
        )
        self.response_header_methods: frozenset[str] = frozenset(
            r.method for r in self.rules if any(s.kind == "response_header" for s in r.sources)
        )
        #: The methods a rule or the policy may audit; None: every method.
        self.audited_methods: frozenset[str] | None = None
        if "*" not in self.rule_methods and unmatched != "all":
            policy = STATE_CHANGING_METHODS if unmatched == "state_changing" else frozenset()
            self.audited_methods = self.rule_methods | policy

    def may_audit(self, method: str) -> bool:
        """Cheap pre-check on the request path: can any rule or the policy audit ``method``?"""
        return self.audited_methods is None or method in self.audited_methods

    def match(self, method: str, route: str | None, path: str) -> RuleMatch:
        """Find the rule for this request; the framework's template wins over path matching."""
        if route is not None:
            template = normalize_template(route) if ":" in route else route
            rule = self._exact.get((method, template)) or self._exact.get(("*", template))
            if rule is not None:
                return RuleMatch(rule, route, _NO_PARAMS)
        for rule_method, pattern, rule in self._patterns:
            if rule_method in (method, "*"):
                m = pattern.fullmatch(path)
                if m is not None:
                    return RuleMatch(rule, rule.route, m.groupdict())
        return RuleMatch(None, route, _NO_PARAMS)

    def default_action(self, method: str) -> str | None:
        """The generic action for an unmatched request, or None when the policy skips it."""
        if self.unmatched == "all" or (
            self.unmatched == "state_changing" and method in STATE_CHANGING_METHODS
        ):
            return generic_action(method)
        return None


def _is_secret_field(name: str) -> bool:
    from audit_middleware._sanitize import Redactor

    return Redactor().is_secret_key(name)


def _compile(template: str) -> re.Pattern[str]:
    parts: list[str] = []
    last = 0
    for m in _PARAM.finditer(template):
        parts.append(re.escape(template[last : m.start()]))
        parts.append(f"(?P<{m.group(1)}>{_CONVERTOR_REGEX[m.group(2) or 'str']})")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))
