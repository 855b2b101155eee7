"""Where a needle is lost: one needle document built question-aware (or document-first),
printing at every layer of every block that holds the needle's number the rank of its best
token among the node's context tokens (percentile, by that layer's significance score with
the build's units), which layers the build scores with, and whether the number survived the
block's pruning. This is how the 32k losses were traced to single noisy layers (README).

    python -m benchmarks.trace_needle --tokens 32000 --sample 0
    python -m benchmarks.trace_needle --tokens 16000 --sample 3 --document-first --score-layers 1
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.evaluation.haystack import answer_token_indices, needle_document
from homer import DocumentPrompt, HomerConfig, build_cache
from homer.document import document_prompt_ids, tokenize_document
from homer.models import load_model
from homer.significance import unit_scores
from homer.spans import span_ids
from homer.tree import _Builder


def tracing_builder(needle: torch.Tensor, rows: list[dict]):
    class Tracing(_Builder):
        def run_block(self, node, layers, target):
            self._trace = {
                "layers": [layers[0], layers[-1]],
                "tokens": len(node),
                "target": target,
                "rank_by_layer": {},
            }
            super().run_block(node, layers, target)
            trace = self._trace
            if trace["rank_by_layer"]:
                trace["scored_layers"] = list(layers[-self.score_layers :]) if len(node) < trace["tokens"] else []
                trace["kept"] = bool(torch.isin(needle, node.sources).all())
                rows.append(trace)
                print(json.dumps(trace), flush=True)

        def note_scores(self, node, layer, layers, q, k, target):
            p, s = self.plan.prefix_len, self.plan.suffix_len
            sources = node.sources[p : len(node) - s]
            mask = torch.isin(sources, needle)
            if mask.any():
                scores = self.layer_scores(node, layer, q, k, torch.Generator().manual_seed(0))[p : len(node) - s]
                if self.units is not None:
                    scores = unit_scores(scores, self.units[sources])
                rank = float((scores < scores[mask].max()).float().mean())
                self._trace["rank_by_layer"][layer] = round(rank, 3)
            super().note_scores(node, layer, layers, q, k, target)

    def make(*args, fingerprint: str, config: HomerConfig) -> _Builder:
        return Tracing(*args)

    return make


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=32_000)
    parser.add_argument("--sample", type=int, default=0, help="the retrieval benchmark's sample index")
    parser.add_argument("--document-first", action="store_true", help="no question in the suffix (the app's)")
    parser.add_argument("--score-layers", type=int, default=None)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model)
    item = needle_document(tokenizer, args.tokens, (args.sample % 10) / 10 + 0.05, seed=1000 + args.sample)
    needle = torch.tensor(answer_token_indices(tokenizer, item.document, item.answer))
    config = HomerConfig() if args.score_layers is None else HomerConfig(score_layers=args.score_layers)
    rows: list[dict] = []
    # the layout build_document_cache uses, with a tracing builder
    context_ids, offsets = tokenize_document(tokenizer, item.document)
    prefix_ids, suffix_ids = document_prompt_ids(
        tokenizer, DocumentPrompt(style="chat"), None if args.document_first else item.question
    )
    units = span_ids(item.document, offsets, config.span) if config.span != "token" else None
    cache = build_cache(
        model,
        prefix_ids,
        context_ids,
        suffix_ids,
        config,
        context_units=units,
        _make_builder=tracing_builder(needle, rows),
    )
    print(
        json.dumps(
            {
                "needle": item.answer,
                "depth": item.depth,
                "kept_in_cache": bool(torch.isin(needle, cache.sources).all()),
                "blocks_holding_it": len(rows),
            }
        )
    )


if __name__ == "__main__":
    main()
