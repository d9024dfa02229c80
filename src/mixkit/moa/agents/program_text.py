"""What the program agent (program.py) says and reads: its prompts, the program in a model's
reply (`extract_program`, completed by `complete_program`), replies plainly no program
(`program_problem`), and the answer in a program's output (`printed_answer`). Pure functions.
"""

from __future__ import annotations

import ast
import re

from mixkit.moa.agents.providers.base import Message

PROGRAM_SYSTEM = (
    "You solve tasks by writing Python. Reply with one complete Python 3 program in a ```python "
    "code block. The program computes the answer and prints only the final answer (the value "
    "alone, no words) with print(). It reads no input: write the task's data into the program."
)
# The task goes in quotes, as data: asked plainly ("Task: ... Write a program"), the 0.5B coder
# followed a task's own "end your reply with 'Answer: X'" and answered instead of writing a program
# (chain_sum, 8 items: 14 of 15 programs printed nothing; quoted, 6 items: 6 of 6 ran and were right)
ASK = (
    "Write a complete Python program that computes the answer to the task below and prints only "
    'the final answer.\n\nTask:\n"""\n{task}\n"""\n\nReply with the program in a ```python code block.'
)
RETRY = (
    "The program failed ({status}):\n{error}\n\nFix it. Reply with the complete corrected "
    "program in a ```python code block; it must print only the final answer."
)

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_ANSWER_PREFIX = re.compile(r"^(?:final\s+)?answer\s*(?:is)?\s*[:=]\s*", re.IGNORECASE)


def program_messages(conversation: list[Message]) -> list[Message]:
    """The conversation as a request for a program: PROGRAM_SYSTEM (+ the caller's system text)
    first, the latest user message quoted inside ASK."""
    system = [m["content"] for m in conversation if m["role"] == "system"]
    turns = [dict(m) for m in conversation if m["role"] != "system"]
    users = [i for i, m in enumerate(turns) if m["role"] == "user"]
    if users:
        last = turns[users[-1]]
        last["content"] = ASK.format(task=last["content"].strip())
    return [{"role": "system", "content": "\n\n".join([PROGRAM_SYSTEM, *system])}, *turns]


def extract_program(reply: str) -> str:
    """The program in a model's reply: the longest ```python block (else the longest unlabelled
    one; a block cut by max_tokens counts), else the reply itself."""
    blocks = _FENCE.findall(reply)
    for wanted in (("python", "py", "python3"), ("",)):
        found = [body for lang, body in blocks if lang.lower() in wanted and body.strip()]
        if found:
            return max(found, key=len).strip("\n")
    return reply.strip()


def _prints(tree: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        for n in ast.walk(tree)
    )


def complete_program(code: str) -> str:
    """Fix what small models often leave out, so that a right program prints its answer: a last
    bare expression is printed (as in a REPL); a program that prints nothing prints its last
    assigned name, or calls and prints its last function when it only defines functions. Code
    that does not parse is returned as it is (the sandbox reports the SyntaxError)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    body = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    if not body:
        return code
    last, prints = body[-1], _prints(tree)
    if isinstance(last, ast.Expr) and not (
        isinstance(last.value, ast.Call) and (prints or _is_print(last.value))
    ):
        lines = code.splitlines()
        start, end = last.lineno - 1, (last.end_lineno or last.lineno)
        expr = "\n".join(lines[start:end])
        return "\n".join([*lines[:start], f"print({expr.strip()})", *lines[end:]])
    if prints:
        return code
    if isinstance(last, ast.Assign) and len(last.targets) == 1:
        target = last.targets[0]
        if isinstance(target, ast.Name):
            return f"{code.rstrip()}\nprint({target.id})\n"
    functions = [s for s in body if isinstance(s, ast.FunctionDef)]
    if functions and len(functions) == len(body) and not functions[-1].args.args:
        return f"{code.rstrip()}\nprint({functions[-1].name}())\n"
    return code


def _is_print(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == "print"


def printed_answer(stdout: str) -> str:
    """The answer a program printed: its last non-empty line, without an 'Answer:' prefix,
    numbers in their plain form (-7.0 -> -7, 1e3 -> 1000)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return ""
    text = _ANSWER_PREFIX.sub("", lines[-1]).strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if value.is_integer() and abs(value) < 1e15 and "inf" not in text.lower():
        return str(int(value))
    return text


def program_problem(reply: str, code: str) -> str | None:
    """Why `code` is plainly no program worth running, or None: only an answer ('Answer: 14'
    parses as an annotation), fenced or not; a reply with no code block that is no Python; a
    program that calls input() (programs get no input)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        tree = None
    answer_only = tree is not None and all(
        isinstance(s, ast.AnnAssign)
        and s.value is None
        or isinstance(s, ast.Expr)
        and isinstance(s.value, (ast.Constant, ast.Name))
        for s in tree.body
    )
    if answer_only or (tree is None and "```" not in reply):
        return (
            "your reply was an answer, not a program. Reply with a Python program that "
            "computes the answer and prints it."
        )
    if tree is not None and any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "input"
        for n in ast.walk(tree)
    ):
        return "the program calls input(), but it gets no input: write the task's data into it."
    return None
