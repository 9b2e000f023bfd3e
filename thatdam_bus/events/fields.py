"""Constrained field types shared by the payload models (limits enforced before any work is done)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

NodeId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="stable node id (routing-key word)")]
DeviceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="device word, e.g. video0")]
ShortText = Annotated[str, Field(max_length=256)]
Reason = Annotated[str, Field(max_length=1024, description="human-readable reason")]
Epoch = Annotated[int, Field(ge=0, description="leader epoch (fencing token)")]
