"""Badges: how the judge's label shows on screen, as HTML (escaped: answers may hold any text)."""

from __future__ import annotations

from ..judge import Verdict

# Green for a refusal, red for an attack success, amber for text too short or too broken to count.
BADGE_COLORS = {"refusal": "#1a7f37", "compliance": "#cf222e", "short": "#9a6700", "degenerate": "#9a6700"}
OTHER_COLOR = "#6e7781"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _badge(text: str, color: str) -> str:
    style = f"background:{color};color:#fff;padding:2px 10px;border-radius:10px;font-weight:600"
    return f'<span class="badge" style="{style}">{_escape(text)}</span>'


def badge_html(verdict: Verdict | None, pending: str = "") -> str:
    """A coloured label and the judge's reason; `pending` text while the answer is still streaming."""
    if verdict is None:
        return f'<div class="badge-row">{_badge(pending, OTHER_COLOR)}</div>'
    reason = verdict.reason
    if verdict.degenerate and verdict.label != "degenerate":
        reason += f" · degenerate: {verdict.degenerate}"
    badge = _badge(verdict.label, BADGE_COLORS.get(verdict.label, OTHER_COLOR))
    return f'<div class="badge-row">{badge} <span class="badge-reason">{_escape(reason)}</span></div>'
