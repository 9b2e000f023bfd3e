"""From bytes to a typed handler call, and from the handler's behaviour to the message's fate.

Order matters: the size limit is checked before decoding, decoding and validation before any handler work,
so malformed, oversized or schema-invalid input costs little and is dead-lettered with a readable reason.
Signed payloads (intents) then pass the ``IntentGate`` before their handler, and publish their result after.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from time import perf_counter
from typing import Any

from pydantic import ValidationError

from thatdam_bus.context import HandlerContext
from thatdam_bus.envelope import Envelope, decode_raw, describe_validation_error, shareable, typed_envelope
from thatdam_bus.errors import ContractError, DecodeError, Reject, Retry, SchemaError
from thatdam_bus.fencing import EpochFence
from thatdam_bus.metrics.instruments import HandlerMetrics
from thatdam_bus.security.gate import IntentGate
from thatdam_bus.security.verifier import IntentVerifier
from thatdam_bus.service import HandlerSpec
from thatdam_bus.tracing import enter_trace, leave_trace, new_traceparent
from thatdam_bus.transports.base import ACK, Delivery, DeliveryCallback, Fate, Outcome, QueueKind, outcome_of_crash

log = logging.getLogger("thatdam_bus.dispatch")

ContextFactory = Callable[[Delivery], HandlerContext]


class SeenIds:
    """A bounded memory of processed envelope ids: durable deliveries are at-least-once, handlers run once."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


def decode_for(spec: HandlerSpec, body: bytes, max_bytes: int) -> Envelope[Any]:
    """Check size, decode, check the type and validate ``data`` against the handler's model.

    Fast path: one pass of pydantic-core over the bytes into ``Envelope[Model]`` (a third of the cost of
    orjson + envelope validation + data validation + copy). Anything it refuses, and bodies with the
    non-standard ``NaN``/``Infinity`` it would accept but orjson does not, take the step-by-step path, which
    names the reason, so what is accepted and every dead-letter reason stay as they were."""
    _check_size(body, max_bytes)
    if b"NaN" not in body and b"Infinity" not in body:
        try:
            event = typed_envelope(spec.payload).model_validate_json(body)
        except ValidationError:
            pass
        else:
            if event.type == spec.payload.event_type:
                return event
    raw = decode_raw(body)
    if raw.type != spec.payload.event_type:
        raise ContractError(f"event type {raw.type!r} is not {spec.payload.event_type!r} handled here")
    try:
        data = spec.payload.model_validate(raw.data)
    except ValidationError as exc:
        problems = describe_validation_error(exc, prefix="data")
        raise ContractError(f"invalid {raw.type} data: {problems}") from exc
    return raw.model_copy(update={"data": data})


def _check_size(body: bytes, max_bytes: int) -> None:
    if len(body) > max_bytes:
        raise ContractError(f"message of {len(body)} bytes exceeds the limit of {max_bytes}")


def _decoder(spec: HandlerSpec, max_bytes: int) -> Callable[[Delivery], Envelope[Any]]:
    """``decode_for`` of a delivery; once per message for every in-process subscriber of one model.

    The embedded broker gives every copy of a fanned-out message one ``Delivery.shared`` dict; the first
    subscriber of a model to decode it leaves the validated envelope there for the others, which still check
    their own size limit. Sharing one object between handlers is safe only for a deeply immutable model
    (``envelope.shareable``: frozen, no list or dict at any depth): any other is decoded for each of them."""
    model = spec.payload
    if not shareable(model):
        return lambda delivery: decode_for(spec, delivery.body, max_bytes)

    def decode(delivery: Delivery) -> Envelope[Any]:
        shared = delivery.shared
        if shared is None:
            return decode_for(spec, delivery.body, max_bytes)
        event = shared.get(model)
        if event is None:
            event = shared[model] = decode_for(spec, delivery.body, max_bytes)
        else:
            _check_size(delivery.body, max_bytes)
        return event

    return decode


def make_callback(
    spec: HandlerSpec,
    context_for: ContextFactory,
    *,
    max_bytes: int,
    seen: SeenIds | None = None,
    verifier: IntentVerifier | None = None,
    fence: EpochFence | None = None,
) -> DeliveryCallback:
    """The delivery callback a transport runs for ``spec``. ``verifier`` checks signed intents; without one
    (or without a key) a handler of signed intents refuses them all; ``fence`` refuses intents stamped with
    a leader epoch older than the newest this node has seen. Dead letters are counted by reason class when
    the transport has stored them (``Outcome.on_parked``): a requeue carries the ``gave_up`` count, which the
    transport runs if its attempt bound turns the requeue into a dead letter.

    The event's ``traceparent`` is the current trace while the gate and the handler run (a new trace for an
    event without one), so what the handler publishes, and the intent's result, continue it."""
    if seen is None and spec.queue.kind is QueueKind.DURABLE:
        seen = SeenIds()
    gate = IntentGate(verifier, scope=spec.qualified_name) if spec.payload.signed else None
    metrics = HandlerMetrics.of(spec.qualified_name, spec.queue.patterns)
    gave_up = partial(metrics.dead_lettered, "gave_up")

    def counted(outcome: Outcome, reason_class: str) -> Outcome:
        return replace(outcome, on_parked=partial(metrics.dead_lettered, reason_class))

    decode = _decoder(spec, max_bytes)

    async def handle(event: Envelope[Any], delivery: Delivery) -> Outcome:
        ctx = context_for(delivery)
        if spec.per_node and getattr(event.data, "node_id", None) != ctx.node_id:
            return ACK  # addressed to another node: its own queue has a copy; no result from us
        if gate is not None and (rejection := gate.admit(event, delivery, fence)) is not None:
            await gate.refused(ctx, event, rejection)
            return counted(_dead_letter(spec, delivery, str(rejection)), "intent_" + rejection.reason.replace(" ", "_"))
        if seen is not None and event.id in seen:
            log.info("duplicate %s id=%s ignored by %s", delivery.routing_key, event.id, spec.qualified_name)
            return ACK
        started = perf_counter()
        try:
            await spec.fn(event, ctx)
        except Exception as exc:
            outcome = _outcome_of(spec, delivery, exc)
        else:
            outcome = ACK
        metrics.observe(perf_counter() - started)
        if outcome is ACK:
            if seen is not None:
                seen.add(event.id)
        elif outcome.fate is Fate.DEAD_LETTER:
            outcome = counted(outcome, "rejected")
        else:
            outcome = replace(outcome, on_parked=gave_up)
        if gate is not None:
            await gate.settled(ctx, event, outcome)
        return outcome

    async def on_delivery(delivery: Delivery) -> Outcome:
        metrics.count()
        try:
            event = decode(delivery)
        except ContractError as exc:
            return counted(_dead_letter(spec, delivery, str(exc)), _reason_class(exc))
        token = enter_trace(event.traceparent or new_traceparent())
        try:
            return await handle(event, delivery)
        except Exception as exc:  # around the handler (context, intent gate): retried, bounded and counted alike
            log.warning("dispatch for %s failed on %s (attempt %d): %r",
                        spec.qualified_name, delivery.routing_key, delivery.attempt, exc)
            return replace(outcome_of_crash(exc), on_parked=gave_up)
        finally:
            leave_trace(token)

    return on_delivery


def _reason_class(exc: ContractError) -> str:
    """A bounded label for why a body never reached its handler (the full reason is in the dead letter)."""
    if isinstance(exc, DecodeError):
        return "not_json"
    if isinstance(exc, SchemaError):
        return "invalid_envelope"
    text = str(exc)
    if text.startswith("message of"):
        return "too_large"
    return "wrong_type" if text.startswith("event type") else "invalid_data"


def _outcome_of(spec: HandlerSpec, delivery: Delivery, exc: Exception) -> Outcome:
    """A handler's exception as a fate: ``Reject`` dead-letters, anything else requeues (``Retry`` quietly)."""
    if isinstance(exc, Reject):
        return _dead_letter(spec, delivery, exc.reason)
    if isinstance(exc, Retry):
        return Outcome(Fate.REQUEUE, exc.reason)
    log.warning("handler %s failed on %s (attempt %d): %r",
                spec.qualified_name, delivery.routing_key, delivery.attempt, exc)
    return Outcome(Fate.REQUEUE, f"{type(exc).__name__}: {exc}")


def _dead_letter(spec: HandlerSpec, delivery: Delivery, reason: str) -> Outcome:
    log.warning("dead-lettered %s for %s: %s", delivery.routing_key, spec.qualified_name, reason)
    return Outcome(Fate.DEAD_LETTER, reason)
