"""Agents: who answers. An agent is a provider + a model + sampling (+ a persona); `providers/`
says where its tokens come from (an OpenAI-compatible URL, or llama.cpp in-process)."""

from mixkit.moa.agents.agent import Agent, CallOptions, CallRecord, make_provider

__all__ = ["Agent", "CallOptions", "CallRecord", "make_provider"]
