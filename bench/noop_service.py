"""A BentoML service that does no work: the floor of the framework's cost per request.

``bench/serving.py`` serves it like the real service (same BentoML settings, same worker
count, same request bodies, validated with the same :class:`serving.schemas.ScoreRequest`
taken whole as the endpoint's one argument) so its table shows how much of ``/score`` is
BentoML's HTTP stack and how much is scoring.
"""

from __future__ import annotations

from typing import Any

import bentoml

from serving import accept
from serving.runtime import SERVICE_OPTIONS, settle_heap
from serving.schemas import ScoreRequest


@bentoml.service(name="noop", **SERVICE_OPTIONS)
class Noop:
    def __init__(self) -> None:
        accept.install()
        settle_heap()

    @bentoml.api(route="/score")
    async def score(self, request: ScoreRequest, /) -> dict[str, Any]:
        return {"customer_id": request.customer_id, "churn": {"probability": 0.5}}
