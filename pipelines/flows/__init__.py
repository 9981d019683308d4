"""Flows: one folder per kind of data (tabular, image, text), each a Flow registered with its config model for
its `flow.kind` (see base.py: what a new flow is). The stages take a Flow; they never branch on the kind."""

from pipelines.flows.base import Flow, get_flow, register

__all__ = ["Flow", "get_flow", "register"]
