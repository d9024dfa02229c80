"""Providers: where an agent's tokens come from (an OpenAI-compatible URL, or llama.cpp in-process)."""
