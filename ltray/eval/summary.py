"""The tables a sweep prints and attaches to its parent run (docs/math/data_and_eval.md §9).

A trial's final figures are named `<probe>_<metric>`: `full_all`, `few_many`, `shot10_group_std`, ... (`full` the
full-shot probe, `few` the few-shot probe on `S_b`, `shot<k>` the k-shot probe). The comparison table puts the
headline figures of every configuration side by side; one detailed table per probe follows, each with the metric
names and units of `ltray.eval.metrics` (accuracies in %, Std and class-std as fractions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from ltray.eval.metrics import RunSummary, SummaryRow, format_summary_table

HEADLINE = ("all", "many", "medium", "few", "group_std")
_SHOT = re.compile(r"^shot(\d+)$")


def probe_of(figure: str) -> tuple[str, str]:
    """`shot10_group_std` → ("shot10", "group_std")."""
    probe, _, metric = figure.partition("_")
    return probe, metric


def probe_title(probe: str) -> str:
    if probe == "full":
        return "full-shot linear probe"
    if probe == "few":
        return "few-shot linear probe (S_b)"
    match = _SHOT.match(probe)
    if match:
        return f"{match.group(1)}-shot probe (mean over draws)"
    return probe


def ordered_probes(figures: Iterable[str]) -> list[str]:
    """The probes of these figure names, the main one (full-shot, else few-shot, else the first) first."""
    found = list(dict.fromkeys(probe_of(figure)[0] for figure in figures))
    order = {"full": 0, "few": 1}
    return sorted(found, key=lambda probe: (order.get(probe, 2), probe))


def _probes(rows: Sequence[SummaryRow]) -> list[str]:
    return ordered_probes(figure for _, summary in rows for figure in summary["mean"])


def _restrict(summary: RunSummary, keys: Mapping[str, str]) -> RunSummary:
    """A summary holding only the figures in `keys`, renamed to their values."""
    means: Mapping[str, float] = summary["mean"]
    stds: Mapping[str, float] = summary["std"]
    return {
        "n_runs": summary["n_runs"], "runs": summary["runs"], "missing": summary["missing"],
        "mean": {new: means[old] for old, new in keys.items() if old in means},
        "std": {new: stds[old] for old, new in keys.items() if old in stds},
    }


def probe_rows(rows: Sequence[SummaryRow], probe: str) -> list[SummaryRow]:
    """The rows restricted to one probe's figures, with the probe prefix removed (`full_all` → `all`)."""
    return [
        (name, _restrict(summary, {f: probe_of(f)[1] for f in summary["mean"] if probe_of(f)[0] == probe}))
        for name, summary in rows
    ]


def comparison_rows(rows: Sequence[SummaryRow]) -> list[SummaryRow]:
    """Per configuration: All, Many, Medium, Few and Std of the main probe, plus All of every other probe."""
    probes = _probes(rows)
    keys = {f"{probes[0]}_{metric}": metric for metric in HEADLINE} if probes else {}
    for probe in probes[1:]:
        label = "few-shot" if probe == "few" else probe.replace("shot", "") + "-shot"
        keys[f"{probe}_all"] = f"{label} All (%)"
    return [(name, _restrict(summary, keys)) for name, summary in rows]


def sweep_title(sweep_name: str) -> str:
    """The heading of a sweep's summary, the same for the sweep's own print-out and `ltray report --sweep`."""
    return f"sweep {sweep_name}"


def comparison_markdown(rows: Sequence[SummaryRow], title: str) -> str:
    """The title and the comparison table (headline figures of the main probe, All of the others)."""
    probes = _probes(rows)
    main = probe_title(probes[0]) if probes else "no figures"
    return "\n".join([f"# {title}", "", f"Comparison (main probe: {main}; mean ± std over splits/seeds)", "",
                      format_summary_table(comparison_rows(rows))])


def sweep_markdown(rows: Sequence[SummaryRow], title: str) -> str:
    """The comparison table, then one table per probe; mean ± population std over each configuration's runs."""
    parts = [comparison_markdown(rows, title)]
    for probe in _probes(rows):
        parts += [f"## {probe_title(probe)}", "", format_summary_table(probe_rows(rows, probe))]
    return "\n".join(parts)
