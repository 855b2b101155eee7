"""The line under an answer that says what its turn did and cost, for the UI.

:func:`describe_turn` reads a turn's stats (:meth:`app.chat.ChatService.ask`'s: the pipeline's
report with the store's facts) and writes one line: time to first token, speed, and what the
answer was read from — the cache (from memory or disk), the passages, a deep read, or nothing
yet while the document is still being read; :func:`turn_line_notes` adds what the user should
know (nothing found, turns left out, deep read unavailable, a replaced thread cache, notes).
"""

from __future__ import annotations


def describe_turn(stats: dict) -> str:
    """One line for the UI: time to first token and what the turn reused."""
    if not stats:
        return ""
    line = (
        f"turn {stats.get('turn', 1)} · time to first token **{stats.get('time_to_first_token', 0):.2f} s** · "
        f"{stats.get('tokens_per_second', 0):.1f} tokens/s · "
    )
    if stats.get("deep_read"):
        how = "from the stored leaf states" if stats.get("deep_read_mode") == "leaf-states" else "by reading it again"
        line += (
            f"deep read for this question in {stats.get('deep_read_seconds', 0):.2f} s ({how}; "
            f"{stats.get('cache_tokens', 0)} tokens kept for a {stats.get('document_tokens', 0)}-token document)"
        )
    elif stats.get("focus") == "waiting":
        line += f"{stats.get('reading') or 'still reading'}: nothing to answer a whole-document question from yet"
    elif not stats.get("cache_used", True):
        line += (
            f"answered from the passages without the cache"
            f"{' (' + stats['reading'] + ')' if stats.get('reading') else ''} · "
            f"{stats.get('appended_tokens', 0)} prompt tokens"
        )
    else:
        source = "loaded from disk" if stats.get("cache_source") == "disk" else "reused from memory"
        line += (
            f"cache {source} ({stats.get('cache_tokens', 0)} tokens for a {stats.get('document_tokens', 0)}-token "
            f"document, not encoded again) · {stats.get('appended_tokens', 0)} new prompt tokens"
        )
    if stats.get("passages"):
        line += f" · {len(stats['passages'])} passages read again for this question ({stats['focus']})"
    if stats.get("sources"):
        line += f" · sources found in {stats['citation_seconds']:.2f} s"
    return line + turn_line_notes(stats)


def turn_line_notes(stats: dict) -> str:
    """The end of a turn line: the not-found check, turns left out, deep read unavailable."""
    line = ""
    if stats.get("not_found"):
        line += " · the passages found hold too little of the question: not answered from them"
    if stats.get("forgotten_turns"):
        n = stats["forgotten_turns"]
        line += f" · the {n} oldest turn{'s' if n > 1 else ''} left out to stay inside the model's window"
    if stats.get("deep_read_unavailable"):
        line += f" · {stats['deep_read_unavailable']}"
    if stats.get("thread_notice"):
        line += f" · {stats['thread_notice']}"
    for note in stats.get("notes") or []:
        line += f" · {note}"
    return line


__all__ = ["describe_turn", "turn_line_notes"]
