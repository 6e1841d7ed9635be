"""The drill's timeline picture: a PNG drawn with matplotlib, imported only when asked for."""

from __future__ import annotations

from hafs.drill.report import DrillReport, verdict_word
from hafs.errors import HafsError

UNNAMED = "#bbbbbb"  # timeline color: served, but the holder was not named yet


def plot_timeline(report: DrillReport, path: str) -> None:
    """A PNG: one row per VIP, spans colored by the node that answered, gray where the shares
    served but the share list (which names the node) did not come yet, gaps where nothing
    answered, dashed lines at kills (red) and restores (green)."""
    try:
        import matplotlib
    except ImportError:
        raise HafsError(
            "--plot needs matplotlib: python3 -m pip install matplotlib (or drop --plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(report.timeline)
    holders = sorted({s.holder for spans_ in report.timeline.values() for s in spans_ if s.holder})
    palette = plt.get_cmap("tab10")
    colors = {node: palette(i % 10) for i, node in enumerate(holders)}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.6 * max(1, len(names))))
    for row, name in enumerate(names):
        for span in report.timeline[name]:
            if span.served or span.holder is not None:
                ax.broken_barh(
                    [(span.start, span.end - span.start)],
                    (row - 0.35, 0.7),
                    facecolors=colors.get(span.holder or "", UNNAMED),
                )
    for event in report.events:  # labelled in a band above the first VIP
        color = "tab:red" if event.kind == "kill" else "tab:green"
        ax.axvline(event.at, color=color, linestyle="--", linewidth=1)
        label_y = -0.95 if event.kind == "kill" else -0.6
        right = event.at > 0.85 * report.duration  # keep the label inside the axes
        ax.text(
            event.at,
            label_y,
            f"{event.kind} {event.node} " if right else f" {event.kind} {event.node}",
            fontsize=7,
            color=color,
            ha="right" if right else "left",
        )
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.4, -1.2)  # top to bottom, with the band for the labels
    ax.set_xlim(0, max(report.duration, 1e-3))
    ax.set_xlabel("seconds since the drill began (blank: no SMB answer)")
    ax.set_title(f"hafs failover drill: who answers each VIP over SMB ({verdict_word(report)})")
    ax.legend(
        handles=[
            *(Patch(color=colors[n], label=n) for n in holders),
            Patch(color=UNNAMED, label="served, node\nnot named yet"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
