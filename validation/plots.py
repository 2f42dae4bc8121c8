"""PNG plots for explain and the report: per-layer error against depth, latency against the FPS target.

Both take the JSON forms (an explain JSON, bench.json rows) so the report can draw them from saved files.
"""
from __future__ import annotations

import io

ERROR_COLOR, JUMP_COLOR, TARGET_COLOR = "#1f6fb4", "#c0392b", "#c0392b"


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines; the plot only goes to a file
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def layer_error_png(explain: dict) -> bytes:
    """Relative error of every compared layer against its depth (log scale), the marked layer in red."""
    layers = explain["layers"]
    figure = _figure(9, 3.6)
    axes = figure.add_subplot()
    depths = [layer["depth"] for layer in layers]
    # A log axis cannot show 0 (a bit-exact layer): the floor sits a decade below the smallest error seen.
    floor = min([layer["relative_error"] for layer in layers if layer["relative_error"] > 0] or [1e-6]) / 10
    errors = [max(layer["relative_error"], floor) for layer in layers]
    axes.plot(depths, errors, marker="o", markersize=3, color=ERROR_COLOR, label="relative error |a - r| / |r|")
    rising = [(layer["depth"], layer["increase"]) for layer in layers if layer["increase"] > floor]
    axes.bar([depth for depth, _ in rising], [increase for _, increase in rising], bottom=floor, color=ERROR_COLOR,
             alpha=0.25, label="increase over the layer's input")
    jump = explain.get("jump")
    if jump is not None:
        axes.axvline(jump["depth"], color=JUMP_COLOR, linestyle="--", linewidth=1)
        axes.annotate(f"error enters: {jump['onnx_layer']}", (jump["depth"], max(jump["relative_error"], floor)),
                      xytext=(6, 8), textcoords="offset points", color=JUMP_COLOR, fontsize=8)
    axes.set_yscale("log")
    axes.set_ylim(bottom=floor)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel("layer (graph order)")
    axes.set_ylabel("relative error vs ONNX")
    axes.set_title(f"{explain['artifact']}: error per layer on {explain['samples']} validation samples", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    return _png(figure)


def latency_png(rows: list[dict]) -> bytes:
    """One panel per profile: each artifact's latency (p50, or the mean when no p50 was observed) with
    its p90 when there is one, against the latency the profile's target FPS allows."""
    profiles = list(dict.fromkeys(row["profile"] for row in rows))
    figure = _figure(9, 2.2 + 1.9 * len(profiles))
    for panel, profile in enumerate(profiles, start=1):
        axes = figure.add_subplot(len(profiles), 1, panel)
        profile_rows = [row for row in rows if row["profile"] == profile]
        labels = [f"{row['runtime']} {row['precision']}" for row in profile_rows]
        centers = [_row_latency(row) for row in profile_rows]
        upper = [max((row["latency_ms"].get("p90") or center) - center, 0.0)
                 for row, center in zip(profile_rows, centers)]
        colors = [ERROR_COLOR if row.get("passed") else JUMP_COLOR for row in profile_rows]
        positions = range(len(profile_rows))
        axes.barh(list(positions), centers, xerr=[[0] * len(upper), upper], color=colors, alpha=0.8)
        axes.set_yticks(list(positions), labels, fontsize=8)
        axes.invert_yaxis()
        target_fps = profile_rows[0].get("target_fps") or 30.0
        budget = 1000.0 / target_fps
        axes.axvline(budget, color=TARGET_COLOR, linestyle="--", linewidth=1)
        axes.text(budget, -0.6, f" {target_fps:g} FPS = {budget:.1f} ms", color=TARGET_COLOR, fontsize=8, va="bottom")
        kinds = "/".join(sorted({row["kind"] for row in profile_rows}))
        axes.set_title(f"{profile} ({kinds})", fontsize=9, loc="left")
        axes.set_xlabel("ms per frame" if panel == len(profiles) else "")
        axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    return _png(figure)


def _row_latency(row: dict) -> float:
    """The latency a bench row's FPS comes from: p50 when observed, else the mean."""
    latency = row["latency_ms"]
    return latency["p50"] if latency.get("p50") is not None else latency["mean"]
