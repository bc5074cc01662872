"""Operator tools: sending posts and watching decisions, running the local stack."""
