"""The short human summary printed at the end of an export."""
from __future__ import annotations

from core.manifest import conversion_of, size_of

KEPT_MARK = "kept"  # beside the gate of an artifact an earlier export made and this one measured again


def summary_lines(report) -> list[str]:
    header = f"{'artifact':<34} {'runtime':<7} {'prec':<5} {'size':>9} {'cosine':>9} {'top-1':>6} {'max|Δ|':>9}  gate"
    lines = [f"\nExported to {report.model_dir}", header, "-" * len(header)]
    for record in report.records:
        parity = record.parity
        size_mb = sum(size_of(path) for path in record.artifact.files) / 1e6
        top1 = "-" if parity.top1_agreement is None else f"{parity.top1_agreement:.3f}"
        lines.append(
            f"{record.artifact.path.name:<34} {record.artifact.runtime:<7} {record.artifact.precision:<5} "
            f"{size_mb:>7.2f}MB {parity.cosine:>9.6f} {top1:>6} {parity.max_abs:>9.2e}  "
            + ("pass" if parity.passed else "FAIL") + (f"  {KEPT_MARK}" if _kept(record) else "")
        )
    samples = report.records[0].parity.samples if report.records else 0
    lines.append(f"parity on {samples} held-out validation samples; manifest: {report.manifest_path}")
    lines += _least_agreement_note(report.records)
    return lines + _earlier_export_lines(report)


def _kept(record) -> bool:
    conversion = conversion_of(record.artifact.details)
    return conversion is not None and conversion.kept


def _earlier_export_lines(report) -> list[str]:
    """What this export did with what earlier ones left in the folder: kept, removed, or still failed."""
    kept = [record.artifact.path.name for record in report.records if _kept(record)]
    lines = []
    if kept:
        lines.append(f"{KEPT_MARK}: {', '.join(kept)} from an earlier export (their targets were not asked for this "
                     "time); their parity was measured again by this export")
    for leftover in report.removed:
        done = "removed" if leftover.paths else "no longer listed"
        lines.append(f"{done}: {leftover.what} ({leftover.why})")
    for failure in report.earlier_failures:
        lines.append(f"still failed from an earlier export: {failure['target']} ({failure['error'].splitlines()[0]}); "
                     f"export --target {failure['target']} to try it again")
    return lines


def _least_agreement_note(records) -> list[str]:
    """How far the lowest top-1 agreement may be from what the next photos give: a gate read on 50 samples
    passes 0.960 whose 95 % interval reaches down to 0.865."""
    measured = [r for r in records if r.parity.top1_interval is not None and r.parity.top1_agreement < 1.0]
    if not measured:
        return []
    least = min(measured, key=lambda r: r.parity.top1_agreement)
    low, high = least.parity.top1_interval
    return [f"top-1 agreement {least.parity.top1_agreement:.3f} of {least.artifact.path.name} on "
            f"{least.parity.samples} samples: 95 % interval {low:.3f}-{high:.3f}; more --val photos narrow it"]
