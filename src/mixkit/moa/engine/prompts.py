"""The aggregate-and-synthesize prompt (our wording, after Wang et al. 2024).

Layout, stable part first so that a server's prefix cache can reuse it across layers and runs:

    system:    SYNTHESIZE instructions (+ the caller's system text, + the agent's persona),
               then the numbered, delimited references
    ...        the conversation, unchanged, ending with the user's latest message

Each reference sits between `<response id=N>` and `</response>` tags, so an answer that contains
its own numbered list cannot be mistaken for the reference numbering, and each is cut to a
character budget so that one long-winded proposer cannot crowd out the others. The user's message
stays last and untouched: with the references appended to it instead, the 0.5B models we ship
often echoed the question or the tags back (tried here on a handful of prompts). A program agent's
proposal shows its program, its status and what it printed (`as_reference`), not just the number.
"""

from __future__ import annotations

from mixkit.errors import ConfigError
from mixkit.moa.agents.program import ProgramAnswer
from mixkit.moa.agents.providers.base import Message

SYNTHESIZE = (
    "Below are candidate responses to the user's latest message, written by other assistants. "
    "Some may be wrong, incomplete or biased. Evaluate them critically, keep what is correct, fix "
    "what is not, and write one accurate, well-organized answer of your own. Reply directly to the "
    "user: do not mention the candidate responses or number your answer after them."
)


def clip(text: str, max_chars: int) -> str:
    """Cut `text` to `max_chars`, marking the cut."""
    text = text.strip()
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + " [...truncated]"


def as_reference(answer: str) -> str:
    """A proposal as the aggregator reads it: a program agent's answer (agents/program.py) as
    its program, how it ran and what it printed, so that a program can be weighed against prose."""
    if not isinstance(answer, ProgramAnswer):
        return answer
    return (
        f"A Python program, run in a sandbox:\n```python\n{answer.program}\n```\n"
        f"It ran ({answer.status}) and printed:\n{answer.output.strip()}\n\nAnswer: {answer}"
    )


def format_references(answers: list[str], max_chars: int) -> str:
    """Number and delimit each previous-layer answer."""
    n = len(answers)
    blocks = [
        f'<response id="{i}" of="{n}">\n{clip(as_reference(a), max_chars)}\n</response>'
        for i, a in enumerate(answers, 1)
    ]
    return f"Candidate responses ({n}):\n\n" + "\n\n".join(blocks)


def synthesis_messages(
    conversation: list[Message], answers: list[str], max_chars: int = 1500
) -> list[Message]:
    """Messages for an aggregator: instructions, then the references, then the conversation.

    `conversation` must end with a user message. With no answers (a single agent) the
    conversation is returned unchanged.
    """
    if not answers:
        return list(conversation)
    system = [m["content"] for m in conversation if m["role"] == "system"]
    turns = [m for m in conversation if m["role"] != "system"]
    text = "\n\n".join([SYNTHESIZE, *system, format_references(answers, max_chars)])
    return [{"role": "system", "content": text}, *turns]


def as_conversation(question: str | None, messages: list[Message] | None) -> list[Message]:
    """Normalize the caller's input: a question, a conversation, or a conversation + a new question."""
    conversation = [dict(m) for m in (messages or [])]
    if question is not None:
        conversation.append({"role": "user", "content": question})
    last = conversation[-1].get("role") if conversation else None
    if last not in ("user", "tool") or all(m.get("role") != "user" for m in conversation):
        raise ConfigError("the conversation must end with a user message (pass a question)")
    for i, m in enumerate(conversation):
        if m.get("role") == "tool" or (m.get("role") == "assistant" and m.get("tool_calls")):
            m["content"] = m.get("content") or ""  # tool turns (providers/constrained.py)
        if m.get("role") not in ("system", "user", "assistant", "tool") or not isinstance(
            m.get("content"), str
        ):
            raise ConfigError(
                f"messages[{i}] needs a role (system/user/assistant/tool) and string content"
            )
    return conversation
