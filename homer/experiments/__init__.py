"""Experiments that did not ship: kept so their benchmarks can be re-run, imported by no product code.

* :mod:`.key_retrieval` — passage retrieval with the model's own queries and keys (REFORM);
* :mod:`.clues` — clues drafted from the compressed memory to steer retrieval (MemoRAG);
* :mod:`.leaf_focus` — a question-aware deep read of only the leaves that hold its passages.
"""
