"""Rules files (AUDIT_LOG_RULES): TOML and YAML parity, JWT and org settings, exact error lines."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sys
import textwrap
from pathlib import Path

import pytest

from audit_middleware._rules import Rule, RuleSet, UnmatchedPolicy
from audit_middleware._rules_file import (
    JWTSettings,
    RulesConfig,
    RulesFileError,
    load_rules_file,
)

DATA = Path(__file__).parent / "data" / "rules"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _error(path: Path) -> RulesFileError:
    """Load ``path``, expecting a RulesFileError whose message names the file and the line."""
    with pytest.raises(RulesFileError) as info:
        load_rules_file(path)
    error = info.value
    assert error.path == str(path)
    where = f"{path}:{error.line}" if error.line is not None else str(path)
    assert str(error) == f"{where}: {error.problem}"
    return error


# --- Valid files -------------------------------------------------------------------------------


def test_saas_toml_and_yaml_describe_the_same_config() -> None:
    toml = load_rules_file(DATA / "saas.toml")
    yaml = load_rules_file(str(DATA / "saas.yaml"))
    assert toml.rules == yaml.rules
    assert len(toml.rules) == 11
    assert dataclasses.replace(toml, path="") == dataclasses.replace(yaml, path="")
    assert (toml.path, yaml.path) == (str(DATA / "saas.toml"), str(DATA / "saas.yaml"))
    RuleSet(toml.rules, toml.unmatched or "state_changing")  # usable as-is


def test_saas_file_content() -> None:
    config = load_rules_file(DATA / "saas.toml")
    rules = {(rule.method, rule.route): rule for rule in config.rules}
    login = rules["POST", "/auth/login"]
    assert login == Rule(
        "POST",
        "/auth/login",
        {
            "success": "user.login.succeeded",
            "denied": "user.login.failed",
            "4xx": "user.login.failed",
            "423": "user.login.locked",
        },
        target_type="user",
        target_id="body.email",
        actor_id="response_jwt.access_token",
    )
    created = rules["POST", "/orgs/{org_id}/api-keys"]
    assert created.metadata == {"name": "response.name", "scopes": "response.scopes"}
    assert rules["DELETE", "/orgs/{org_id}/members/{user_id}"].metadata == {
        "reason": "query.reason"
    }
    assert rules["POST", "/internal/cache/flush"].action is None
    assert config.unmatched == "state_changing"
    assert config.org_sources == ("path.org_id", "header.x-org-id", "jwt.org_id")
    assert config.jwt == JWTSettings(
        algorithms=("HS256",),
        key_env="APP_JWT_SECRET",
        audience="saas-api",
        issuer="https://auth.example.com/",
        leeway_seconds=30.0,
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param("r.toml", 'route = "/m"\nmethod = "POST"\naction = false\n', id="toml-false"),
        pytest.param("r.yaml", "- method: POST\n  route: /m\n  action: null\n", id="yaml-null"),
        pytest.param("r.yml", "- method: POST\n  route: /m\n  action: false\n", id="yml-false"),
        pytest.param("r.yaml", "- {method: POST, route: /m, action: ~}\n", id="yaml-tilde"),
    ],
)
def test_action_false_never_audits_the_route(tmp_path: Path, name: str, text: str) -> None:
    if name.endswith(".toml"):
        text = "[[rule]]\n" + text
    else:
        text = "rule:\n" + textwrap.indent(text, "  ")
    (rule,) = load_rules_file(_write(tmp_path, name, text)).rules
    assert rule == Rule("POST", "/m", None)
    match = RuleSet([rule], "all").match("POST", None, "/m")
    assert match.rule is rule
    assert rule.action_for(200, "success") is None


@pytest.mark.parametrize(
    ("name", "text", "unmatched"),
    [
        pytest.param("r.toml", "", None, id="empty-toml"),
        pytest.param("r.yaml", "", None, id="empty-yaml"),
        pytest.param("r.yml", "# nothing yet\n", None, id="comment-only-yaml"),
        pytest.param("r.toml", 'unmatched = "none"\n', "none", id="toml-policy-only"),
        pytest.param("r.yaml", "unmatched: all\nrule: []\n", "all", id="yaml-empty-rules"),
        pytest.param("r.yaml", "rule:\n", None, id="yaml-null-rules"),
        pytest.param("R.TOML", "rule = []\n", None, id="upper-case-extension"),
    ],
)
def test_files_without_rules_are_valid(
    tmp_path: Path, name: str, text: str, unmatched: UnmatchedPolicy | None
) -> None:
    path = _write(tmp_path, name, text)
    assert load_rules_file(path) == RulesConfig(rules=(), unmatched=unmatched, path=str(path))


def test_toml_lines_ignore_headers_inside_strings_and_tolerate_spacing(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "rules.toml",
        """\
        [jwt]
        algorithms = ["HS256"]
        key_env = "K"
        audience = \"""
        [[rule]]
        \"""
        issuer = '''
        [[rule]]'''

        [[ rule ]]   # spaced header
        method = "GET"
        route = "/a"
        action = "a.viewed"

        [[rule]]
        method = "GET"
        route = "/a"
        action = "a.read"
        """,
    )
    error = _error(path)
    assert (error.line, error.problem) == (
        15,
        "rule 2 (GET /a): duplicate rule for GET /a (first in rule 1, line 10)",
    )


# --- JWT settings ------------------------------------------------------------------------------


def test_jwt_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.toml", '[jwt]\nalgorithms = ["RS256", "ES256"]\nkey_env = "K"\n')
    assert load_rules_file(path).jwt == JWTSettings(algorithms=("RS256", "ES256"), key_env="K")
    settings = JWTSettings(algorithms=("RS256",))
    assert (settings.id_claim, settings.email_claim, settings.org_claim) == (
        "sub",
        "email",
        "org_id",
    )
    assert (settings.type_claim, settings.leeway_seconds) == (None, 0.0)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param(
            "r.toml",
            """\
            [jwt]
            algorithms = ["HS256"]
            key_env = "APP_JWT_SECRET"
            audience = "saas-api"
            issuer = "https://auth.example.com/"
            id_claim = "uid"
            email_claim = "mail"
            org_claim = false
            type_claim = "typ"
            leeway_seconds = 2.5
            """,
            id="toml",
        ),
        pytest.param(
            "r.yaml",
            """\
            jwt:
              algorithms: [HS256]
              key_env: APP_JWT_SECRET
              audience: saas-api
              issuer: https://auth.example.com/
              id_claim: uid
              email_claim: mail
              org_claim: null
              type_claim: typ
              leeway_seconds: 2.5
            """,
            id="yaml",
        ),
    ],
)
def test_jwt_settings_are_parsed(tmp_path: Path, name: str, text: str) -> None:
    assert load_rules_file(_write(tmp_path, name, text)).jwt == JWTSettings(
        algorithms=("HS256",),
        key_env="APP_JWT_SECRET",
        audience="saas-api",
        issuer="https://auth.example.com/",
        id_claim="uid",
        email_claim="mail",
        org_claim=None,
        type_claim="typ",
        leeway_seconds=2.5,
    )


@pytest.mark.parametrize(
    ("key_file", "expected"),
    [
        pytest.param("keys/jwt.pem", "conf/keys/jwt.pem", id="relative"),
        pytest.param("../shared/jwt.pem", "shared/jwt.pem", id="parent"),
        pytest.param("ABSOLUTE", "elsewhere/jwt.pem", id="absolute"),
    ],
)
def test_jwt_key_file_is_relative_to_the_rules_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_file: str, expected: str
) -> None:
    if key_file == "ABSOLUTE":
        key_file = str(tmp_path / "elsewhere" / "jwt.pem")
    (tmp_path / "conf").mkdir()
    _write(
        tmp_path / "conf", "rules.toml", f'[jwt]\nalgorithms = ["RS256"]\nkey_file = "{key_file}"\n'
    )
    monkeypatch.chdir(tmp_path)  # a relative rules path still yields an absolute key path
    jwt = load_rules_file(os.path.join("conf", "rules.toml")).jwt
    assert jwt is not None
    assert jwt.key_file == str(tmp_path / expected)


def test_jwt_inline_key_is_accepted_with_a_warning_and_kept_out_of_repr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write(tmp_path, "r.toml", '[jwt]\nalgorithms = ["HS256"]\nkey = "s3cr3t-value"\n')
    with caplog.at_level(logging.WARNING, logger="audit_middleware"):
        config = load_rules_file(path)
    assert config.jwt is not None
    assert config.jwt.key == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(config)
    assert f"{path}:3: [jwt] key is inline" in caplog.text
    assert "s3cr3t-value" not in caplog.text


@pytest.mark.parametrize(
    ("body", "line", "problem"),
    [
        pytest.param(
            'algorithms = ["HS256"]\n',
            1,
            "[jwt] needs exactly one of key, key_file, key_env; got none",
            id="no-key",
        ),
        pytest.param(
            'algorithms = ["HS256"]\nkey_file = "k.pem"\nkey_env = "K"\n',
            4,
            "[jwt] needs exactly one of key, key_file, key_env; got key_file and key_env",
            id="two-keys",
        ),
        pytest.param(
            'algorithms = ["HS256", "none"]\nkey_env = "K"\n',
            2,
            "[jwt] algorithm 'none' is refused: tokens must be signed",
            id="none-algorithm",
        ),
        pytest.param(
            'key_env = "K"\nalgorithms = ["NoNe"]\n',
            3,
            "[jwt] algorithm 'none' is refused: tokens must be signed",
            id="none-any-case",
        ),
        pytest.param(
            'algorithms = []\nkey_env = "K"\n',
            2,
            "[jwt] algorithms must not be empty",
            id="empty-algorithms",
        ),
        pytest.param(
            'algorithms = "HS256"\nkey_env = "K"\n',
            2,
            "[jwt] algorithms must be an array of non-empty strings, e.g. ['RS256']",
            id="algorithms-not-a-list",
        ),
        pytest.param(
            'key_env = "K"\n',
            1,
            "[jwt]: missing required key 'algorithms', e.g. ['RS256']",
            id="no-algorithms",
        ),
        pytest.param(
            'algorithms = ["HS256"]\nkey_env = "$APP_JWT_SECRET"\n',
            3,
            "[jwt] key_env '$APP_JWT_SECRET' is not a variable name",
            id="key-env-not-a-name",
        ),
        pytest.param(
            'algorithms = ["HS256"]\nkey = ""\n',
            3,
            "[jwt] key must be a non-empty string, got an empty string",
            id="empty-inline-key",
        ),
        pytest.param(
            'algorithms = ["HS256"]\nkey_env = "K"\nleeway_seconds = -1\n',
            4,
            "[jwt] leeway_seconds must be a number of seconds >= 0, got -1",
            id="negative-leeway",
        ),
        pytest.param(
            'algorithms = ["HS256"]\nkey_env = "K"\nleeway_seconds = nan\n',
            4,
            "[jwt] leeway_seconds must be a number of seconds >= 0, got nan",
            id="nan-leeway",
        ),
        pytest.param(
            'algorithms = ["HS256"]\nkey_env = "K"\naudience = 3\n',
            4,
            "[jwt] audience must be a non-empty string, got integer",
            id="audience-not-a-string",
        ),
        pytest.param(
            'algorithm = ["HS256"]\nkey_env = "K"\n',
            2,
            "unknown key 'algorithm' in [jwt]; accepted: algorithms, audience, email_claim, "
            "id_claim, issuer, key, key_env, key_file, leeway_seconds, org_claim, type_claim; "
            "did you mean 'algorithms'?",
            id="unknown-key",
        ),
    ],
)
def test_jwt_refusals(tmp_path: Path, body: str, line: int, problem: str) -> None:
    error = _error(_write(tmp_path, "rules.toml", "[jwt]\n" + body))
    assert (error.line, error.problem) == (line, problem)


def test_jwt_refusal_in_yaml_points_at_the_key(tmp_path: Path) -> None:
    text = "jwt:\n  key_env: K\n  algorithms:\n    - none\n"
    error = _error(_write(tmp_path, "rules.yaml", text))
    assert (error.line, error.problem) == (
        3,
        "[jwt] algorithm 'none' is refused: tokens must be signed",
    )


# --- Org sources -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "sources"),
    [
        pytest.param(
            "r.toml",
            '[org]\nsources = ["path.org_id", "header.X-Tenant", "jwt.org_id"]\n',
            ("path.org_id", "header.x-tenant", "jwt.org_id"),
            id="toml",
        ),
        pytest.param(
            "r.yaml",
            "org:\n  sources: [query.org, response.org.id]\n",
            ("query.org", "response.org.id"),
            id="yaml",
        ),
        pytest.param("r.toml", "[org]\nsources = []\n", (), id="empty"),
        pytest.param("r.toml", 'org.sources = ["path.tenant"]\n', ("path.tenant",), id="dotted"),
    ],
)
def test_org_sources(tmp_path: Path, name: str, text: str, sources: tuple[str, ...]) -> None:
    assert load_rules_file(_write(tmp_path, name, text)).org_sources == sources


# --- Errors: exact line and problem ------------------------------------------------------------

LOGIN = '[[rule]]\nmethod = "POST"\nroute = "/auth/login"\naction = "user.login"\n'


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        pytest.param(
            LOGIN + '\n[[rule]]\nmethod = "GET"\nroute = /x\n',
            8,
            "invalid TOML: Invalid value (column 9)",
            id="syntax",
        ),
        pytest.param(
            'unmatched = "all"\nunmatched = "none"\n',
            2,
            "invalid TOML: Cannot overwrite a value (column 19)",
            id="duplicate-key",
        ),
        pytest.param(
            'route = "/x"\naction = """\nnever closed',
            3,
            "invalid TOML: Unterminated string (at end of file)",
            id="unterminated-at-end",
        ),
        pytest.param(
            'unmatched = "all"\n\n[[rules]]\nmethod = "GET"\n',
            3,
            "unknown key 'rules' at the top level; accepted: jwt, org, rule, unmatched; "
            "did you mean 'rule'?",
            id="unknown-top-level-table",
        ),
        pytest.param(
            LOGIN + '\n[[rule]]\nmethod = "GET"\nroute = "/x"\nacton = "x.viewed"\n',
            9,
            "unknown key 'acton' in rule 2; accepted: action, actor_email, actor_id, metadata, "
            "method, org, route, target_id, target_type; did you mean 'action'?",
            id="unknown-rule-key",
        ),
        pytest.param(
            LOGIN + '\n[[rule]]\nmethod = 3\nroute = "/x"\naction = "x.viewed"\n',
            7,
            "rule 2: 'method' must be a string, got integer",
            id="method-not-a-string",
        ),
        pytest.param(
            LOGIN + '\n[[rule]]\nmethod = "GET"\nroute = "/x"\naction = ["x.viewed"]\n',
            9,
            "rule 2 (GET /x): 'action' must be a string, a table of outcome or status to "
            "action, or false (never audit), got array",
            id="action-array",
        ),
        pytest.param(
            LOGIN + '\n[[rule]]\nmethod = "GET"\nroute = "/x"\naction = true\n',
            9,
            "rule 2 (GET /x): 'action' must be a string, a table of outcome or status to "
            "action, or false (never audit), got boolean",
            id="action-true",
        ),
        pytest.param(
            '[[rule]]\nmethod = "GET"\nroute = "/x"\naction = { success = 1 }\n',
            4,
            "rule 1 (GET /x): action for 'success' must be a string, got integer",
            id="action-mapping-value",
        ),
        pytest.param(
            '[[rule]]\nmethod = "GET"\nroute = "/x"\naction = "x.viewed"\n'
            'metadata = { reason = "query.reason", count = 2 }\n',
            5,
            "rule 1 (GET /x): metadata 'count' must be a value source string, got integer",
            id="metadata-value",
        ),
        pytest.param(
            '[[rule]]\nmethod = "GET"\nroute = "/x"\naction = "x.viewed"\n\n'
            '[rule.metadata]\nreason = "query.reason"\ncount = 2\n',
            6,
            "rule 1 (GET /x): metadata 'count' must be a value source string, got integer",
            id="metadata-subtable",
        ),
        pytest.param(
            '[[rule]]\nmethod = "GET"\nroute = "/x"\naction = "x.viewed"\nmetadata = "query.a"\n',
            5,
            "rule 1 (GET /x): 'metadata' must be a table, got string",
            id="metadata-not-a-table",
        ),
        pytest.param(
            LOGIN
            + LOGIN.replace("/auth/login", "/auth/logout")
            + '\n# third\n[[rule]]\nmethod = "POST"\nroute = "/auth/login"\n'
            + 'action = "User.Login"\n',
            11,
            "rule 3 (POST /auth/login): invalid action 'User.Login' in rule POST /auth/login: "
            "expected lowercase noun.verb[.qualifier], e.g. 'user.login.failed'",
            id="invalid-action",
        ),
        pytest.param(
            '[[rule]]\nmethod = "POST"\nroute = "/x"\naction = { "6xx" = "x.failed" }\n',
            1,
            "rule 1 (POST /x): invalid action key '6xx' in rule POST /x: expected a status "
            "('401'), a status class ('4xx'), an outcome or '*'",
            id="invalid-action-key",
        ),
        pytest.param(
            LOGIN + '[[rule]]\nmethod = "GET"\naction = "x.viewed"\n',
            5,
            "rule 2: missing required key 'route'",
            id="missing-route",
        ),
        pytest.param(
            '[[rule]]\nmethod = "GET"\nroute = "x"\naction = "x.viewed"\n',
            1,
            "rule 1 (GET x): rule route must start with '/', got 'x'",
            id="route-without-slash",
        ),
        pytest.param(
            '[[rule]]\nmethod = "GET"\nroute = "/x"\naction = "x.viewed"\ntarget_id = "path.id"\n',
            1,
            "rule 1 (GET /x): rule GET /x: target_id needs target_type",
            id="target-id-without-type",
        ),
        pytest.param(
            '[[rule]]\nmethod = "GET"\nroute = "/x"\naction = "x.viewed"\norg = "cookie.org"\n',
            1,
            "rule 1 (GET /x): invalid value source 'cookie.org': expected one of 'path.<name>', "
            "'query.<name>', 'header.<name>', 'body.<name>', 'jwt.<name>', "
            "'response.<name>', 'response_header.<name>', 'response_jwt.<name>'",
            id="invalid-source",
        ),
        pytest.param(
            '[[rule]]\nmethod = "GET"\nroute = "/items/{id:int}"\naction = "item.viewed"\n'
            + LOGIN
            + '\n  [[rule]]  # same route, no convertor\nmethod = "get"\nroute = "/items/{id}"\n'
            'action = "item.read"\n',
            10,
            "rule 3 (GET /items/{id}): duplicate rule for GET /items/{id} (first in rule 1, "
            "line 1)",
            id="duplicate-rule",
        ),
        pytest.param(
            'unmatched = "some"\n',
            1,
            "'unmatched' must be one of 'state_changing', 'all', 'none', got 'some'",
            id="unmatched-value",
        ),
        pytest.param(
            "# policy\nunmatched = true\n",
            2,
            "'unmatched' must be one of 'state_changing', 'all', 'none', got boolean",
            id="unmatched-type",
        ),
        pytest.param(
            '[rule]\nmethod = "GET"\nroute = "/x"\naction = "x.viewed"\n',
            1,
            "'rule' must be an array of tables ([[rule]]), got table",
            id="rule-single-table",
        ),
        pytest.param(
            'rule = [\n  { method = "GET", route = "/x", action = "x.viewed" },\n'
            '  { method = "GET", route = "/y", action = 1 },\n]\n',
            1,
            "rule 2 (GET /y): 'action' must be a string, a table of outcome or status to "
            "action, or false (never audit), got integer",
            id="inline-rule-array",
        ),
        pytest.param(
            'rule = ["GET /x"]\n',
            1,
            "rule 1 must be a table, got string",
            id="rule-not-a-table",
        ),
        pytest.param(
            '[org]\nsources = "path.org_id"\n',
            2,
            "[org] sources must be an array of strings, got string",
            id="org-sources-not-a-list",
        ),
        pytest.param(
            '[org]\nsources = ["path.org_id", 7]\n',
            2,
            "[org] sources[1] must be a string, got integer",
            id="org-source-not-a-string",
        ),
        pytest.param(
            '[org]\nsources = [\n  "path.org_id",\n  "cookie.org",\n]\n',
            2,
            "[org] sources[1]: invalid value source 'cookie.org': expected one of "
            "'path.<name>', 'query.<name>', 'header.<name>', 'body.<name>', 'jwt.<name>', "
            "'response.<name>', 'response_header.<name>', 'response_jwt.<name>'",
            id="org-source-invalid",
        ),
        pytest.param(
            '\n[org]\nsource = ["path.org_id"]\n',
            3,
            "unknown key 'source' in [org]; accepted: sources; did you mean 'sources'?",
            id="org-unknown-key",
        ),
        pytest.param(
            'org = "path.org_id"\n',
            1,
            "'org' must be a table, got string",
            id="org-not-a-table",
        ),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, line: int, problem: str) -> None:
    error = _error(_write(tmp_path, "rules.toml", text))
    assert (error.line, error.problem) == (line, problem)


YAML_LOGIN = "  - method: POST\n    route: /auth/login\n    action: user.login\n"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        pytest.param(
            "rule:\n" + YAML_LOGIN + "  - method: GET\n    route: [/x\n",
            6,
            "invalid YAML: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence)",
            id="syntax",
        ),
        pytest.param(
            "unmatched: all\n  rule: []\n",
            2,
            "invalid YAML: mapping values are not allowed here",
            id="bad-indentation",
        ),
        pytest.param(
            "rule:\n" + YAML_LOGIN + "    action: user.signin\n",
            5,
            "duplicate key 'action'",
            id="duplicate-key",
        ),
        pytest.param(
            "unmatched: all\n---\nunmatched: none\n",
            2,
            "invalid YAML: but found another document (expected a single document in the stream)",
            id="two-documents",
        ),
        pytest.param(
            "rule: !!python/object/apply:os.system [echo owned]\n",
            1,
            "invalid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
            id="unsafe-tag",
        ),
        pytest.param(
            "- method: GET\n",
            1,
            "expected a mapping at the top level, got list",
            id="top-level-list",
        ),
        pytest.param(
            "unmatched: all\nrules: []\n",
            2,
            "unknown key 'rules' at the top level; accepted: jwt, org, rule, unmatched; "
            "did you mean 'rule'?",
            id="unknown-top-level-key",
        ),
        pytest.param(
            "rule:\n" + YAML_LOGIN + "  - method: GET\n    route: /x\n    acton: x.viewed\n",
            7,
            "unknown key 'acton' in rule 2; accepted: action, actor_email, actor_id, metadata, "
            "method, org, route, target_id, target_type; did you mean 'action'?",
            id="unknown-rule-key",
        ),
        pytest.param(
            "rule:\n" + YAML_LOGIN + "  - method: 3\n    route: /x\n    action: x.viewed\n",
            5,
            "rule 2: 'method' must be a string, got integer",
            id="method-not-a-string",
        ),
        pytest.param(
            "rule:\n" + YAML_LOGIN + "\n  - route: /x\n    method: GET\n    action: X\n",
            6,
            "rule 2 (GET /x): invalid action 'X' in rule GET /x: expected lowercase "
            "noun.verb[.qualifier], e.g. 'user.login.failed'",
            id="invalid-action-points-at-the-rule",
        ),
        pytest.param(
            "rule:\n  - method: GET\n    route: /x\n    action: {yes: x.viewed}\n",
            4,
            "rule 1 (GET /x): action keys must be strings, got boolean True",
            id="action-boolean-key",
        ),
        pytest.param(
            "rule:\n  - method: GET\n    route: /x\n    action: x.viewed\n    metadata:\n"
            "      reason: query.reason\n      when: 2024-01-01\n",
            7,
            "rule 1 (GET /x): metadata 'when' must be a value source string, got date",
            id="metadata-value",
        ),
        pytest.param(
            "rule:\n" + YAML_LOGIN + "  - method: post\n    route: /auth/login\n    action: x.y\n",
            5,
            "rule 2 (POST /auth/login): duplicate rule for POST /auth/login (first in rule 1, "
            "line 2)",
            id="duplicate-rule",
        ),
        pytest.param(
            "rule:\n  method: GET\n  route: /x\n  action: x.viewed\n",
            1,
            "'rule' must be a list, got mapping",
            id="rule-mapping",
        ),
        pytest.param(
            "rule:\n  - GET /x\n",
            2,
            "rule 1 must be a mapping, got string",
            id="rule-not-a-mapping",
        ),
        pytest.param(
            "org:\n  sources:\n    - path.org_id\n    - cookie.org\n",
            4,
            "[org] sources[1]: invalid value source 'cookie.org': expected one of "
            "'path.<name>', 'query.<name>', 'header.<name>', 'body.<name>', 'jwt.<name>', "
            "'response.<name>', 'response_header.<name>', 'response_jwt.<name>'",
            id="org-source-invalid",
        ),
        pytest.param(
            'unmatched: all\nrule: "\x07"\n',
            2,
            "invalid YAML: special characters are not allowed",
            id="control-character",
        ),
        pytest.param(
            "unmatched: everything\n",
            1,
            "'unmatched' must be one of 'state_changing', 'all', 'none', got 'everything'",
            id="unmatched-value",
        ),
    ],
)
def test_yaml_errors(tmp_path: Path, text: str, line: int, problem: str) -> None:
    error = _error(_write(tmp_path, "rules.yaml", text))
    assert (error.line, error.problem) == (line, problem)


# --- Errors: the file itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "line", "problem"),
    [
        pytest.param("missing.toml", None, None, "rules file not found", id="missing"),
        pytest.param(
            "rules.json",
            b"{}",
            None,
            "unsupported rules file type ('.json'): expected .toml, .yaml or .yml",
            id="json",
        ),
        pytest.param(
            "rules",
            b"",
            None,
            "unsupported rules file type (no extension): expected .toml, .yaml or .yml",
            id="no-extension",
        ),
        pytest.param(
            "big.toml",
            b"# padding\n" * (1024 * 1024 // 10 + 1),
            None,
            "rules file is larger than 1 MiB",
            id="too-large",
        ),
        pytest.param(
            "latin1.toml",
            b'unmatched = "all"\n# caf\xe9\n',
            2,
            "rules file is not valid UTF-8 text",
            id="not-utf8",
        ),
    ],
)
def test_file_errors(
    tmp_path: Path, name: str, content: bytes | None, line: int | None, problem: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    error = _error(path)
    assert (error.line, error.problem) == (line, problem)


def test_a_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").mkdir()
    error = _error(tmp_path / "rules.toml")
    assert error.line is None
    assert error.problem.startswith("cannot read rules file: ")


def test_exactly_1_mib_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b"#" * (1024 * 1024 - 1) + b"\n")
    assert load_rules_file(path).rules == ()


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b'\xef\xbb\xbfunmatched = "all"\n')
    assert load_rules_file(path).unmatched == "all"


@pytest.mark.parametrize(
    "name", [pytest.param("r.yaml", id="yaml"), pytest.param("r.yml", id="yml")]
)
def test_yaml_without_pyyaml_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    path = _write(tmp_path, name, "unmatched: all\n")
    error = _error(path)
    assert error.line is None
    assert "pip install 'audit-log-middleware[yaml]'" in str(error)
    toml = _write(tmp_path, "r.toml", 'unmatched = "all"\n')
    assert load_rules_file(toml).unmatched == "all"  # TOML never needs PyYAML


def test_rules_file_error_is_a_value_error_and_pickles() -> None:
    error = RulesFileError("rules.toml", 3, "bad")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.line, copy.problem, str(copy)) == (
        "rules.toml",
        3,
        "bad",
        "rules.toml:3: bad",
    )
    assert str(RulesFileError("rules.toml", None, "gone")) == "rules.toml: gone"
