"""The data checks as a report a person reads (the prepare step's KFP Markdown artifact)."""

from __future__ import annotations

from components.data.prepare import SPLITS, DatasetInfo


def data_report(info: DatasetInfo) -> str:
    """Counts, class histogram, image sizes, unreadable files and train/test duplicates, in Markdown."""
    shape = "x".join(map(str, info.image_shape))
    fitted = "resized and center-cropped" if info.resized else "native size"
    lines = [f"# Data set `{info.prefix}`", "",
             f"{sum(info.counts.values())} images ({info.source_format}), {len(info.class_names)} classes, "
             f"prepared as {shape} ({fitted}); content hash `{info.content_hash[:16]}`.", "",
             "| class | " + " | ".join(SPLITS) + " |", "|---|" + "---:|" * len(SPLITS)]
    for name in info.class_names:
        lines.append(f"| {name} | " + " | ".join(str(info.class_histogram[s].get(name, 0)) for s in SPLITS) + " |")
    lines.append("| **all** | " + " | ".join(f"**{info.counts[s]}**" for s in SPLITS) + " |")
    lines += ["", "## Image sizes (shorter side, as stored in the raw files)", "", "| pixels | images |", "|---|---:|"]
    lines += [f"| {bucket} | {count} |" for bucket, count in info.size_histogram.items()]
    lines += ["", *_unreadable(info), "", *_duplicates(info), ""]
    return "\n".join(lines)


def _unreadable(info: DatasetInfo) -> list[str]:
    if not info.unreadable:
        return ["## Unreadable files: none"]
    lines = [f"## Unreadable files: {len(info.unreadable)} skipped", "", "| file | reason |", "|---|---|"]
    return lines + [f"| `{u['file']}` | {u['reason']} |" for u in info.unreadable]


def _duplicates(info: DatasetInfo) -> list[str]:
    total = info.duplicates.get("across_splits", 0)
    if not total:
        return ["## Exact duplicates across splits: none"]
    lines = [f"## Exact duplicates across splits: {total} (a train/test leak inflates the test score)", "",
             "| split | file | same pixels as |", "|---|---|---|"]
    lines += [f"| {d['split']} | `{d['file']}` | `{d['same_as']}` |" for d in info.duplicates.get("listed", [])]
    if total > len(info.duplicates.get("listed", [])):
        lines.append(f"\n… and {total - len(info.duplicates['listed'])} more.")
    return lines
