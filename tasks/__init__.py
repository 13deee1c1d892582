"""The stages of longbatch: ingest -> plan (fit, build, pack) -> batches -> results -> reports."""
