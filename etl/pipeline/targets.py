"""Which batches a run syncs: the config's `[[batches]]`, then every batch of its `[[agents]]`.

Planning reads only: the agents' batch lists from the API and what the database knows. The
command line and the Airflow DAG both plan with `plan_targets`, then record what the plan
found gone (`mark_gone_batches_removed`) once a run is under way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from etl.config import AgentRef, BatchRef, Config, ConfigError
from etl.extract.client import ApiError, RunStopping, UltravoxClient
from etl.extract.endpoints import agent_batch_pages
from etl.load import batches as batch_store
from etl.normalize.batches import batch_id_of

log = logging.getLogger(__name__)

BatchDetails = dict[str, Any]
"""A ScheduledCallBatch object as the API returns it."""


@dataclass(frozen=True, slots=True)
class Target:
    batch: BatchRef
    details: BatchDetails | None = None
    """The batch object from its agent's list, which saves a request."""


@dataclass(slots=True)
class Plan:
    targets: list[Target] = field(default_factory=list)
    gone: dict[str, list[str]] = field(default_factory=dict)
    """Known batches missing from their agent's complete list, by agent: to mark removed."""
    errors: list[str] = field(default_factory=list)
    """Agents whose list could not be read, and asked-for batches nobody lists."""


def plan_targets(
    config: Config,
    engine: Engine,
    client: UltravoxClient,
    batch_ids: Iterable[str] | None = None,
) -> Plan:
    """The batches to sync (all, or those of `batch_ids`), each once, in config order.

    Raises ConfigError for an asked-for batch that is neither configured nor listed by an
    agent whose list was read (nothing has been written then), and RunStopping.
    """
    wanted = None if batch_ids is None else {b.lower() for b in batch_ids}
    plan = Plan()
    targets: dict[str, Target] = {b.batch_id: Target(b) for b in config.batches}
    unknown = (wanted or set()) - targets.keys()
    agents = config.agents if wanted is None or unknown else ()
    for agent in agents:
        try:
            listed, gone = _list_agent(client, engine, agent, config.api.page_size)
        except RunStopping:
            raise
        except ApiError as exc:
            message = f"agent {agent.agent_id}: listing its batches failed: {exc}"
            log.error("%s", message, extra={"event": "agent_failed"})
            plan.errors.append(message)
            continue
        if gone:
            plan.gone[agent.agent_id] = gone
        for batch_id, item in listed.items():
            if batch_id not in targets:
                targets[batch_id] = Target(BatchRef(agent.agent_id, batch_id, agent.statuses), item)
    plan.targets = [t for t in targets.values() if wanted is None or t.batch.batch_id in wanted]
    missing = sorted((wanted or set()) - targets.keys())
    if missing and not plan.errors:
        where = "in [[batches]] nor listed for an agent" if config.agents else "in [[batches]]"
        raise ConfigError(f"{config.source}: --batch {missing[0]} is neither {where}")
    for batch_id in missing:
        plan.errors.append(f"batch {batch_id} is neither configured nor listed for an agent")
    return plan


def narrow_to_batches(config: Config, batch_ids: Iterable[str]) -> Config:
    """The config of a run over `batch_ids` only (`sync --batch`), checked before anything
    is written: no database file, no run record.

    A batch in `[[batches]]` keeps its entry; any other is looked up in the agents' batch
    lists (the only requests made) and becomes an entry of its agent. Raises ConfigError
    for a batch nobody lists. If an agent's list cannot be read, the config comes back
    as it is: the run lists the agents again and records why that failed.
    """
    wanted = dict.fromkeys(b.lower() for b in batch_ids)
    configured = {b.batch_id: b for b in config.batches}
    found = {b: configured[b] for b in wanted if b in configured}
    unknown = wanted.keys() - found.keys()
    if unknown and config.agents:
        with UltravoxClient(config.api, config.api_key) as client:
            for agent in config.agents:
                try:
                    pages = list(
                        agent_batch_pages(client, agent.agent_id, page_size=config.api.page_size)
                    )
                except ApiError:
                    return config
                for item in (item for page in pages for item in page.results):
                    batch_id = batch_id_of(item) if isinstance(item, dict) else None
                    if batch_id in unknown and batch_id not in found:
                        found[batch_id] = BatchRef(agent.agent_id, batch_id, agent.statuses)
    missing = [b for b in wanted if b not in found]
    if missing:
        where = "in [[batches]] nor listed for an agent" if config.agents else "in [[batches]]"
        raise ConfigError(f"{config.source}: --batch {missing[0]} is neither {where}")
    return replace(config, batches=tuple(found[b] for b in wanted), agents=())


def _list_agent(
    client: UltravoxClient, engine: Engine, agent: AgentRef, page_size: int
) -> tuple[dict[str, BatchDetails], list[str]]:
    """Every batch the agent lists, by id with its batch object; and the known batches of
    the agent missing from a complete, readable list (an incomplete list finds none gone)."""
    listed: dict[str, BatchDetails] = {}
    entries, unreadable, total = 0, 0, None
    for page in agent_batch_pages(client, agent.agent_id, page_size=page_size):
        entries += len(page.results)
        total = page.total if page.total is not None else total
        for item in page.results:
            batch_id = batch_id_of(item) if isinstance(item, dict) else None
            if batch_id is None:
                log.warning("agent %s: a listed batch has no usable batchId", agent.agent_id)
                unreadable += 1
            else:
                listed.setdefault(batch_id, item)
    if unreadable or (total is not None and total != entries):
        why = (
            f"{unreadable} listed batches have no usable batchId"
            if unreadable
            else f"listed {entries} batches but the API's total is {total}"
        )
        log.warning("agent %s: %s; no batch is marked removed this run", agent.agent_id, why)
        return listed, []
    with engine.connect() as conn:
        known = batch_store.active_batches_of_agent(conn, agent.agent_id)
    return listed, sorted(known - listed.keys())


def mark_gone_batches_removed(engine: Engine, plan: Plan, now: datetime) -> None:
    """Record the batches the plan found gone from their agent's list as removed."""
    for agent_id, gone in plan.gone.items():
        with engine.begin() as conn:
            marked = batch_store.mark_removed(conn, gone, now)
        for batch_id in marked:
            log.warning("batch %s is gone from agent %s's list; marked removed", batch_id, agent_id)
