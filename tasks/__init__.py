"""Thin Prefect tasks around dd_core: retries, tags, names and artifacts. No math here."""
