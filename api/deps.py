"""Dependencies, as Annotated aliases.

NOTE: the ones that only read app state are `async def`: FastAPI runs a plain `def` dependency on
the thread pool, and a submit has about ten of them; those hops cost more than the lookups.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import authenticate, require_admin
from omnijobs.admission import Admission
from omnijobs.artifacts.values import StageValues
from omnijobs.dispatch import Publisher
from omnijobs.inputs import MediaInputs
from omnijobs.pipelines import PipelineRegistry
from omnijobs.settings import Settings
from omnijobs.store.jobs import JobStore
from omnijobs.store.keys import Principal


async def _store(request: Request) -> JobStore:
    return request.app.state.store


async def _registry(request: Request) -> PipelineRegistry:
    return request.app.state.registry


async def _publisher(request: Request) -> Publisher:
    return request.app.state.publisher


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _values(request: Request) -> StageValues:
    return request.app.state.values


async def _media(request: Request) -> MediaInputs:
    return request.app.state.media


async def _base_url(request: Request) -> str:
    """Where job URLs point: the configured base URL; else this request's own origin if its Host is
    trusted; else nothing, so URLs are paths.

    NOTE: the Host header is the client's to choose; echoing any Host would let a caller (or a
    poisoned cache in between) plant links to another site in job URLs and webhook payloads.
    """
    settings = request.app.state.settings
    if settings.api_base_url:
        return settings.api_base_url.rstrip("/")
    trusted = {h.strip().lower() for h in settings.trusted_hosts.split(",") if h.strip()}
    if (request.url.hostname or "").lower() in trusted:
        return str(request.base_url).rstrip("/")
    return ""


StoreDep = Annotated[JobStore, Depends(_store)]
RegistryDep = Annotated[PipelineRegistry, Depends(_registry)]
PublisherDep = Annotated[Publisher, Depends(_publisher)]
SettingsDep = Annotated[Settings, Depends(_settings)]
BaseUrlDep = Annotated[str, Depends(_base_url)]
ValuesDep = Annotated[StageValues, Depends(_values)]


async def _admission(request: Request) -> Admission:
    return request.app.state.admission


AdmissionDep = Annotated[Admission, Depends(_admission)]
# Who is calling (401 without a valid key), and the same for admin-only routes (403 for other keys).
PrincipalDep = Annotated[Principal, Depends(authenticate)]
AdminDep = Annotated[Principal, Depends(require_admin)]
MediaDep = Annotated[MediaInputs, Depends(_media)]
