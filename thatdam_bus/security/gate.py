"""Where signed intents meet dispatch: admit or refuse before the handler, and publish the intent's result.

Every signed intent that decodes ends with exactly one ``IntentResult`` on ``intent.result.<intent_id>``:
``rejected`` (with the verifier's or the handler's reason) or ``done``; a handler that asks for a retry
publishes nothing yet. Results are best effort under a deadline: the message's fate (ack, dead-letter) is
decided by the return value, never by whether the result could be published.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from thatdam_bus import topics
from thatdam_bus.context import HandlerContext
from thatdam_bus.envelope import Envelope
from thatdam_bus.events.intent import IntentResult, IntentStatus
from thatdam_bus.fencing import EpochFence
from thatdam_bus.security.verifier import NO_KEY, RATE_LIMITED, IntentVerifier, Rejection
from thatdam_bus.transports.base import Delivery, Fate, Outcome

log = logging.getLogger("thatdam_bus.security")

RESULT_TIMEOUT_S = 2.0
STALE_EPOCH = "stale epoch"


class IntentGate:
    """One per signed handler. Without a verifier (or a key) every intent is refused, never let through."""

    def __init__(self, verifier: IntentVerifier | None, *, scope: str = "",
                 result_timeout_s: float = RESULT_TIMEOUT_S) -> None:
        """``scope``: the handler's qualified name, so each consumer of an intent guards its own copy."""
        self.verifier = verifier
        self.scope = scope
        self.result_timeout_s = result_timeout_s

    def admit(self, event: Envelope[Any], delivery: Delivery, fence: EpochFence | None = None) -> Rejection | None:
        """Verify against the body as received (see ``signing``), then the epoch, then the sender's rate (only
        an authentic intent spends its source's budget, see ``ratelimit``); None lets the handler run."""
        if self.verifier is None:
            return Rejection(NO_KEY, "no verifier configured")
        if fence is not None and fence.is_stale(event.epoch):
            return Rejection(STALE_EPOCH, f"epoch {event.epoch} < {fence.newest}")
        document = orjson.loads(delivery.body)  # decoded once already: a JSON object
        rejection = self.verifier.verify(event, delivery.routing_key, document, scope=self.scope)
        limiter = self.verifier.limiter
        if rejection is None and limiter is not None and not limiter.allow(event.source):
            self.verifier.release(event, scope=self.scope)  # the same intent sent again later is no replay
            return Rejection(RATE_LIMITED, f"{event.source} sent over {limiter.rate:g}/s (burst {limiter.burst})")
        return rejection

    async def refused(self, ctx: HandlerContext, event: Envelope[Any], rejection: Rejection) -> None:
        await self.report(ctx, event, IntentStatus.REJECTED, rejection.reason)

    async def settled(self, ctx: HandlerContext, event: Envelope[Any], outcome: Outcome) -> None:
        """After the handler: ack -> ``done``; dead-letter (``Reject``) -> ``rejected``; requeue -> release
        the nonce, so the redelivery of this same intent is not taken for a replay."""
        if outcome.fate is Fate.ACK:
            await self.report(ctx, event, IntentStatus.DONE)
        elif outcome.fate is Fate.DEAD_LETTER:
            await self.report(ctx, event, IntentStatus.REJECTED, outcome.reason or "rejected")
        elif self.verifier is not None:
            self.verifier.release(event, scope=self.scope)

    async def report(
        self, ctx: HandlerContext, event: Envelope[Any], status: IntentStatus, reason: str | None = None
    ) -> None:
        """Publish the result; a failure is logged, never raised (the dead-letter must not be lost to it)."""
        try:
            result = IntentResult(intent_id=event.id, status=status, node_id=ctx.node_id,
                                  reason=reason[:1024] if reason else None)
            async with asyncio.timeout(self.result_timeout_s):
                await ctx.bus.publish(result, topics.intent_result(event.id))
        except Exception as exc:
            log.warning("could not publish the %s result of intent %s: %r", status, event.id, exc)
