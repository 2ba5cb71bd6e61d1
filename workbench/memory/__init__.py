"""Memory planning from a config alone: storage types, parameter counts, engine rules, the plan.

Layers inside: ``dtypes`` (bytes per value) <- ``params`` (weights) <- ``engines`` (the engine
tables in profiles/engines/) <- ``planner`` (KV bytes and the plan). Nothing here loads weights.
"""

from workbench.errors import PlanError
from workbench.memory.engines import Engine, get_engine, list_engines
from workbench.memory.planner import KVPlan, plan

__all__ = ["Engine", "KVPlan", "PlanError", "get_engine", "list_engines", "plan"]
