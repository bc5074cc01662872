"""Shared core: settings, contracts, topic catalogue, normalisation, cache and Kafka plumbing."""
