"""The fence: the newest leader epoch this process has seen, and the rule for what is too old to obey.

Epochs only grow (each lease grant increments the cluster counter), so anything stamped with an older epoch comes
from a leader that has been replaced, possibly one that was paused and does not know it yet (Kleppmann's case).
Epoch 0 means "the sender makes no leadership claim" (a script, a solo node's tool) and is never stale.
"""

from __future__ import annotations


class EpochFence:
    """Monotonic maximum of the epochs observed from the lease and from the bus."""

    def __init__(self) -> None:
        self._newest = 0

    @property
    def newest(self) -> int:
        return self._newest

    def observe(self, epoch: int) -> bool:
        """Record ``epoch``; True when it is newer than anything seen before."""
        if epoch > self._newest:
            self._newest = epoch
            return True
        return False

    def is_stale(self, epoch: int) -> bool:
        """True for a leadership claim older than the newest epoch seen."""
        return 0 < epoch < self._newest

    def __repr__(self) -> str:
        return f"<EpochFence newest={self._newest}>"
