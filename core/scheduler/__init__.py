"""Continuous batching: requests, admission by KV budget, chunked prefill, retraction."""
