"""Triage process: validate posts, normalise, answer from the verdict cache, queue the rest."""
