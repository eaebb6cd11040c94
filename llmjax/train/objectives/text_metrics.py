"""Generation metrics, from the libraries the field reports them with: BLEU and chrF
(sacrebleu, corpus level), ROUGE-L (rouge-score, mean F-measure over examples)."""

from __future__ import annotations

import sacrebleu
from rouge_score import rouge_scorer


def scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    rouge = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = [rouge.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "rouge_l": 100.0 * sum(rouge_l) / max(len(rouge_l), 1)}
