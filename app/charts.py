"""The two Plotly figures: the confidence gauge and the top-k bar chart."""
from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

CONFIDENT = "#2e7d32"
UNSURE = "#ef6c00"


def confidence_gauge(score: float, threshold: float) -> go.Figure:
    """A 0-100 % gauge of the top score, the "not sure" band below ``threshold`` shaded."""
    fig = go.Figure(go.Indicator(
        mode="gauge+number",
        value=round(score * 100, 1),
        number={"suffix": "%"},
        title={"text": "Confidence"},
        gauge={
            "axis": {"range": [0, 100]},
            "bar": {"color": CONFIDENT if score >= threshold else UNSURE},
            "steps": [{"range": [0, threshold * 100], "color": "#fde0c5"}],
            "threshold": {"line": {"color": "black", "width": 3}, "value": threshold * 100},
        },
    ))
    fig.update_layout(height=260, margin={"l": 20, "r": 20, "t": 50, "b": 10})
    return fig


def top_k_bars(top_k: Sequence[tuple[str, float]]) -> go.Figure:
    """Horizontal bars of the top-k probabilities, best on top."""
    labels = [label for label, _ in top_k][::-1]
    scores = [score * 100 for _, score in top_k][::-1]
    fig = go.Figure(go.Bar(x=scores, y=labels, orientation="h",
                           text=[f"{s:.1f}%" for s in scores], textposition="auto"))
    fig.update_layout(title=f"Top {len(top_k)}", xaxis={"range": [0, 100], "title": "probability (%)"},
                      height=80 + 40 * len(top_k), margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return fig
