"""The Auditor: configuration, resolvers, event builder and delivery pipeline in one object."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import EllipsisType, MappingProxyType
from typing import Any, Final, cast

from audit_middleware import _hooks
from audit_middleware._batch import EventBatch
from audit_middleware._bruteforce import BruteForceDetector, BruteForcePolicy
from audit_middleware._builder import EventBuilder, ExplicitRecord, actor_key
from audit_middleware._client_ip import ProxyTrust
from audit_middleware._config import (
    AuditConfig,
    AuditConfigError,
    Delivery,
    IpPrivacy,
    OverflowPolicy,
)
from audit_middleware._context import RequestContext, current_context, org_was_set
from audit_middleware._delivery_process import DeliveryProcess
from audit_middleware._event import ANONYMOUS, OUTCOMES, Actor, AuditEvent, Outcome, Target
from audit_middleware._export import DurableExporter, Exporter
from audit_middleware._jwt import JWTConfig, JWTVerifier
from audit_middleware._jwt_setup import jwt_from_config, jwt_from_rules_file
from audit_middleware._pipeline import DeliveryPipeline, PipelineStats
from audit_middleware._rules import Rule, RuleSet, Source, UnmatchedPolicy, is_valid_action
from audit_middleware._rules_file import load_rules_file
from audit_middleware._sanitize import Redactor
from audit_middleware._views import request_view
from audit_middleware._warn import logger, warn_limited
from audit_middleware._wire import Unpacker, plain_record
from audit_middleware.integrity._chain import EventChain
from audit_middleware.resolvers import ActorResolver, OrgResolver, scope_user_actor, scope_user_org

__all__ = ["Auditor", "get_default_auditor", "record"]

#: With one exporter, or process delivery (whose one exporter is the link to the delivery
#: process), events are built at most this many batches ahead of the exporter; further
#: requests and records wait in the queue, unbuilt.
_PACE_BATCHES: Final = 4
_PACE_MIN_EVENTS: Final = 8192
_RELEASED: Final[Mapping[str, Any]] = MappingProxyType({})  # a queued request's scope

_default: Auditor | None = None


class Auditor:
    """Captures, builds and delivers audit events. One per application (or shared by several).

    Every keyword argument left as None falls back to its ``AUDIT_LOG_*`` environment variable,
    then to the default (see the README's configuration table).
    """

    def __init__(
        self,
        *,
        rules: Iterable[Rule] | None = None,
        exporters: Sequence[Exporter | str] | None = None,
        actor_resolvers: Sequence[ActorResolver] | None = None,
        org_resolvers: Sequence[OrgResolver] | None = None,
        enabled: bool | None = None,
        unmatched: UnmatchedPolicy | None = None,
        trusted_proxies: ProxyTrust | str | None = None,
        forwarded_header: str | None = None,
        ip_privacy: IpPrivacy | None = None,
        user_agent_max_length: int | None = None,
        headers: Sequence[str] | None = None,
        redact_keys: Sequence[str] | None = None,
        org_params: Sequence[str] | None = None,
        queue_size: int | None = None,
        overflow: OverflowPolicy | None = None,
        batch_size: int | None = None,
        batch_interval: float | None = None,
        loop_build: int | None = None,
        delivery: Delivery | None = None,
        delivery_processes: int | None = None,
        export_retries: int | None = None,
        shutdown_timeout: float | None = None,
        log_output: str | None = None,
        rules_file: str | os.PathLike[str] | None = None,
        org_sources: Sequence[str] | None = None,
        jwt: JWTConfig | None = None,
        brute_force: BruteForcePolicy | None = None,
        brute_force_threshold: int | None = None,
        brute_force_window: float | None = None,
        trace_context: str | None = None,
        strict: bool | None = None,
        integrity: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        global _default
        env = os.environ if environ is None else environ
        overrides: dict[str, object] = {
            "enabled": enabled,
            "unmatched": unmatched,
            "trusted_proxies": trusted_proxies,
            "forwarded_header": forwarded_header,
            "ip_privacy": ip_privacy,
            "user_agent_max_length": user_agent_max_length,
            "headers": headers,
            "redact_keys": redact_keys,
            "org_params": org_params,
            "queue_size": queue_size,
            "overflow": overflow,
            "batch_size": batch_size,
            "batch_interval": batch_interval,
            "loop_build": loop_build,
            "delivery": delivery,
            "delivery_processes": delivery_processes,
            "export_retries": export_retries,
            "shutdown_timeout": shutdown_timeout,
            "log_output": log_output,
            "rules_file": None if rules_file is None else os.fspath(rules_file),
            "org_sources": org_sources,
            "brute_force_threshold": brute_force_threshold,
            "brute_force_window": brute_force_window,
            "trace_context": trace_context,
            "strict": strict,
            "integrity": integrity,
        }
        if exporters is not None:
            overrides["exporters"] = tuple(e for e in exporters if isinstance(e, str))
        self.config = config = AuditConfig.resolve(overrides, env)
        from_file = load_rules_file(config.rules_file) if config.rules_file else None
        policy = config.unmatched
        explicit = unmatched is not None or "AUDIT_LOG_UNMATCHED" in env
        if from_file is not None and from_file.unmatched and not explicit:
            policy = from_file.unmatched  # keyword > environment > file > default
        all_rules = [*(rules or ()), *(from_file.rules if from_file else ())]
        try:
            self.rules = RuleSet(all_rules, policy)
        except ValueError as exc:
            raise AuditConfigError(f"rules: {exc}") from exc
        sources = config.org_sources or (from_file.org_sources if from_file else ())
        self.redactor = Redactor(
            extra_secret_keys=config.redact_keys, header_allowlist=config.headers
        )
        self.actor_resolvers: tuple[ActorResolver, ...] = tuple(
            (scope_user_actor,) if actor_resolvers is None else actor_resolvers
        )
        self.org_resolvers: tuple[OrgResolver, ...] = tuple(
            (scope_user_org,) if org_resolvers is None else org_resolvers
        )
        # The built-in resolvers only read scope["user"]: skip them when there is none.
        self._user_only = actor_resolvers is None and org_resolvers is None
        jwt_config = jwt or jwt_from_config(config) or jwt_from_rules_file(from_file, env)
        try:
            verifier = None if jwt_config is None else JWTVerifier(jwt_config)
        except ValueError as exc:  # e.g. a key too weak for its algorithm
            raise AuditConfigError(f"JWT settings: {exc}") from exc
        self.builder = EventBuilder(
            config,
            self.rules,
            self.redactor,
            jwt=verifier,
            org_sources=[Source.parse(spec) for spec in sources],
        )
        if brute_force is None and config.brute_force_threshold:
            brute_force = BruteForcePolicy(
                threshold=config.brute_force_threshold, window_seconds=config.brute_force_window
            )
        self.brute_force = None if brute_force is None else BruteForceDetector(brute_force)
        self._failure_actions: frozenset[str] = (
            frozenset() if brute_force is None else brute_force.actions
        )
        self.exporters = _make_exporters(exporters, config, env)
        if not self.exporters:
            logger.warning("audit: no exporters configured; events are built but delivered nowhere")
        self.chain = _event_chain(self.exporters) if config.integrity else None
        #: The delivery process (``AUDIT_LOG_DELIVERY=process``), None with thread delivery.
        self.delivery_process: DeliveryProcess | None = None
        if config.delivery == "process":
            if config.strict:
                raise AuditConfigError(
                    "strict mode (AUDIT_LOG_STRICT) writes events to the spool from the "
                    "request's process: it needs AUDIT_LOG_DELIVERY=thread"
                )
            self.delivery_process = DeliveryProcess(
                self._delivery_pipeline,
                processes=config.delivery_processes,
                reply_timeout=max(10.0, config.shutdown_timeout),
                before_fork=self._hand_over,
            )
            self._chain_here = None  # the delivery process seals
            self.pipeline = self._pipeline(
                (self.delivery_process,),
                self._build_for_link,
                None,
                pace=self._pace(),
            )
        else:
            if config.delivery_processes > 1:
                logger.warning(
                    "audit: AUDIT_LOG_DELIVERY_PROCESSES=%d has no effect with thread delivery "
                    "(set AUDIT_LOG_DELIVERY=process)",
                    config.delivery_processes,
                )
            self._chain_here = self.chain
            self.pipeline = self._pipeline(
                self.exporters,
                self._build_unsealed,
                None if self.chain is None else self.chain.seal,  # once per batch
                # one exporter: its lane's backlog and the queue are one buffer
                pace=self._pace() if len(self.exporters) == 1 else 0,
            )
        self.capture_trace = _trace_capture(config, self.exporters)
        self.durable_exporters: tuple[DurableExporter, ...] = tuple(
            e for e in self.exporters if isinstance(e, DurableExporter) and e.durable
        )
        self.strict = config.strict
        if self.strict and not self.durable_exporters:
            raise AuditConfigError(
                "strict mode (AUDIT_LOG_STRICT) needs a durable exporter: the archive with a "
                "spool directory (AUDIT_LOG_EXPORTERS=archive, AUDIT_LOG_SPOOL_DIR=...)"
            )
        self.enabled = config.enabled
        self._valid_actions: set[str] = set()  # record() checks each action name once
        _default = self

    # -- request path ---------------------------------------------------------------------------

    def submit_request(self, ctx: RequestContext) -> None:
        """Called by the middleware once a request ended: resolve the actor, then enqueue."""
        if ctx.strict_events is not None:  # already built and made durable (strict mode)
            for event in ctx.strict_events:
                self.pipeline.submit(event)
            return
        if not self.may_audit(ctx):
            return
        # _resolve and _submit, with their common cases inline: this runs for every request.
        if not self._user_only or ctx.scope.get("user") is not None:
            self._resolve(ctx)
        if _hooks.state.inline:
            self._submit(ctx)
        else:
            # The queue keeps what the builder reads and lets the scope go: the server's and
            # the app's objects hung on it would otherwise wait with it, for the collector.
            ctx.view = request_view(ctx.scope, ctx.protocol)
            ctx.scope = _RELEASED
            self.pipeline.submit(ctx)

    def may_audit(self, ctx: RequestContext) -> bool:
        """Cheap check: can this request produce an event (handler hints, rules, policy)?"""
        methods = self.rules.audited_methods  # RuleSet.may_audit, without the call
        return not ctx.skip and (ctx.action is not None or methods is None or ctx.method in methods)

    def make_durable(self, ctx: RequestContext) -> None:
        """Strict mode, before the response's last byte: build the event and write it to every
        durable exporter (the archive's disk spool); raises if that fails. Blocks on disk I/O:
        call it from a worker thread in async servers."""
        if not self.may_audit(ctx):
            ctx.strict_events = []
            return
        self._resolve(ctx)
        built = self._build(ctx)
        events = built if type(built) is EventBatch else list(built)  # keeps rendered lines
        for exporter in self.durable_exporters:
            exporter.write_through(events)
        for event in events:
            _notify_observers(event)
        ctx.strict_events = events

    def _resolve(self, ctx: RequestContext) -> None:
        scope = ctx.scope
        if self._user_only and scope.get("user") is None:
            return
        if ctx.actor is None:
            for actor_resolver in self.actor_resolvers:
                try:
                    ctx.resolved_actor = actor_resolver(scope)
                except Exception:
                    warn_limited("actor-resolver", "audit actor resolver %r raised", actor_resolver)
                    logger.debug("actor resolver error", exc_info=True)
                    continue
                if ctx.resolved_actor is not None:
                    break
        if not org_was_set(ctx):
            for org_resolver in self.org_resolvers:
                try:
                    org = org_resolver(scope)
                    ctx.resolved_org = org if org is None or type(org) is str else str(org)
                except Exception:
                    warn_limited("org-resolver", "audit org resolver %r raised", org_resolver)
                    logger.debug("org resolver error", exc_info=True)
                    continue
                if ctx.resolved_org is not None:
                    break

    def _submit(self, item: object) -> None:
        hooks = _hooks.state
        if hooks.inline:
            events = self._build(item)
            for event in events:
                _hooks.notify(event)
            if not hooks.suppress_delivery:
                for event in events:
                    self.pipeline.submit(event)
            return
        self.pipeline.submit(item)

    def _build(self, item: object) -> Sequence[AuditEvent]:
        """Build an item's event, plus any brute-force alert it completes, in the hash chain
        (unless the delivery process seals it)."""
        events = self._build_unsealed(item)
        chain = self._chain_here
        return events if chain is None else chain.seal(events)

    def _build_unsealed(self, item: object) -> Sequence[AuditEvent]:
        """:meth:`_build` before the chain: the pipeline seals whole batches at once."""
        if type(item) is not RequestContext and isinstance(item, AuditEvent):
            return (item,)  # built inline already (and already observed)
        event = self.builder.build(item)
        if event is None:
            return ()
        if event.action not in self._failure_actions:
            events: Sequence[AuditEvent] = (event,)
        else:
            assert self.brute_force is not None
            alerts = self.brute_force.observe(event)
            events = (event, *(self.builder.alert_event(a) for a in alerts))
        return events

    def _build_for_link(self, item: object) -> Sequence[AuditEvent]:
        """Process delivery's build: a record that can cross as it is (``plain_record``) is
        built in the delivery process, by the same builder from the same tuple; anything else
        is built here. A failed login's record is built here: brute-force detection watches
        for it in this process."""
        if type(item) is tuple and plain_record(item) and item[0] not in self._failure_actions:
            # Not an event yet: the link, this pipeline's one exporter, packs it as it is.
            return (cast(AuditEvent, item),)
        return self._build_unsealed(item)

    # -- explicit events ------------------------------------------------------------------------

    def record(
        self,
        action: str,
        *,
        actor: Actor | None = None,
        target: Target | None = None,
        org_id: str | EllipsisType | None = ...,
        outcome: Outcome = "success",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Record an event that no single request outcome describes (never blocks on I/O).

        Inside a request, the actor, org, client and request details default to that request's.
        """
        if action not in self._valid_actions:
            if not is_valid_action(action):
                raise ValueError(
                    f"invalid action {action!r}: expected lowercase noun.verb[.qualifier]"
                )
            if len(self._valid_actions) < 10_000:
                self._valid_actions.add(action)
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        if actor is not None and not isinstance(actor, Actor):
            raise TypeError(f"actor must be an Actor, got {type(actor).__name__}")
        if target is not None and not isinstance(target, Target):
            kind = type(target).__name__
            raise TypeError(f"target must be a Target, e.g. Target('doc', 'd_1'), got {kind}")
        if not self.enabled:
            return
        ctx = current_context()
        if ctx is not None and (actor is None or org_id is ...):
            self._resolve(ctx)
        if actor is None:
            actor = (ctx and (ctx.actor or ctx.resolved_actor)) or ANONYMOUS
        if org_id is ...:
            org_id = None
            if ctx is not None:
                org_id = ctx.org_id if org_was_set(ctx) else self._org_from_context(ctx)
        if org_id is not None and type(org_id) is not str:
            org_id = str(org_id)  # an int key, say: the schema's text
        record: ExplicitRecord = (
            action,
            outcome,
            actor_key(actor),
            None if target is None else (target.type, target.id),
            org_id,
            tuple(metadata) if metadata else (),
            tuple(metadata.values()) if metadata else (),
            time.time_ns(),
            ctx,
            None if self.capture_trace is None else self.capture_trace(),
        )
        self._submit(record)

    def _org_from_context(self, ctx: RequestContext) -> str | None:
        params = ctx.scope.get("path_params")
        if not isinstance(params, Mapping):
            return ctx.resolved_org
        for name in self.config.org_params:
            if params.get(name):
                return str(params[name])
        return ctx.resolved_org

    # -- delivery -------------------------------------------------------------------------------

    def _pipeline(
        self,
        exporters: Sequence[Exporter],
        build: Callable[[object], Sequence[AuditEvent]],
        seal: Callable[[Sequence[AuditEvent], bool], EventBatch] | None,
        *,
        loop_build: int | None = None,
        observe: bool = True,
        pace: int = 0,
    ) -> DeliveryPipeline:
        config = self.config
        return DeliveryPipeline(
            exporters,
            build,
            queue_size=config.queue_size,
            overflow=config.overflow,
            batch_size=config.batch_size,
            batch_interval=config.batch_interval,
            loop_build=config.loop_build if loop_build is None else loop_build,
            export_retries=config.export_retries,
            shutdown_timeout=config.shutdown_timeout,
            # no-op unless capture_audit_events() is active
            on_built=_notify_observers if observe else None,
            seal=seal,
            pace=pace,
        )

    def _pace(self) -> int:
        """How far ahead of its one exporter a pipeline builds: a few batches, and room for
        the lane to merge what queued up behind a slow export (``merges_batches``)."""
        return max(_PACE_BATCHES * self.config.batch_size, _PACE_MIN_EVENTS)

    def _hand_over(self) -> None:
        """Before the delivery process is forked: exporters that keep per-process state on
        disk (the archive's spool) hand it over, so that the delivery process adopts it and
        continues the hash chain's stream where the last run left it."""
        for exporter in self.exporters:
            hand_over = getattr(exporter, "hand_over", None)
            if not callable(hand_over):
                continue
            try:
                handed = bool(hand_over())
            except Exception:
                logger.exception("audit: %s failed to hand over", type(exporter).__name__)
                handed = False
            if not handed:
                logger.warning(
                    "audit: %s did not hand its state over to the delivery process in time; "
                    "the delivery process starts a stream of its own",
                    type(exporter).__name__,
                )

    def _delivery_pipeline(self, unpacker: Unpacker) -> DeliveryPipeline:
        """The delivery process's pipeline: events arrive built, as plain tuples; it seals
        them, renders their lines and runs the exporters (called in that process)."""
        unpacker.build_record = self.builder.from_record
        event = unpacker.event
        return self._pipeline(
            self.exporters,
            lambda flat: (event(flat),),
            None if self.chain is None else self.chain.seal,
            loop_build=0,
            observe=False,  # observed where they were built
        )

    # -- control --------------------------------------------------------------------------------

    def force_flush(self, timeout: float | None = None) -> bool:
        """Deliver everything recorded so far; True only if every exporter confirmed it."""
        return self.pipeline.force_flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush and stop; later events are counted as dropped. Called at interpreter exit."""
        return self.pipeline.shutdown(timeout)

    def stats(self) -> PipelineStats:
        """Delivery counters: queued, processed and every kind of drop, per exporter (with
        process delivery, the delivery process's as of its last reply: current after a flush).
        """
        stats = self.pipeline.stats()
        process = self.delivery_process
        return stats if process is None else process.combine(stats)


def _notify_observers(event: AuditEvent) -> None:
    if _hooks.state.observers:
        try:
            _hooks.notify(event)
        except Exception:
            logger.exception("audit event observer raised")


TraceCapture = Callable[[], Mapping[str, str] | None]


def _trace_capture(config: AuditConfig, exporters: Sequence[Exporter]) -> TraceCapture | None:
    """On when asked, or (auto) when the app already uses OpenTelemetry or exports over OTLP.

    The OpenTelemetry API is imported only by the adapter module ``exporters.otel``.
    """
    if config.trace_context == "off":
        return None
    uses_otel = "opentelemetry" in sys.modules or any(
        type(e).__module__.startswith("exporters.otel") for e in exporters
    )
    if config.trace_context == "auto" and not uses_otel:
        return None
    from exporters.otel import trace_capture

    capture = trace_capture()
    if capture is None and config.trace_context == "on":
        raise AuditConfigError(
            "AUDIT_LOG_TRACE_CONTEXT=on needs opentelemetry-api: "
            "pip install 'audit-log-middleware[otel]'"
        )
    return capture


def _make_exporters(
    given: Sequence[Exporter | str] | None, config: AuditConfig, env: Mapping[str, str]
) -> list[Exporter]:
    from exporters import create_exporter  # exporters depend on the event model, not vice versa

    try:
        if given is None:
            return [create_exporter(name, config, env) for name in config.exporters]
        return [create_exporter(e, config, env) if isinstance(e, str) else e for e in given]
    except ValueError as exc:
        raise AuditConfigError(str(exc)) from exc


def _event_chain(exporters: Sequence[Exporter]) -> EventChain:
    """The hash chain, continuing the stream a durable archive kept from the last run."""
    for exporter in exporters:
        origin = getattr(exporter, "chain_head", None)
        if callable(origin):
            return EventChain(origin)
    return EventChain()


def get_default_auditor() -> Auditor:
    """The most recently created Auditor, or a new one configured from the environment."""
    return _default if _default is not None else Auditor()


def record(
    action: str,
    *,
    actor: Actor | None = None,
    target: Target | None = None,
    org_id: str | EllipsisType | None = ...,
    outcome: Outcome = "success",
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Record an explicit event with the current request's auditor (or the default one)."""
    ctx = current_context()
    auditor = ctx.auditor if ctx is not None else get_default_auditor()
    auditor.record(
        action, actor=actor, target=target, org_id=org_id, outcome=outcome, metadata=metadata
    )
