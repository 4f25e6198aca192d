"""Ranked answers as the core returns them: ids, scores, catalog fields and reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Results:
    """Ranked results: external ids, scores, internal indexes and catalog fields."""

    ids: list[str]
    scores: list[float]
    indexes: np.ndarray = field(compare=False)
    fields: dict[str, list[Any]] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    reason: str | None = None  # why these items: cf, popular, basket, rating
    because: list[list[dict[str, Any]]] | None = None  # per item: history items that count
    reasons: list[str] | None = None  # per item, where items differ (new items: content)

    def __len__(self) -> int:
        return len(self.ids)

    def records(self, id_key: str = "item_id") -> list[dict[str, Any]]:
        out = []
        for i, (ext, score) in enumerate(zip(self.ids, self.scores, strict=True)):
            rec: dict[str, Any] = {id_key: ext, "score": score}
            for name, values in self.fields.items():
                rec[name] = values[i]
            if self.reasons is not None:
                rec["reason"] = self.reasons[i]
            elif self.reason is not None:
                rec["reason"] = self.reason
            if self.because is not None:
                rec["because"] = self.because[i]
            out.append(rec)
        return out
