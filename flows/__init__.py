"""Flows that compose the stages, and the `longbatch` CLI."""
