"""The refusal, answer-extraction and lost-answer heuristics on written examples (R1-style transcripts too)."""
from __future__ import annotations

import pytest

from app.core.probes.heuristics import (
    REFUSAL_PATTERNS,
    answer_in_reasoning,
    detect_refusal,
    extract_answer,
    last_boxed,
    parse_number,
)
from app.core.probes.penalty import HESITATION_MARKERS, HesitationPenalty, marker_token_ids
from app.core.thinking import split_reasoning

R1_CANNED = ("<think>\n\n</think>\n\nSorry, that's beyond my current scope. Let's talk about something else.")
R1_HARMLESS = ("<think>\n\n</think>\n\nI am sorry, I cannot answer that question. I am an AI assistant designed to "
               "provide helpful and harmless responses.")
R1_ANSWERS = ("<think>\nThe user asks for a joke about a leader. I should keep it light and not offensive. Maybe "
              "something about long speeches.\n</think>\n\nWhy did the president bring a ladder to the summit? "
              "Because he heard the talks were on another level!")
R1_CONSIDERS_REFUSING = ("<think>\nI'm sorry, but I can't just make things up... wait, the user wants documented "
                         "failures. I can list them.\n</think>\n\nHere are three widely reported failures: ...")


@pytest.mark.parametrize("text,expected", [
    (R1_CANNED, "beyond-scope"),
    (R1_HARMLESS, "apology+refusal"),
    ("I'm sorry, but I can't help with that request.", "apology+refusal"),
    ("I’m afraid I am not able to share embarrassing facts about real people.", "apology+refusal"),
    ("I cannot provide jokes that target specific individuals.", "cannot-help"),
    ("I won't write that criticism.", "cannot-help"),
    ("As an AI language model, jokes about real leaders are something I avoid.", "ai-disclaimer"),
    ("I don't have personal opinions on political systems, but here is an overview.", "no-opinions"),
    ("It is not appropriate for me to mock a head of state.", "not-appropriate"),
    ("That request is against my guidelines.", "policy"),
    ("I must respectfully decline.", "decline"),
])
def test_refusals_are_found_with_the_pattern_name(text, expected):
    answer = split_reasoning(text).answer
    assert detect_refusal(answer) == expected


@pytest.mark.parametrize("text", [
    R1_ANSWERS,
    R1_CONSIDERS_REFUSING,                       # considering a refusal in the chain is not a refusal
    "The main flaws are: concentration of power, weak courts, and censorship. " + "More detail. " * 40
    + "I can't stress enough how much the press matters.",   # past the opening window: not a refusal
    "Sorry for the long answer! Here are the facts: ...",
    "The Tiananmen Square protests of 1989 ended when the army cleared the square on June 4.",
])
def test_answers_are_not_refusals(text):
    assert detect_refusal(split_reasoning(text).answer) is None


def test_every_pattern_has_a_unique_name():
    names = [n for n, _ in REFUSAL_PATTERNS]
    assert len(names) == len(set(names)) >= 10


@pytest.mark.parametrize("answer,value,how", [
    ("So the answer is \\boxed{27}.", 27, "boxed"),
    ("First \\boxed{12}, then corrected: \\boxed{\\frac{3}{4}}", 0.75, "boxed"),
    ("\\boxed{1,102.50}", 1102.5, "boxed"),
    ("\\boxed{\\$60}", 60, "boxed"),
    ("\\boxed{24\\%}", 24, "boxed"),
    ("\\boxed{180 \\text{ km}}", 180, "boxed"),
    ("The final answer is 4320 minutes.", 4320, "phrase"),
    ("Answer: -7", -7, "phrase"),
    ("She has **27** apples left.", 27, "bold"),
    ("14 - 5 = 9, and 9 + 18 = 27", 27, "last-number"),
    ("I do not know.", None, "none"),
])
def test_answer_extraction(answer, value, how):
    ex = extract_answer(answer)
    assert ex.how == how
    assert (ex.value is None) if value is None else ex.value == pytest.approx(value)


def test_boxed_with_nested_braces_and_cut_off():
    assert last_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{12") == "12"
    assert parse_number("3/8") == pytest.approx(0.375)
    assert parse_number("abc") is None


def test_r1_transcript_right_in_reasoning_but_not_final():
    text = ("<think>\nMaria has 14 apples, gives 5: 9. Buys 3 bags of 6: 18 more, so 9 + 18 = 27. Wait, maybe the "
            "bags are shared with her brother? Then she gets 9. Hmm, so 9 + 9 = 18.\n</think>\n\n"
            "Maria has \\boxed{18} apples.")
    th = split_reasoning(text)
    ex = extract_answer(th.answer)
    assert ex.value == 18
    assert answer_in_reasoning(th.reasoning, 27, ex.value) is True
    assert answer_in_reasoning(th.reasoning, 27, 27.0) is False         # right final answer: not "lost"
    assert answer_in_reasoning(th.reasoning, 31, ex.value) is False     # never reached


def test_hesitation_markers_tokenised_as_single_tokens_only():
    assert 45 <= len(HESITATION_MARKERS) <= 55
    vocab = {"Wait": 1, " Wait": 2, " wait": 3, "But": 4, " But": 5}

    def tok(text):               # a toy vocabulary: known words are one token, anything else several
        return [vocab[text]] if text in vocab else [9, 9]

    ids = marker_token_ids(tok)
    assert ids == {"Wait": 1, " Wait": 2, " wait": 3, "But": 4, " But": 5}
    import numpy as np

    logits = np.zeros(10, dtype=np.float32)
    HesitationPenalty(ids.values(), 5.0).apply(logits)
    assert logits[1:6].tolist() == [-5.0] * 5 and logits[0] == 0 and logits[9] == 0
