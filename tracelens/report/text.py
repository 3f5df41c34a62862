"""Terminal renderers (rich). They format what the library computed; they compute nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from tracelens.explain import Explanation

MAX_TREE_LINES = 400
MAX_TREE_DEPTH = 60
SEVERITY_STYLE = {
    "critical": "bold white on red",
    "high": "bold red",
    "medium": "yellow",
    "low": "cyan",
    "info": "dim",
}


def _ms(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms:,.1f} ms" if ms < 10_000 else f"{ms / 1000:,.2f} s"


def render_explanation(exp: Explanation, console: Console) -> None:
    from rich.panel import Panel

    data = exp.to_dict()
    root = data["root"]
    console.print(
        Panel.fit(
            f"[bold]{root['service']}[/] {root['name']}   "
            f"[bold]{_ms(exp.duration_ns)}[/]   {data['span_count']} spans   trace {exp.trace_id}",
            title="tracelens explain",
        )
    )
    console.print(_tree(exp))
    console.print(_services_table(data["services"]))
    if exp.warnings:
        console.print("[bold yellow]Anomalies seen while building the tree[/]")
        for warning in exp.warnings:
            console.print(f"  • {warning}", highlight=False)
    render_findings(data["findings"], console)


def _tree(exp: Explanation) -> Any:
    """An indented tree; spans with critical-path self time are marked with ◆ and their share."""
    from rich.text import Text
    from rich.tree import Tree

    tree = exp.tree
    total = max(exp.duration_ns, 1)
    nodes: dict[str, Tree] = {}
    shown = 0
    hidden = 0
    display: Tree | None = None
    for span_id, depth in tree.walk():
        parent = tree.parent(span_id)
        if (
            shown >= MAX_TREE_LINES
            or depth > MAX_TREE_DEPTH
            or (parent is not None and parent not in nodes)
        ):
            hidden += 1
            continue
        label = _span_label(exp, span_id, total)
        if parent is None or display is None:
            display = Tree(label, guide_style="dim")
            nodes[span_id] = display
        else:
            nodes[span_id] = nodes[parent].add(label)
        shown += 1
    if display is None:  # pragma: no cover - a tree always has a root
        return Text("(empty trace)")
    if hidden:
        display.add(Text(f"… {hidden} more spans not shown", style="dim"))
    return display


def _span_label(exp: Explanation, span_id: str, total: int) -> Any:
    from rich.text import Text

    span = exp.tree.spans[span_id]
    self_ns = exp.self_time.get(span_id, 0)
    text = Text()
    text.append("◆ " if self_ns else "  ", style="bold magenta")
    text.append(span.service, style="bold cyan")
    text.append(f" {span.name}")
    text.append(f"  {_ms(span.end_ns - span.start_ns)}", style="green")
    if self_ns:
        text.append(f"  self {_ms(self_ns)} ({self_ns / total:.0%})", style="magenta")
    if span.status_code == 2:
        text.append("  ERROR", style="bold red")
        if span.status_message:
            text.append(f" {span.status_message[:80]}", style="red")
    if exp.tree.is_async(span_id):
        text.append("  async", style="dim")
    return text


def _services_table(services: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    # A table title wraps to the table's width; a narrow table gets a caption-free header.
    table = Table(title="Critical-path self time", title_justify="left", min_width=44)
    table.add_column("service", style="cyan")
    table.add_column("self", justify="right")
    table.add_column("share", justify="right")
    for row in services:
        table.add_row(row["service"], f"{row['self_ms']:,.1f} ms", f"{row['share']:.1%}")
    return table


def render_findings(findings: list[dict[str, Any]], console: Console) -> None:
    if not findings:
        console.print("[green]No findings.[/]")
        return
    console.print(f"[bold]Findings ({len(findings)})[/]")
    for f in findings:
        render_finding(f, console)


def render_finding(f: dict[str, Any], console: Console) -> None:
    style = SEVERITY_STYLE.get(f["severity"], "")
    share = f" ({f['impact_share']:.0%})" if f.get("impact_share") else ""
    console.print(
        f"[{style}]{f['severity'].upper():8}[/] [bold]{f['kind']}[/] {f['service']} "
        f"— {f['summary']}",
        highlight=False,
    )
    console.print(f"         impact {f['impact_ms']:,.1f} ms{share}", highlight=False)
    if f.get("resource"):
        console.print(f"         resource: {f['resource']}", highlight=False)
    ids = f.get("span_ids") or []
    if ids:
        more = f" (+{len(ids) - 8} more)" if len(ids) > 8 else ""
        console.print(f"         evidence: spans {', '.join(ids[:8])}{more}", highlight=False)
    traces = f.get("trace_ids") or []
    if len(traces) > 1:
        more = f" (+{len(traces) - 3} more)" if len(traces) > 3 else ""
        console.print(f"         traces: {', '.join(traces[:3])}{more}", highlight=False)
    console.print(f"         [bold]fix:[/] {f['fix']}", highlight=False)


def render_analysis(result: dict[str, Any], console: Console) -> None:
    """Findings grouped by endpoint (root service + operation), most impactful first."""
    from rich.table import Table

    endpoints = result.get("endpoints", [])
    if endpoints:
        table = Table(title="Endpoints", title_justify="left")
        for col in ("service", "operation", "traces", "p50", "p95", "p99", "tail owned by"):
            table.add_column(
                col, justify="right" if col in ("traces", "p50", "p95", "p99") else "left"
            )
        for ep in endpoints:
            owners = ", ".join(
                f"{a['service']} {a['operation']} {a['share']:.0%}" for a in ep["attribution"][:3]
            )
            table.add_row(
                ep["service"],
                ep["operation"],
                str(ep["traces"]),
                f"{ep['p50_ms']:,.1f} ms",
                f"{ep['p95_ms']:,.1f} ms",
                f"{ep['p99_ms']:,.1f} ms",
                owners or "-",
            )
        console.print(table)
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in result.get("findings", []):
        key = f.get("endpoint") or f"{f['service']} {f['operation']}"
        groups.setdefault(key, []).append(f)
    if not groups:
        console.print("[green]No findings.[/]")
        return
    ordered = sorted(groups.items(), key=lambda kv: -sum(f["impact_ms"] for f in kv[1]))
    for endpoint, findings in ordered:
        console.print(f"\n[bold underline]{endpoint}[/]")
        for f in sorted(findings, key=lambda f: -f["impact_ms"]):
            render_finding(f, console)
