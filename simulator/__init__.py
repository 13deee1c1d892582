"""A local simulator of the Anthropic Message Batches API (and count_tokens, models), for users and tests."""
