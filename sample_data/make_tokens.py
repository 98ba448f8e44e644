"""Recreate the token log-probability samples of `nll tokens` next to this script.

Run ``python sample_data/make_tokens.py`` to (re)write:

* ``tokens_trigram.csv``: one row per token (pandas ``to_csv`` with its index): ``doc_id``,
  ``source``, ``position``, ``token``, ``logprob``. Twelve documents: the ten sentences of
  Lincoln's Gettysburg Address (1863) and two of his Second Inaugural Address (1865), both in the
  public domain, scored by a character trigram model fitted to the opening of the Declaration of
  Independence (1776), the Preamble of the Constitution and the First Amendment (public domain).
* ``tokens_bigram.csv``: the same tokens scored by a character bigram model (the "base checkpoint").
* ``tokens_trigram_chat.jsonl``: the trigram model's tokens as OpenAI chat completion responses,
  one per document (``choices[0].logprobs.content[]`` with ``token``, ``logprob``, ``bytes``).

A token's log-probability is the sum of its characters' (the chain rule), each character
predicted from the previous n - 1 characters of its document (orders 1..n interpolated, each
add-k smoothed with k = 0.1 over every character of the three texts). Tokens are words with their
leading space; words longer than six characters are cut at a random place
(numpy.random.default_rng(14)), as subword tokenizers do.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
SEED = 14
SMOOTHING = 0.1
LAMBDAS = {2: (0.8, 0.2), 3: (0.6, 0.3, 0.1)}

TRAINING = (
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands "
    "which have connected them with another, and to assume among the powers of the earth, the separate and "
    "equal station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the "
    "opinions of mankind requires that they should declare the causes which impel them to the separation. "
    "We hold these truths to be self-evident, that all men are created equal, that they are endowed by their "
    "Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness. "
    "That to secure these rights, Governments are instituted among Men, deriving their just powers from the "
    "consent of the governed, That whenever any Form of Government becomes destructive of these ends, it is "
    "the Right of the People to alter or to abolish it, and to institute new Government, laying its "
    "foundation on such principles and organizing its powers in such form, as to them shall seem most likely "
    "to effect their Safety and Happiness. Prudence, indeed, will dictate that Governments long established "
    "should not be changed for light and transient causes; and accordingly all experience hath shewn, that "
    "mankind are more disposed to suffer, while evils are sufferable, than to right themselves by abolishing "
    "the forms to which they are accustomed. But when a long train of abuses and usurpations, pursuing "
    "invariably the same Object evinces a design to reduce them under absolute Despotism, it is their right, "
    "it is their duty, to throw off such Government, and to provide new Guards for their future security. "
    "We the People of the United States, in Order to form a more perfect Union, establish Justice, insure "
    "domestic Tranquility, provide for the common defence, promote the general Welfare, and secure the "
    "Blessings of Liberty to ourselves and our Posterity, do ordain and establish this Constitution for the "
    "United States of America. Congress shall make no law respecting an establishment of religion, or "
    "prohibiting the free exercise thereof; or abridging the freedom of speech, or of the press; or the right "
    "of the people peaceably to assemble, and to petition the Government for a redress of grievances."
)

GETTYSBURG = [
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal.",
    "Now we are engaged in a great civil war, testing whether that nation, or any nation so conceived and so "
    "dedicated, can long endure.",
    "We are met on a great battle-field of that war.",
    "We have come to dedicate a portion of that field, as a final resting place for those who here gave their "
    "lives that that nation might live.",
    "It is altogether fitting and proper that we should do this.",
    "But, in a larger sense, we can not dedicate -- we can not consecrate -- we can not hallow -- this ground.",
    "The brave men, living and dead, who struggled here, have consecrated it, far above our poor power to add "
    "or detract.",
    "The world will little note, nor long remember what we say here, but it can never forget what they did "
    "here.",
    "It is for us the living, rather, to be dedicated here to the unfinished work which they who fought here "
    "have thus far so nobly advanced.",
    "It is rather for us to be here dedicated to the great task remaining before us -- that from these honored "
    "dead we take increased devotion to that cause for which they gave the last full measure of devotion -- "
    "that we here highly resolve that these dead shall not have died in vain -- that this nation, under God, "
    "shall have a new birth of freedom -- and that government of the people, by the people, for the people, "
    "shall not perish from the earth.",
]

SECOND_INAUGURAL = [
    "Fondly do we hope, fervently do we pray, that this mighty scourge of war may speedily pass away.",
    "With malice toward none, with charity for all, with firmness in the right as God gives us to see the "
    "right, let us strive on to finish the work we are in, to bind up the nation's wounds, to care for him who "
    "shall have borne the battle and for his widow and his orphan, to do all which may achieve and cherish a "
    "just and lasting peace among ourselves and with all nations.",
]


class CharModel:
    """P(c | previous n - 1 characters): orders 1..n, each add-k smoothed over a fixed alphabet, mixed
    with the weights LAMBDAS[n] (highest order first)."""

    def __init__(self, text: str, order: int, alphabet: set[str]):
        self.order, self.size = order, len(alphabet)
        padded = "^" * (order - 1) + text
        ends = range(order - 1, len(padded))
        self.counts = Counter(padded[i - k + 1:i + 1] for k in range(1, order + 1) for i in ends)
        self.context = Counter(padded[i - k + 1:i] for k in range(1, order + 1) for i in ends)

    def logprob(self, context: str, char: str) -> float:
        total = 0.0
        for k, weight in zip(range(self.order, 0, -1), LAMBDAS[self.order]):
            recent = context[len(context) - k + 1:] if k > 1 else ""
            total += weight * (self.counts[recent + char] + SMOOTHING) / (self.context[recent] + SMOOTHING * self.size)
        return math.log(total)


def tokenize(text: str, rng: np.random.Generator) -> list[str]:
    tokens = []
    for word in re.findall(r"\s*\S+", text):
        while len(word.strip()) > 6:
            cut = int(rng.integers(3, len(word) - 2))
            tokens.append(word[:cut])
            word = word[cut:]
        tokens.append(word)
    return tokens


def score(model: CharModel, tokens: list[str]) -> list[float]:
    context, out = "^" * (model.order - 1), []
    for token in tokens:
        total = 0.0
        for char in token:
            total += model.logprob(context, char)
            context += char
        out.append(total)
    return out


def main() -> None:
    documents = [("gettysburg", s) for s in GETTYSBURG] + [("second_inaugural", s) for s in SECOND_INAUGURAL]
    alphabet = set(TRAINING + "".join(s for _, s in documents)) | {"^"}
    rng = np.random.default_rng(SEED)
    tokenized = [tokenize(text, rng) for _, text in documents]
    for order, name in ((3, "trigram"), (2, "bigram")):
        model = CharModel(TRAINING, order, alphabet)
        rows = []
        for number, ((source, _), tokens) in enumerate(zip(documents, tokenized), 1):
            for position, (token, logprob) in enumerate(zip(tokens, score(model, tokens))):
                rows.append({"doc_id": f"{source}-{number:02d}", "source": source, "position": position,
                             "token": token, "logprob": round(logprob, 10)})
        frame = pd.DataFrame(rows)
        frame.to_csv(HERE / f"tokens_{name}.csv")
        if name == "trigram":
            with open(HERE / "tokens_trigram_chat.jsonl", "w", encoding="utf-8") as out:
                for doc_id, part in frame.groupby("doc_id", sort=False):
                    content = [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                               for t, lp in zip(part["token"], part["logprob"])]
                    response = {"id": doc_id, "object": "chat.completion", "model": "char-trigram",
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": "".join(part["token"])},
                                             "logprobs": {"content": content}}]}
                    out.write(json.dumps(response) + "\n")


if __name__ == "__main__":
    main()
