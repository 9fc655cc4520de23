"""The kopf registrations: thin translations of watch events into the model.

Called by app.run(), which builds one registry per operator instance (so a
test can run two, or restart one, in a process). Every handler is a few
lines: the decisions live in events.World, engine.Engine and the pure
model; nothing here compiles, pushes or waits on an agent.

  - `@kopf.index` per watched kind keeps each object's essence. kopf runs
    no other handler before every index has its initial listing, so the
    first event handler call loads the complete cluster at once
    (engine.load): no program is compiled from half a cluster, and no pod is
    pushed twice because a policy arrived after its pods.
  - `@kopf.on.event` per kind: engine.event(kind, type, essence). A refused
    object is logged as a warning on it, which kopf posts as an Event.
  - AdminNetworkPolicy and BaselineAdminNetworkPolicy are optional: without
    their CRDs kopf serves the rest and starts watching them when the CRDs
    appear (it watches CustomResourceDefinitions).
  - startup: kopf settings (watch timeouts and reconnects, posting level,
    peering), then the controller's threads and servers; cleanup stops them.
"""
from __future__ import annotations

import logging

import kopf

from tailor.operator.controller import events

def index_id(kind: str) -> str:
    """The kwarg name kopf passes the kind's index under."""
    return f"tailor_{events.RESOURCES[kind][2]}"


def register(registry: kopf.OperatorRegistry, controller) -> None:
    """Register every handler of `controller` (app.Controller) in `registry`."""
    config = controller.config

    @kopf.on.login(registry=registry)
    def login(**_):
        return controller.credentials

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_):
        settings.watching.server_timeout = config.watch_server_timeout
        settings.watching.client_timeout = config.watch_client_timeout
        settings.watching.connect_timeout = config.watch_connect_timeout
        settings.watching.reconnect_backoff = config.watch_reconnect_backoff
        settings.watching.inactivity_timeout = config.watch_inactivity_timeout
        settings.networking.request_timeout = config.request_timeout
        # Only warnings (refused objects) become Events; the rest is logs.
        settings.posting.level = logging.WARNING
        settings.peering.standalone = config.peering is None
        if config.peering is not None:
            settings.peering.name = config.peering
            settings.peering.mandatory = True
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_):
        await controller.stop()

    @kopf.on.probe(id="tailor", registry=registry)
    def probe(**_):
        return controller.engine.summary()

    for kind in events.KINDS:
        _register_kind(registry, controller, kind)


def _register_kind(registry: kopf.OperatorRegistry, controller, kind: str) -> None:
    group, version, plural = events.RESOURCES[kind]
    resource = (group, version, plural) if group else (version, plural)

    @kopf.index(*resource, id=index_id(kind), registry=registry)
    def index(body, **_):
        meta = body.get("metadata") or {}
        return {(meta.get("namespace"), meta.get("name")): events.essence(kind, body)}

    @kopf.on.event(*resource, id=f"tailor_{plural}_event", registry=registry)
    def on_event(event, logger, **kwargs):
        if not controller.loaded:
            controller.load({k: kwargs[index_id(k)] for k in events.KINDS})
        outcome = controller.engine.event(kind, event.get("type"), events.essence(kind, event["object"]))
        if outcome.error:
            logger.warning("tailor ignores this version of the object: %s", outcome.error)
