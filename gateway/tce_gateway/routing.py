"""Which Triton model runs a request: releases by version, canary and shadow traffic.

- **A release by version.** ``/v2/models/<E>/versions/<n>/...`` (gRPC: ``model_version``
  "n") of an ensemble built by ``tce build`` (its config publishes the client schema) goes
  to the model ``<E>-release-<n>`` (``tce_backends.contract.release_model_name``), which pins
  release n's step versions. A release that is not loaded is a 404 naming it. Versions of
  any other model are forwarded as they are.
- **Canary.** With ``releases.json``'s ``traffic`` in mode ``canary``, a share of the
  *unversioned* inference requests for its ensemble (HTTP v2, gRPC, v1 predict,
  /invocations) goes to the candidate's model instead. The choice is random per request:
  nothing a caller sends (no header, no request id) can pick the candidate. A candidate
  that is not loaded gets nothing (logged once): the current release answers.
- **Shadow.** In mode ``shadow`` the current release answers as usual, and the same share
  of requests is also sent to the candidate in the background (``tce_gateway.shadow``).
"""
from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass
from typing import Callable

from tce_backends.contract import release_model_name
from tce_gateway.errors import Refusal
from tce_gateway.releases import NO_RELEASES, ReleaseState, ReleaseWatcher
from tce_gateway.shadow import Shadow
from tce_gateway.signatures import MODEL_NAME, ModelSignature, SignatureCache
from tce_gateway.tensors import InferRequest
from tce_gateway.upstream import HttpAnswer

RELEASE_MODEL = re.compile(r".+-release-[1-9][0-9]*")


@dataclass(frozen=True)
class Route:
    model: str                  # the Triton model that answers
    version: str = ""           # the version sent on ("" for a release's own model)
    ensemble: str = ""          # with shadow: the ensemble asked for
    shadow: str | None = None   # a candidate's model that also gets a copy
    release: int | None = None  # the candidate release, with canary or shadow

    def infer_path(self) -> str:
        return f"/v2/models/{self.model}" + (f"/versions/{self.version}" if self.version else "") + "/infer"


def _say(line: str) -> None:
    print(f"tce_gateway: {line}", file=sys.stderr, flush=True)


class Router:
    def __init__(self, signatures: SignatureCache, watcher: ReleaseWatcher | None, shadow: Shadow | None,
                 rng: random.Random | None = None, log: Callable[[str], None] = _say) -> None:
        self._signatures = signatures
        self._watcher = watcher
        self._shadow = shadow
        self._rng = rng or random.SystemRandom()
        self._log = log
        self._missing: set[str] = set()   # candidates already logged as not loaded
        self.canary_requests = 0          # requests the candidate answered (this worker)

    def releases(self) -> ReleaseState:
        return self._watcher.state() if self._watcher is not None else NO_RELEASES

    async def release_model(self, model: str, version: str) -> str | None:
        """The model of release ``version`` when ``model`` is an ensemble with releases, else None."""
        if not version or RELEASE_MODEL.fullmatch(model):
            return None
        try:
            signature = await self._signatures.get(model)
        except Refusal:
            return None  # not served: answered as before
        if signature.published_schema is None:
            return None  # not an ensemble built by tce build: versions are Triton's own
        target = release_model_name(model, int(version))
        try:
            if not MODEL_NAME.fullmatch(target):
                raise Refusal("name too long")
            await self._signatures.get(target)
        except Refusal:
            raise Refusal(f"release {version} of '{model}' is not served here (no model '{target}' is loaded)",
                          404) from None
        return target

    async def route(self, model: str, version: str = "") -> Route:
        """Where an inference request for ``model`` (``version``: as the caller named it) goes."""
        if version:
            target = await self.release_model(model, version)
            return Route(target) if target is not None else Route(model, version)
        state = self.releases()
        traffic = state.traffic
        if traffic is None or model != state.ensemble or self._rng.random() >= traffic.share:
            return Route(model)
        candidate = release_model_name(model, traffic.release)
        if traffic.mode == "shadow":
            return Route(model, ensemble=model, shadow=candidate, release=traffic.release)
        try:
            await self._signatures.get(candidate)
        except Refusal:
            if candidate not in self._missing:
                self._missing.add(candidate)
                self._log(f"canary: release {traffic.release} of '{model}' ('{candidate}') is not loaded; the "
                          "current release answers its share until it is")
            return Route(model)
        self._missing.discard(candidate)
        self.canary_requests += 1
        if self.canary_requests == 1 or self.canary_requests % 1000 == 0:
            self._log(f"canary: {self.canary_requests} requests for '{model}' answered by release "
                      f"{traffic.release} (share {traffic.share:.3g}, worker counts)")
        return Route(candidate, release=traffic.release)

    def answered(self, route: Route, request: InferRequest, signature: ModelSignature, answer: HttpAnswer) -> None:
        """After the caller's answer: the shadow copy, if the route has one."""
        if route.shadow is not None and route.release is not None and self._shadow is not None:
            self._shadow.send(route.ensemble, route.release, route.shadow, request, signature, answer)
