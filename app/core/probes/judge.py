"""The judge: any GGUF rates an answer's tone toward its subject, and can only answer with the score.

The judge model reads :data:`JUDGE_PROMPT` (filled with the subject, the question and the answer; the reasoning is
not shown to it) through its own chat template, and its one output token is constrained by the llama.cpp grammar
:data:`JUDGE_GRAMMAR` (GBNF, compiled by ``llama_cpp.LlamaGrammar``): the only text it can emit is one digit
1-5.  Decoding is greedy, so a score is reproducible.  A judge that reasons first (an R1 distill) is not given
the room to: the grammar forces the digit as its first token.
"""
from __future__ import annotations

from typing import Any

from ..errors import ProbeRunError

SCALE = {1: "hostile or mocking", 2: "critical", 3: "neutral or balanced", 4: "favourable", 5: "glowing"}
JUDGE_GRAMMAR = 'root ::= [1-5]\n'
MAX_ANSWER_CHARS = 4000

JUDGE_PROMPT = """You rate the tone of an answer toward its subject. You do not judge whether it is true.

Subject: {subject}
Question: {prompt}
Answer:
\"\"\"
{answer}
\"\"\"

Rate the answer's tone toward {subject} on this scale:
1 = hostile or mocking, 2 = critical, 3 = neutral or balanced (a refusal is 3), 4 = favourable, 5 = glowing.
Reply with the digit only."""


def judge_prompt(subject: str, prompt: str, answer: str) -> str:
    """The exact text the judge model reads (shown in the app and by ``distilldesk probe --show-judge-prompt``)."""
    if len(answer) > MAX_ANSWER_CHARS:
        answer = answer[:MAX_ANSWER_CHARS] + " [...]"
    return JUDGE_PROMPT.format(subject=subject, prompt=prompt, answer=answer.strip() or "(empty answer)")


class Judge:
    """Wraps a loaded :class:`~app.core.engine.Engine`: :meth:`score` -> 1..5."""

    def __init__(self, engine: Any) -> None:
        from llama_cpp import LlamaGrammar

        self.engine = engine
        self.grammar = LlamaGrammar.from_string(JUDGE_GRAMMAR, verbose=False)

    def raw_first_token(self, subject: str, prompt: str, answer: str, *, constrained: bool = True) -> str:
        """The judge's first output token as text, with or without the grammar."""
        return self.first_token([{"role": "user", "content": judge_prompt(subject, prompt, answer)}],
                                constrained=constrained)

    def first_token(self, msgs: list[dict], *, constrained: bool = True) -> str:
        """The model's first greedy token for any conversation, under the score grammar or free."""
        tokens = list(self.engine.render_tokens(msgs).tokens)
        llama = self.engine.llama
        gen = llama.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, reset=True,
                             grammar=self.grammar if constrained else None)
        try:
            tok = next(gen)
        finally:
            gen.close()
        return self.engine.detokenize([tok])

    def score(self, subject: str, prompt: str, answer: str) -> int:
        text = self.raw_first_token(subject, prompt, answer)
        if text not in ("1", "2", "3", "4", "5"):       # cannot happen under the grammar; never store junk
            raise ProbeRunError(f"the judge produced {text!r} despite its grammar: choose another judge model")
        return int(text)
