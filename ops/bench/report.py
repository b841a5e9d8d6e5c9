"""The shape of every figure in the bench's JSON.

An entry is ``{"vigil": x, "unit": ..., "reference": {name: y}, "ratio": {name: x / y},
"goal": {name: "..."}, "met": bool, "details": {...}}``: each ratio is taken against a
reference measured in the same run (or, where the issue sets an absolute goal, against that
goal), and ``met`` says whether every goal holds. A figure that could not be taken is
``{"skipped": "<why>"}`` instead.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

AT_LEAST = (">=", operator.ge)
AT_MOST = ("<=", operator.le)


def entry(
    vigil: float,
    unit: str,
    references: Mapping[str, float],
    goals: Mapping[str, tuple[tuple[str, Callable[[float, float], bool]], float] | None],
    details: Mapping[str, Any] | None = None,
    ratios: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """``goals`` maps a reference name to ((op, test), threshold) on its ratio, or to None
    where the issue asks only to report the ratio; a reference absent from it is context. ``ratios`` overrides vigil / reference where the figure
    is not a plain quotient."""
    ratio = {name: round(vigil / ref, 4) for name, ref in references.items()}
    ratio.update({name: round(r, 4) for name, r in (ratios or {}).items()})
    goal: dict[str, str] = {}
    met = True
    for name, rule in goals.items():
        if rule is None:
            goal[name] = "report the ratio"
            continue
        (op, test), threshold = rule
        goal[name] = f"{op} {threshold:g}"
        met = met and bool(test(ratio[name], threshold))
    return {
        "vigil": round(vigil, 4),
        "unit": unit,
        "reference": {name: round(ref, 4) for name, ref in references.items()},
        "ratio": ratio,
        "goal": goal,
        "met": met,
        "details": dict(details or {}),
    }


def skipped(reason: str) -> dict[str, Any]:
    return {"skipped": reason}
