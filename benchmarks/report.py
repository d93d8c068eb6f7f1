"""Renders one run's results as the markdown tables ``benchmarks/run.py`` prints."""

from __future__ import annotations

from typing import Any


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _per_call(r: dict[str, Any]) -> float:
    return (r["caller_cpu_s"] + r["worker_cpu_s"]) / r["calls"] * 1000


def cpu_rows(results: list[dict[str, Any]]) -> list[str]:
    by_side: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_side.setdefault(r["side"], []).append(r)
    plain = min(by_side["plain"], key=_per_call)
    ours = min(by_side["procstatus"], key=_per_call)
    ratio = _per_call(ours) / _per_call(plain)
    rounds = sorted({r["round"] for r in results})
    per_round = []
    for n in rounds:
        p = next(r for r in by_side["plain"] if r["round"] == n)
        o = next(r for r in by_side["procstatus"] if r["round"] == n)
        per_round.append(f"{_per_call(o) / _per_call(p):.2f}")
    calls = ours["calls"]

    def ms(r: dict[str, Any], key: str) -> float:
        return float(r[key]) / r["calls"] * 1000

    rows = [
        f"| 1 | CPU per no-op process, caller + worker tree (best of {len(rounds)} × {calls} "
        f"calls; per round: {', '.join(per_round)}×) | {_per_call(ours):.2f} ms | "
        f"{_per_call(plain):.2f} ms | **{ratio:.2f}×** | ≤ 1.15× | {_yes(ratio <= 1.15)} |",
        f"| 1 | … caller (the call: checks, schedule write, publish) | "
        f"{ms(ours, 'caller_cpu_s'):.2f} ms | {ms(plain, 'caller_cpu_s'):.2f} ms | "
        f"{ms(ours, 'caller_cpu_s') / ms(plain, 'caller_cpu_s'):.2f}× | | |",
        f"| 1 | … worker main + pool processes | {ms(ours, 'worker_cpu_s'):.2f} ms | "
        f"{ms(plain, 'worker_cpu_s'):.2f} ms | "
        f"{ms(ours, 'worker_cpu_s') / ms(plain, 'worker_cpu_s'):.2f}× | | |",
        f"| 1 | wall throughput, calls sent and done, same batches | "
        f"{calls / ours['wall_s']:.0f} /s | {calls / plain['wall_s']:.0f} /s | "
        f"{plain['wall_s'] / ours['wall_s']:.2f}× | | |",
        f"| 1 | MongoDB-protocol server CPU per process (busy "
        f"{ours['server_cpu_s'] / ours['wall_s']:.0%} of the wall time; Redis: "
        f"{ms(ours, 'redis_cpu_s'):.2f} vs "
        f"{ms(plain, 'redis_cpu_s'):.2f} ms) | {ms(ours, 'server_cpu_s'):.2f} ms | "
        f"{ms(plain, 'server_cpu_s'):.2f} ms | | | |",
    ]
    if "minimal" in by_side:
        floor = min(by_side["minimal"], key=_per_call)
        ratio_floor = _per_call(floor) / _per_call(plain)
        rows.append(
            f"| 1 | floor: the same 3 writes by hand, no library (caller "
            f"{ms(floor, 'caller_cpu_s'):.2f}, worker {ms(floor, 'worker_cpu_s'):.2f} ms) | "
            f"{_per_call(floor):.2f} ms | "
            f"{_per_call(plain):.2f} ms | {ratio_floor:.2f}× | | |"
        )
        rows.append(
            f"| 1 | procstatus vs that floor: what the library itself adds | "
            f"{_per_call(ours):.2f} ms | {_per_call(floor):.2f} ms | "
            f"{_per_call(ours) / _per_call(floor):.2f}× | | |"
        )
    if "plain_paced" in by_side:
        paced = min(by_side["plain_paced"], key=_per_call)
        rows.append(
            f"| 1 | plain, paced: 5 ms asleep after each call (caller "
            f"{ms(paced, 'caller_cpu_s'):.2f}, worker {ms(paced, 'worker_cpu_s'):.2f} ms): the "
            f"CPU cost of waiting alone | {_per_call(paced):.2f} ms | {_per_call(plain):.2f} ms"
            f" | {_per_call(paced) / _per_call(plain):.2f}× | | |"
        )
    return rows


def command_rows(data: dict[str, Any]) -> list[str]:
    expected = {"plain process": 3, "10 steps": 13, "failure": 3}
    rows = []
    for name, r in data["scenarios"].items():
        target = expected.get(name)
        met = "" if target is None else _yes(r["total"] == target)
        rows.append(
            f"| 2 | commands: {name} ({r['status']}) | {r['total']} (caller {r['caller']}, "
            f"workers {r['worker']}) | | | {target if target is not None else ''} | {met} |"
        )
    for r in data["parents"]:
        breakdown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["child_run_breakdown"].items()))
        rows.append(
            f"| 2 | commands: parent with {r['children']} children ({r['status']}) | "
            f"{r['per_child']:.2f} per child (call 1 + run: {breakdown}); join "
            f"{r['join']}; parent's own run {r['parent_run']} | | | | |"
        )
    return rows


def join_rows(data: list[dict[str, Any]]) -> list[str]:
    small, big = data[0], data[-1]
    # At most 6 per child, whatever the number of children: the call, the claim, the end,
    # the parent's document and state, and (once the parent waits) "any child processing?".
    # Fewer when children end before the parent waits, so the mean varies a little by run.
    bound = 6.0
    constant = big["per_child"] <= bound and small["per_child"] <= bound
    rows = [
        f"| 3 | commands per child: {big['children']} vs {small['children']} children | "
        f"{big['per_child']:.2f} | {small['per_child']:.2f} | "
        f"{big['per_child'] / small['per_child']:.2f}× | constant (≤ 6 whatever N) | "
        f"{_yes(constant)} |",
    ]
    for key in sorted(big["child_command_micros"]):
        b = big["child_command_micros"][key]
        s = small["child_command_micros"].get(key)
        if s:
            rows.append(
                f"| 3 | server time of a child's `{key}`, {big['children']} vs "
                f"{small['children']} children | {b / 1000:.2f} ms | {s / 1000:.2f} ms | "
                f"{b / s:.2f}× | | |"
            )
    for r in (small, big):
        at_wait = r.get("busy_child_query_at_wait")
        if at_wait:
            rows.append(
                f"| 3 | a child's \"any child processing?\" query when the parent starts "
                f"waiting, {r['children']} children ({at_wait['processing']} still processing)"
                f" | {at_wait['query_ms']:.0f} ms | | | | `{at_wait['stages']}` on "
                f"`{at_wait['index']}`: {at_wait['keys_examined']} keys, "
                f"{at_wait['docs_examined']} docs examined for `limit 1` |"
            )
    for r in data:
        ok = r["join_delay_s"] <= 1.0
        rows.append(
            f"| 3 | join started after the last child's end, {r['children']} children "
            f"(children ran {r['children_span_s']:.0f} s; whole tree {r['wall_s']:.0f} s) | "
            f"{r['join_delay_s'] * 1000:.0f} ms | | | ≤ 1 s | {_yes(ok)} |"
        )
    return rows


LATENCY_LABELS = {
    "call_to_pending": "call → PENDING visible",
    "pickup_to_running": "pick-up → RUNNING visible",
    "return_to_success": "return → SUCCESS visible",
    "call_to_running": "call → RUNNING visible (broker included)",
    "call_to_success": "call → SUCCESS visible (end to end)",
}


def latency_rows(data: dict[str, Any]) -> list[str]:
    return [
        f"| 4 | {LATENCY_LABELS[key]}, p50 / p99 over {data['n']} | "
        f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f} ms | | | | |"
        for key, v in data["summary"].items()
    ]


def datafix_rows(data: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in data:
        rows.append(
            f"| 5 | datafix, {r['docs']:,} documents: migration vs one bare pipeline "
            f"`update_many` | {r['migrate_s']:.2f} s | {r['bare_s']:.2f} s | "
            f"**{r['ratio']:.2f}×** | ≤ 1.3× | {_yes(r['ratio'] <= 1.3)} |"
        )
        filters = ""
        if r.get("row_filters_only_s") is not None:
            filters = (f"the 3 row filters alone (3 counts, no write): "
                       f"{r['row_filters_only_s']:.2f} s = "
                       f"{r['row_filters_only_s'] / r['bare_s']:.2f}× the limit")
        rows.append(
            f"| 5 | … server CPU during each (busy {r['migrate_server_cpu_s'] / r['migrate_s']:.0%}"
            f" of the migration) | {r['migrate_server_cpu_s']:.2f} s | "
            f"{r['bare_server_cpu_s']:.2f} s | | {filters} | |"
        )
    if len(data) >= 2:
        small, big = data[0], data[-1]
        ratio = big["peak_rss_kb"] / small["peak_rss_kb"]
        rows.append(
            f"| 5 | datafix peak RSS, {big['docs']:,} vs {small['docs']:,} documents | "
            f"{big['peak_rss_kb'] / 1024:.1f} MB | {small['peak_rss_kb'] / 1024:.1f} MB | "
            f"{ratio:.2f}× | ≤ 1.10× | {_yes(ratio <= 1.10)} |"
        )
    return rows


def scale_rows(data: dict[str, Any]) -> list[str]:
    rows = []
    for name, q in data["queries"].items():
        indexed = "IXSCAN" in (q["stages"] or "") or "COUNT_SCAN" in (q["stages"] or "")
        rows.append(
            f"| 6 | {name}, {data['docs']:,} docs | {q['best_ms']:.1f} ms (median "
            f"{q['median_ms']:.1f}); {q['returned']} returned | `{q['stages']}` on "
            f"`{q['index']}`; {q['keys_examined']} keys, {q['docs_examined']} docs examined | | "
            f"index scan | {_yes(indexed)} |"
        )
    return rows


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Run {results['started']}; sizes {results['sizes']}; "
        f"{results.get('elapsed_s', 0) / 60:.1f} min; load average before "
        f"{', '.join(f'{x:.2f}' for x in results['load_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in results.get('load_after', ()))}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        "| # | benchmark | procstatus | baseline | ratio | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, rows in (("cpu", cpu_rows), ("commands", command_rows), ("joins", join_rows),
                      ("latency", latency_rows), ("datafix", datafix_rows),
                      ("scale", scale_rows)):
        if key in results:
            try:
                lines.extend(rows(results[key]))  # type: ignore[operator]
            except Exception as exc:  # a part's odd result must not hide the others
                lines.append(f"| | {key}: could not render ({exc!r}) | | | | | |")
    return "\n".join(lines)
