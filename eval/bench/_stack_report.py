"""`bastion bench stack`'s figures turned into what a reader compares: added latency, the
ratios of issue #24's targets, a table for stdout and a PNG chart (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HTTP_PATHS = ("direct", "hop", "bastion", "bastion_limits", "bastion_policy", "bastion_passthrough")
#: Paths measured under load, in the order tables and charts show them.
LOAD_PATHS = ("direct", "hop", "bastion", "bastion_policy", "bastion_passthrough")
#: Bastion's processes: a path's `bastion_total` CPU is theirs. The pass-through proxy idles
#: (its Watch streams open) while the others are measured, and they while it is.
SERVICES = ("policy", "verifier", "graph", "proxy", "passthrough")
PROCESS_ORDER = ("upstream", "hop", *SERVICES, "client")
LABELS = {
    "direct": "(a) upstream, direct",
    "hop": "(b) lean hop, no governance",
    "bastion": "(c) Bastion, full pipeline",
    "bastion_limits": "(d) Bastion, policy with limits",
    "grpc": "(e) bare gRPC round trip",
    "bastion_policy": "(f) Bastion, policy only",
    "bastion_passthrough": "(g) Bastion, pass-through",
}


def _ratio(over: float, under: float) -> float | None:
    return round(over / under, 3) if under else None


def _target(what: str, measured: float | None, target: float, *, at_least: bool = False) -> dict[str, Any]:
    met = None if measured is None else (measured >= target if at_least else measured <= target)
    return {"what": what, "target": target, "measured": measured, "met": met}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """`added`, `ratios` and `targets`: derived from `result["paths"]` and `["processes"]`."""
    paths = result["paths"]
    p50 = {path: paths[path]["c1"]["p50_us"] for path in paths}
    p99 = {path: paths[path]["c1"]["p99_us"] for path in paths}
    hop_added = p50["hop"] - p50["direct"]
    bastion_added = p50["bastion"] - p50["direct"]
    floor = hop_added + p50["grpc"]
    added = {
        "hop_vs_direct_p50_us": round(hop_added, 1),
        "bastion_vs_direct_p50_us": round(bastion_added, 1),
        "bastion_vs_hop_p50_us": round(p50["bastion"] - p50["hop"], 1),
        "bastion_limits_vs_direct_p50_us": round(p50["bastion_limits"] - p50["direct"], 1),
        "limits_stage_p50_us": round(p50["bastion_limits"] - p50["bastion"], 1),
        "bastion_policy_vs_direct_p50_us": round(p50["bastion_policy"] - p50["direct"], 1),
        "verifier_stage_p50_us": round(p50["bastion"] - p50["bastion_policy"], 1),
        "bastion_passthrough_vs_direct_p50_us": round(p50["bastion_passthrough"] - p50["direct"], 1),
        "passthrough_vs_hop_p50_us": round(p50["bastion_passthrough"] - p50["hop"], 1),
        "decisions_stage_p50_us": round(p50["bastion"] - p50["bastion_passthrough"], 1),
        "bastion_vs_direct_p99_us": round(p99["bastion"] - p99["direct"], 1),
        "floor_p50_us": round(floor, 1),
    }
    throughput = _shares(paths, "bastion")
    over_floor = _ratio(bastion_added, floor)
    ratios = {
        "bastion_added_over_floor_p50": over_floor,
        "policy_only_added_over_floor_p50": _ratio(added["bastion_policy_vs_direct_p50_us"], floor),
        "passthrough_added_over_hop_p50": _ratio(added["bastion_passthrough_vs_direct_p50_us"], hop_added),
        "throughput_bastion_over_hop": throughput,
        "throughput_policy_only_over_hop": _shares(paths, "bastion_policy"),
        "throughput_passthrough_over_hop": _shares(paths, "bastion_passthrough"),
    }
    cpu = paths["bastion"]["cpu_us_per_call"]
    cpu_phase = "16" if "16" in cpu else "c1"
    proxy_rss = result["processes"]["proxy"]["rss_mb"]
    targets = [
        _target("added p50 / (lean hop + bare gRPC round trip)", over_floor, 1.0),
        _target("added p99 at concurrency 1, µs", added["bastion_vs_direct_p99_us"], 3000.0),
        _target("throughput with 16 clients / lean hop's", throughput.get("16"), 0.25, at_least=True),
        _target(f"CPU per governed call, all services, µs ({cpu_phase})", cpu[cpu_phase]["bastion_total"], 400.0),
        _target("proxy RSS idle, MB", proxy_rss["idle"], 150.0),
        _target("proxy RSS peak under load, MB", proxy_rss["peak"], 300.0),
    ]
    return {"added": added, "ratios": ratios, "targets": targets}


def _shares(paths: dict[str, Any], path: str) -> dict[str, float | None]:
    """`path`'s throughput under load over the lean hop's, by number of clients."""
    return {
        clients: _ratio(load["calls_per_s"], paths["hop"]["load"][clients]["calls_per_s"])
        for clients, load in paths[path].get("load", {}).items()
    }


def table(result: dict[str, Any]) -> str:
    paths, params = result["paths"], result["params"]
    lines = [
        f"bastion bench stack{' --quick' if params['quick'] else ''}: µs unless said; "
        f"{params['rounds']} round(s), paths alternating",
        "",
        f"{'concurrency 1':34} {'p50':>8} {'p95':>8} {'p99':>8} {'vs direct':>10} {'n':>6}",
    ]
    for path, label in LABELS.items():
        c1 = paths[path]["c1"]
        versus = f"{c1['p50_us'] - paths['direct']['c1']['p50_us']:+10.0f}" if path in HTTP_PATHS else f"{'':>10}"
        lines.append(f"{label:34} {c1['p50_us']:8.0f} {c1['p95_us']:8.0f} {c1['p99_us']:8.0f} {versus} {c1['n']:6}")
    added, ratios = result["added"], result["ratios"]
    over = ratios["bastion_added_over_floor_p50"]
    lines += [
        f"Bastion added p50 {added['bastion_vs_direct_p50_us']:.0f} (vs hop {added['bastion_vs_hop_p50_us']:+.0f}); "
        f"floor = hop {added['hop_vs_direct_p50_us']:.0f} + gRPC {paths['grpc']['c1']['p50_us']:.0f} = "
        f"{added['floor_p50_us']:.0f}; ratio {over if over is not None else '-'}; "
        f"limits stage {added['limits_stage_p50_us']:+.0f}",
        f"policy only (verifier waived): added p50 {added['bastion_policy_vs_direct_p50_us']:.0f}, ratio "
        f"{ratios['policy_only_added_over_floor_p50'] or '-'}; verifier stage {added['verifier_stage_p50_us']:+.0f}",
        f"pass-through (no decision): added p50 {added['bastion_passthrough_vs_direct_p50_us']:.0f}, "
        f"{added['passthrough_vs_hop_p50_us']:+.0f} over the hop; "
        f"decisions stage {added['decisions_stage_p50_us']:+.0f}",
        "",
        f"{'under load':34} {'clients':>8} {'calls/s':>9} {'p50':>8} {'p99':>8} {'errors':>7}",
    ]
    for clients in map(str, params["clients"]):
        for path in LOAD_PATHS:
            load = paths[path]["load"][clients]
            lines.append(
                f"{LABELS[path]:34} {clients:>8} {load['calls_per_s']:9.0f} {load['p50_us']:8.0f} "
                f"{load['p99_us']:8.0f} {load['errors']:7}"
            )
        shares = (
            ("Bastion", "throughput_bastion_over_hop"),
            ("policy only", "throughput_policy_only_over_hop"),
            ("pass-through", "throughput_passthrough_over_hop"),
        )
        for name, key in shares:
            share = ratios[key].get(clients)
            lines.append(f"{f'  {name} / hop throughput':34} {clients:>8} {share * 100 if share else 0:8.1f}%")
    lines += _hostile_lines(result)
    lines += ["", _cpu_table(result), "", _targets_table(result)]
    load = result["machine"]["load_1m"]
    lines.append(
        f"load average (1 min) before {load['before']:.2f}, after {load['after']:.2f} on "
        f"{result['machine']['cpus']} CPUs: figures are indicative on a shared machine"
    )
    return "\n".join(lines)


def _hostile_lines(result: dict[str, Any]) -> list[str]:
    hostile = result["paths"]["bastion"].get("hostile")
    if hostile is None:
        return []
    ordinary = hostile["ordinary"]
    lines = [
        f"{'(c) with a hostile client beside':34} {hostile['clients']:>8} {ordinary['calls_per_s']:9.0f} "
        f"{ordinary['p50_us']:8.0f} {ordinary['p99_us']:8.0f} {ordinary['errors']:7d}"
    ]
    for name, seen in hostile["attacker"].items():
        answers = ", ".join(f"{answer} x{count}" for answer, count in sorted(seen["answers"].items())) or "none"
        lines.append(
            f"  hostile {name:5} argument: {seen['sent']} sent, refused in p50 {seen['p50_us']:.0f} µs, "
            f"max {seen['max_us']:.0f} µs; answers: {answers}"
        )
    return lines


def _cpu_table(result: dict[str, Any]) -> str:
    names = [name for name in PROCESS_ORDER if name in result["processes"]]
    lines = [
        "CPU µs per call, by process " + " ".join(f"{name:>8}" for name in names) + f" {'services':>9}",
    ]
    for path, figures in result["paths"].items():
        for phase, cpu in figures["cpu_us_per_call"].items():
            label = f"{path} {'c=1' if phase == 'c1' else f'{phase} clients'}"
            row = " ".join(f"{cpu.get(name, 0.0):8.0f}" for name in names)
            lines.append(f"{label:28} {row} {cpu['bastion_total']:9.0f}")
    rss = " ".join(
        f"{result['processes'][name]['rss_mb']['idle']:.0f}/{result['processes'][name]['rss_mb']['peak']:.0f}"
        for name in names
    )
    lines.append(f"RSS MB idle/peak ({', '.join(names)}): {rss}")
    settle = result["settle"]
    lines.append(
        f"CPU counted until the processes were quiet after each slice: {settle['seconds']:.1f} s of waiting, "
        f"{settle['not_quiet']} slice(s) not quiet within {result['params']['settle_s']:g} s"
    )
    return "\n".join(lines)


def _targets_table(result: dict[str, Any]) -> str:
    lines = [f"{'issue #24 target':56} {'target':>9} {'measured':>10}"]
    for target in result["targets"]:
        measured = "-" if target["measured"] is None else f"{target['measured']:.3g}"
        verdict = {True: "met", False: "not met", None: "not measured"}[target["met"]]
        lines.append(f"{target['what']:56} {target['target']:9.3g} {measured:>10}  {verdict}")
    return "\n".join(lines)


def chart(result: dict[str, Any], png: Path) -> tuple[Path | None, str | None]:
    """Latency at concurrency 1, throughput under load and CPU per call by process, as one
    PNG; (None, why) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "matplotlib is not installed (pip install matplotlib)"
    paths = result["paths"]
    figure, (latency, load, cpu) = plt.subplots(1, 3, figsize=(17, 5))
    names = list(LABELS)
    x = range(len(names))
    for offset, key in ((-0.2, "p50_us"), (0.2, "p99_us")):
        latency.bar([i + offset for i in x], [paths[p]["c1"][key] for p in names], 0.4, label=key[:3])
    latency.set_xticks(list(x), [LABELS[p].split(" ", 1)[0] for p in names])
    latency.set_title("latency at concurrency 1 (µs)")
    latency.legend()
    clients = [str(n) for n in result["params"]["clients"]]
    width = 0.8 / len(LOAD_PATHS)
    for index, path in enumerate(LOAD_PATHS):
        rates = [paths[path]["load"][n]["calls_per_s"] for n in clients]
        offset = (index - (len(LOAD_PATHS) - 1) / 2) * width
        load.bar([i + offset for i in range(len(clients))], rates, width, label=LABELS[path])
    load.set_xticks(range(len(clients)), [f"{n} clients" for n in clients])
    load.set_title("throughput (calls/s)")
    load.legend(fontsize="small")
    phase = clients[0] if clients else "c1"
    processes = [name for name in PROCESS_ORDER if name in result["processes"]]
    bottoms = [0.0] * len(HTTP_PATHS)
    for name in processes:
        values = [paths[p]["cpu_us_per_call"].get(phase, paths[p]["cpu_us_per_call"]["c1"])[name] for p in HTTP_PATHS]
        cpu.bar(range(len(HTTP_PATHS)), values, 0.6, bottom=bottoms, label=name)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    cpu.set_xticks(range(len(HTTP_PATHS)), [LABELS[p].split(" ", 1)[0] for p in HTTP_PATHS])
    cpu.set_title(f"CPU µs per call by process ({phase} clients; (d) at 1)")
    cpu.legend(fontsize="small")
    figure.suptitle(f"bastion bench stack, {result['at']} (load avg {result['machine']['load_1m']['before']:.1f})")
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return png, None
