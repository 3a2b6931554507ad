"""What a problem declares about how its runs are compared."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Headline:
    """What a problem's runs are compared by: the default metrics of `compare`, the x axis, and the
    charts (title, tag regexes) of the sweep's TensorBoard layout."""

    metrics: list[str]
    x_label: str
    charts: list[tuple[str, list[str]]] = field(default_factory=list)
