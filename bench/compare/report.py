# ruff: noqa: RUF001  (the Markdown report uses typographic dashes and multiplication signs on purpose)
"""The run's report: Markdown (tables, ratios, targets with pass/fail) and JSON with every number."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from bench.compare import limits as limits_module
from bench.compare.model import (
    EC_SIGN,
    LIST,
    RSA_ENCRYPT,
    RSA_SIGN,
    SECRET_GET,
    SECRET_SET,
    Latency,
    Load,
    Measurement,
    title,
    to_jsonable,
)

if TYPE_CHECKING:
    from bench.compare.run import Run

MB = 1_000_000
CRYPTO_OPS = (RSA_SIGN, EC_SIGN, RSA_ENCRYPT)


def _t(run: Run, op: str) -> str:
    return title(op, run.settings.secrets)


def _find(run: Run, system: str, op: str) -> Measurement | None:
    return next((m for m in run.measurements if m.system == system and m.op == op), None)


def _mb(kib: int) -> str:
    return f"{kib * 1024 / MB:,.0f}"


def _num(value: float, fmt: str = ",.0f") -> str:
    return format(value, fmt)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _lat(lat: Latency | None) -> str:
    return f"{lat.p50_ms:.2f} / {lat.p99_ms:.2f}" if lat else "–"


def _openssl_per_core(run: Run, op: str) -> tuple[float | None, str]:
    """The in-process OpenSSL rate per core that Coffer's rate of a crypto operation is compared with: the mean of
    the rates measured right after each of Coffer's rounds (the VM's speed drifts), else the one at the start."""
    if op not in CRYPTO_OPS:
        return None, ""
    coffer = _find(run, "coffer", op)
    if coffer and coffer.limit_per_core:
        return statistics.fmean(coffer.limit_per_core), "measured after each round"
    if op in run.crypto:
        return run.crypto[op]["per_core"], "measured at the start"
    return None, ""


def limit_for(run: Run, op: str) -> tuple[float | None, str]:
    """The limit Coffer's ops/s is compared with, and how it was made."""
    coffer = _find(run, "coffer", op)
    per_core, when = _openssl_per_core(run, op)
    if per_core is not None and coffer and coffer.load:
        cores = coffer.load.cpu_cores
        return per_core * cores, f"OpenSSL {per_core:,.0f}/s per core ({when}) × {cores:.2f} cores Coffer used"
    if run.hello and run.hello.load:
        rps = run.hello.load.rps
        if op == LIST and coffer and coffer.load:
            return rps / coffer.load.requests_per_op, f"hello {rps:,.0f} req/s ÷ {coffer.load.requests_per_op} pages"
        return rps, f"hello {rps:,.0f} req/s"
    return None, "–"


def targets(run: Run) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def ops(system: str, op: str) -> float | None:
        m = _find(run, system, op)
        return m.load.ops if m and m.load else None

    for op, factor in ((SECRET_GET, 3.0), (SECRET_SET, 3.0), (RSA_SIGN, 1.5), (EC_SIGN, 2.0), (RSA_ENCRYPT, 2.0)):
        if op not in run.settings.operations:
            continue
        r = _ratio(ops("coffer", op), ops("openbao", op))
        rows.append(
            {
                "target": f"{_t(run, op)}: ≥ {factor:g}× OpenBao's ops/s",
                "measured": f"{r:.2f}×" if r is not None else "no OpenBao",
                "pass": None if r is None else r >= factor,
                "value": r,
            }
        )
        if op == RSA_SIGN:
            limit, how = limit_for(run, op)
            coffer = ops("coffer", op)
            r = _ratio(coffer, limit)
            one_core = _ratio(coffer, _openssl_per_core(run, op)[0])
            rows.append(
                {
                    "target": f"{_t(run, op)}: ≥ 70 % of in-process OpenSSL for the cores Coffer uses",
                    "measured": (
                        f"{r:.0%} ({how}); {one_core:.0%} of one core"
                        if r is not None and one_core is not None
                        else "–"
                    ),
                    "pass": None if r is None else r >= 0.7,
                    "value": r,
                }
            )
    for op in run.settings.operations:
        c, b = _find(run, "coffer", op), _find(run, "openbao", op)
        if c and c.load and op == LIST:
            rows.append(
                {
                    "target": f"{_t(run, op)}: p99 at {run.settings.connections} connections ≤ OpenBao's",
                    "measured": f"not comparable under wrk: a Coffer page ({c.load.p99_ms:.2f} ms) is 1/"
                    f"{c.load.requests_per_op} of a list, an OpenBao request the whole list"
                    + (f" ({b.load.p99_ms:.2f} ms)" if b and b.load else "")
                    + "; see the sequential latency",
                    "pass": None,
                    "value": None,
                }
            )
            continue
        if c and c.load:
            p99_b = b.load.p99_ms if b and b.load else None
            rows.append(
                {
                    "target": f"{_t(run, op)}: p99 at {run.settings.connections} connections ≤ OpenBao's",
                    "measured": (
                        f"{c.load.p99_ms:.2f} ms vs {p99_b:.2f} ms"
                        if p99_b is not None
                        else f"{c.load.p99_ms:.2f} ms, no OpenBao"
                    ),
                    "pass": None if p99_b is None else c.load.p99_ms <= p99_b,
                    "value": c.load.p99_ms,
                }
            )
    if run.million:
        before = run.million["baseline"]["latency"]["get random names (httpx)"]
        after = run.million["filled"]["latency"]["get random names (httpx)"]
        r = _ratio(after.p50_ms, before.p50_ms)
        rows.append(
            {
                "target": f"{run.million['secrets']:,} secrets: get latency ≤ 1.25× the {run.settings.secrets:,} "
                "case (p50, random names, sequential)",
                "measured": f"{r:.2f}× ({after.p50_ms:.2f} vs {before.p50_ms:.2f} ms)" if r else "–",
                "pass": None if r is None else r <= 1.25,
                "value": r,
            }
        )
    if "coffer" in run.rss:
        kib = run.rss["coffer"]["kib"]
        rows.append(
            {
                "target": "Coffer idle RSS (whole process tree) < 200 MB",
                "measured": f"{_mb(kib)} MB ({len(run.rss['coffer']['processes'])} process(es))",
                "pass": kib * 1024 < 200 * MB,
                "value": kib * 1024 / MB,
            }
        )
    return rows


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**pass**" if ok else "**FAIL**")


def markdown(run: Run) -> str:
    s = run.settings
    lines = [
        f"# Coffer against OpenBao and the limits, {run.started}" + (" (smoke run)" if s.smoke else ""),
        "",
        "Produced by `bench/compare/run.sh`"
        + (
            f" ({', '.join(a for a in ('--million' if s.million else '', '--profile' if s.profile else '') if a)})"
            if s.million or s.profile
            else ""
        )
        + ". Every number below comes from this one run on this machine. Load: "
        f"`wrk -t{s.threads} -c{s.connections} -d{s.seconds}s --latency` after {s.warmup} s of warm-up, over HTTPS "
        f"(TLS 1.3, HTTP/1.1 keep-alive), {s.rounds} round(s) per operation and system, the two systems alternating "
        "round by round (so that the machine's drift falls on both alike): ops/s and CPU are the means of the rounds, "
        "p50/p99 the medians of the rounds' percentiles. Sequential latency: "
        f"{s.samples} calls one after another ({s.list_samples} for the list) from one client with one keep-alive "
        "connection (httpx), and for Coffer also through the Azure SDK (`azure-keyvault-secrets`/`-keys`, "
        "`ClientSecretCredential` against Coffer's token endpoint). wrk and the servers share the machine's cores.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in run.machine.items()],
        "",
        "## Setup",
        "",
        "- **Coffer**: `python -m coffer server --data-dir D --port P` (not `--dev`"
        + (f"; COFFER_WORKERS={s.coffer_workers}" if s.coffer_workers else "")
        + "), HTTPS with its local CA, initialised through `POST /v1/sys/init` (5 shares, threshold 3) and unsealed "
        "with 3 shares; vault `bench`; an application principal with a client secret, holding only Key Vault "
        "Secrets Officer and Key Vault Crypto User on the vault; its token from `POST {authority}/{tenant}/oauth2/"
        "v2.0/token` (client credentials). Every request: bearer token verified, RBAC decided, audit record "
        "written and fsynced, values sealed (AES-256-GCM) at rest in SQLite (WAL, synchronous=FULL). Its request "
        "limits (Key Vault's service limits: 429 beyond 2,000 requests per 10 s per principal and vault and 300 "
        "secret sets per 10 s per vault) are off (`COFFER_THROTTLE_*=0`): they would cap what is measured, and "
        "OpenBao has no rate-limit quota by default.",
        "- **OpenBao**: as `openbao-anchor.sh`: Raft storage, TLS (trustme CA), a file audit device, kv-v2 at "
        "`secret/`, transit with `rsa-2048` and `ecdsa-p256` keys, a policy `app` and a token bound to it (the root "
        "token revoked).",
        f"- **Objects**: {s.secrets:,} secrets per system (`db-primary-connection-string`, read by *secret get*, and "
        f"`bench-000001`…), writes go to `bench-{s.secrets - 1:06d}` as new versions, so the list keeps "
        f"{s.secrets:,} items.",
        "- **Operations**: Coffer as the Azure SDK sends them (`GET /secrets/{name}/`, `PUT /secrets/{name}`, "
        "`POST /keys/{name}/{version}/sign|encrypt` with RS256, ES256, RSA-OAEP-256 on a SHA-256 digest / 32 bytes); "
        "OpenBao `GET|POST /v1/secret/data/{name}`, `POST /v1/transit/sign/{key}/sha2-256` with `prehashed=true` "
        "(the same 32-byte digest; PKCS#1 v1.5 for RSA), `POST /v1/transit/encrypt/rsa` (OAEP SHA-256).",
        f"- **List of {s.secrets:,} secrets** = one operation that returns every name: on Coffer every page of "
        "`GET /secrets` (25 items per page, the server's default; the SDK follows `nextLink`), on OpenBao "
        "`LIST secret/metadata/`, which returns all keys in one response. Under wrk the Coffer pages are requested "
        "in turn (each connection cycles through the page URLs): its ops/s = pages/s ÷ pages per list, its p50/p99 "
        "are per page. Sequential latency is per whole list. Coffer pages carry each secret's id, attributes and "
        "tags, OpenBao's list only names.",
        "",
    ]
    lines += _results_table(run)
    lines += _ratio_table(run)
    lines += ["## Targets", "", "| target | measured | verdict |", "| --- | --- | --- |"]
    for row in targets(run):
        lines.append(f"| {row['target']} | {row['measured']} | {_verdict(row['pass'])} |")
    lines += [""]
    if run.list_after_writes:
        after = run.list_after_writes
        before = _find(run, "coffer", LIST)
        b_lat = before.latency_of("httpx") if before else None
        lines += [
            "## The list after the writes",
            "",
            f"After the secret-set measurements, `{after['secret']}` had {after['versions_of_written_secret']:,} "
            f"versions. The same Coffer list of {run.settings.secrets:,} secrets, sequential (httpx): p50 / p99 "
            f"{_lat(after['latency'])} ms, against {_lat(b_lat)} ms before the writes.",
            "",
        ]
    lines += _limits_section(run)
    lines += _memory_section(run)
    if run.million:
        lines += _million_section(run)
    if run.profile:
        lines += _profile_section(run)
    if run.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in run.notes], ""]
    lines += ["## Time taken", "", ", ".join(f"{k} {v:.0f} s" for k, v in run.durations.items()), ""]
    return "\n".join(lines)


def _results_table(run: Run) -> list[str]:
    lines = [
        "## Results",
        "",
        f"ops/s, p50 and p99 under wrk with {run.settings.connections} connections; *server CPU* is the CPU time "
        "the server's process tree used per second of load (cores) and per operation; *wrk / other CPU* is what wrk "
        "and everything else on the machine used meanwhile (other should be near 0: it is the check that nothing "
        "else disturbed the measurement); sequential p50 / p99 in ms.",
        "",
        "| operation | system | ops/s | p50 ms | p99 ms | server CPU cores | CPU ms per op | wrk / other CPU cores "
        "| sequential httpx | sequential Azure SDK | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for op in run.settings.operations:
        for system in ("coffer", "openbao"):
            m = _find(run, system, op)
            if not m or not m.load:
                continue
            load = m.load
            cpu_per_op = load.cpu_cores / load.ops * 1000 if load.ops else 0.0
            ops = _num(load.ops, ",.0f" if load.ops >= 100 else ",.1f")
            if load.requests_per_op > 1:
                ops += f" ({load.rps:,.0f} pages/s)"
            lines.append(
                f"| {_t(run, op)} | {system} | {ops} | {load.p50_ms:.2f} | {load.p99_ms:.2f} | {load.cpu_cores:.2f} "
                f"| {cpu_per_op:.2f} | {load.wrk_cores:.2f} / {load.other_cores:.2f} "
                f"| {_lat(m.latency_of('httpx'))} | {_lat(m.latency_of('azure-sdk'))} "
                f"| {load.errors or '–'} |"
            )
    if run.hello and run.hello.load:
        h = run.hello.load
        lines.append(
            f"| bare ASGI hello (limit) | {run.hello.note} | {h.rps:,.0f} | {h.p50_ms:.2f} | {h.p99_ms:.2f} "
            f"| {h.cpu_cores:.2f} | {h.cpu_cores / h.rps * 1000 if h.rps else 0:.3f} "
            f"| {h.wrk_cores:.2f} / {h.other_cores:.2f} | – | – "
            f"| {h.errors or '–'} |"
        )
    return [*lines, ""]


def _ratio_table(run: Run) -> list[str]:
    lines = [
        "## Ratios",
        "",
        f"| operation | Coffer ÷ OpenBao, ops/s | Coffer ÷ OpenBao, p99 at {run.settings.connections} "
        "| Coffer ÷ OpenBao, sequential p50 (httpx) | Coffer ÷ limit, ops/s | limit |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for op in run.settings.operations:
        c, b = _find(run, "coffer", op), _find(run, "openbao", op)
        if not c or not c.load:
            continue
        r_ops = _ratio(c.load.ops, b.load.ops if b and b.load else None)
        r_p99 = _ratio(c.load.p99_ms, b.load.p99_ms if b and b.load else None)
        cl, bl = c.latency_of("httpx"), b.latency_of("httpx") if b else None
        r_seq = _ratio(cl.p50_ms if cl else None, bl.p50_ms if bl else None)
        limit, how = limit_for(run, op)
        r_lim = _ratio(c.load.ops, limit)

        def fmt(value: float | None, pct: bool = False) -> str:
            if value is None:
                return "–"
            return f"{value:.0%}" if pct else f"{value:.2f}"

        ops_cell = fmt(r_ops)
        if r_ops is not None and b and b.load and len(c.load.rounds_rps) > 1:
            per_op = c.load.requests_per_op / b.load.requests_per_op  # a Coffer list is 40 requests
            each = [x / y / per_op for x, y in zip(c.load.rounds_rps, b.load.rounds_rps, strict=False) if y]
            ops_cell += f" (rounds {', '.join(f'{x:.2f}' for x in each)})"
        lines.append(f"| {_t(run, op)} | {ops_cell} | {fmt(r_p99)} | {fmt(r_seq)} | {fmt(r_lim, pct=True)} | {how} |")
    return [*lines, ""]


def _limits_section(run: Run) -> list[str]:
    lines = [
        "## Limits",
        "",
        "In-process `cryptography` (the library Coffer uses), one thread (per core) and one thread per CPU "
        "(cryptography releases the GIL around OpenSSL's work, so threads of one process use every core); the best "
        "of three trials:",
        "",
        "| operation | ops/s, 1 core | ops/s, all cores |",
        "| --- | ---: | ---: |",
    ]
    for op, rates in run.crypto.items():
        title = limits_module.CRYPTO_TITLES.get(op, op)
        lines.append(f"| {title} | {rates['per_core']:,.0f} | {rates['all_cores']:,.0f} ({rates['cores']:.0f}) |")
    again = [m for m in run.measurements if m.system == "coffer" and m.limit_per_core]
    if again:
        lines += [
            "",
            "Measured again, one thread, right after each of Coffer's rounds of load (the VM's speed drifts; Coffer's "
            "% of OpenSSL uses the mean of these): "
            + "; ".join(f"{_t(run, m.op)} {', '.join(f'{r:,.0f}' for r in m.limit_per_core)}/s" for m in again)
            + ".",
        ]
    if run.hello and run.hello.load:
        h = run.hello.load
        lines += [
            "",
            f"Bare ASGI hello ({run.hello.note}, Coffer's server options): {h.rps:,.0f} req/s, p50 "
            f"{h.p50_ms:.2f} ms, p99 {h.p99_ms:.2f} ms at {run.settings.connections} connections.",
        ]
    return [*lines, ""]


def _memory_section(run: Run) -> list[str]:
    lines = [
        "## Memory",
        "",
        "Resident set size of each server's whole process tree (MB = 10⁶ bytes), idle after "
        "setup and right after the load.",
        "",
        "| server | idle MB | processes (MB each) | after load MB |",
        "| --- | ---: | --- | ---: |",
    ]
    for name in ("coffer", "openbao", "hello"):
        if name in run.rss:
            r = run.rss[name]
            after = r.get("after_load_kib")
            lines.append(
                f"| {name} | {_mb(r['kib'])} | {' + '.join(_mb(k) for k in r['processes'])} "
                f"| {_mb(after) if after else '–'} |"
            )
    return [*lines, ""]


def _million_section(run: Run) -> list[str]:
    m = run.million
    before, after = m["baseline"], m["filled"]
    lines = [
        f"## {m['secrets']:,} secrets",
        "",
        f"The vault was filled from {run.settings.secrets:,} to {m['secrets']:,} secrets in-process "
        f"(`bench/compare/fill.py`: Coffer's own `secret.set` on the stopped server's data, sealed exactly as the "
        f"server seals) in {m['fill_seconds']:.0f} s; the database then took {m['database_bytes'] / MB:,.0f} MB. "
        f"Coffer was restarted and unsealed; its idle RSS was then {_mb(m['idle_rss_kib'])} MB. Random names: 1,000 "
        "names drawn among all the secrets; list pages start at random positions (`$skiptoken`).",
        "",
        f"| measurement | {before['count']:,} secrets | {after['count']:,} secrets | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, lat in before["latency"].items():
        filled: Latency = after["latency"][name]
        lines.append(
            f"| {name}, p50 / p99 ms | {_lat(lat)} | {_lat(filled)} | "
            f"{_ratio(filled.p50_ms, lat.p50_ms) or 0:.2f} / {_ratio(filled.p99_ms, lat.p99_ms) or 0:.2f} |"
        )
    for name, load in before["load"].items():
        other: Load | None = after["load"].get(name)
        if other is None:
            lines.append(
                f"| {name}, req/s at {run.settings.connections} | {load.rps:,.0f} ({load.p99_ms:.2f}) "
                f"| not measured ({after.get('skipped', '')}) | – |"
            )
            continue
        lines.append(
            f"| {name}, req/s at {run.settings.connections} (p99 ms) | {load.rps:,.0f} ({load.p99_ms:.2f}) "
            f"| {other.rps:,.0f} ({other.p99_ms:.2f}) | {_ratio(other.rps, load.rps) or 0:.2f} |"
        )
    return [*lines, ""]


def _profile_section(run: Run) -> list[str]:
    lines = [
        "## Profile: the Coffer server under load (py-spy)",
        "",
        "`py-spy record` (200 Hz, non-blocking, raw collapsed stacks) on the server process while wrk ran the "
        "operation. *GIL*: only samples of the thread holding the GIL (where the interpreter's time goes; the share "
        "of ticks with a sample is how busy the interpreter was). *Pipeline wall time*: `--idle` samples inside the "
        "pipeline (`Pipeline.execute` on the event loop, `Pipeline._commit` in the writer thread), "
        "waits of those threads included: where a request's time goes once routed. Shares are of the samples of each "
        "profile.",
        "",
    ]
    for op, modes in run.profile.items():
        for mode, data in modes.items():
            what = {"gil": "GIL", "wall": "pipeline wall time"}.get(mode, mode)
            lines += [
                f"### {_t(run, op)}: {what}",
                "",
                f"{data['samples']:,} samples while wrk ran {_t(run, op)} at {data['rps_while_profiling']:,.0f} req/s "
                "(py-spy attached)"
                + (
                    f"; a GIL was held during {data['busy_share']:.0%} of the sampling ticks"
                    + (" (summed over the worker processes)" if (run.settings.coffer_workers or 1) > 1 else "")
                    if mode == "gil" and "busy_share" in data
                    else ""
                )
                + ".",
                "",
                "| self (the function itself) | share | Coffer function, inclusive (it and what it calls) | share |",
                "| --- | ---: | --- | ---: |",
            ]
            for i in range(max(len(data["self"]), len(data["inclusive"]))):
                cells = []
                for column in (data["self"], data["inclusive"]):
                    name, share = column[i] if i < len(column) and column[i][1] >= 0.0005 else ("", 0.0)
                    cells += [f"`{name}`", f"{share:.1%}"] if name else ["", ""]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def as_json(run: Run) -> dict[str, Any]:
    return {
        "started": run.started,
        "settings": to_jsonable(run.settings),
        "machine": run.machine,
        "measurements": to_jsonable(run.measurements),
        "hello": to_jsonable(run.hello),
        "crypto_limits": run.crypto,
        "rss_kib": run.rss,
        "targets": [{k: v for k, v in row.items()} for row in targets(run)],
        "million": to_jsonable(run.million),
        "profile": {
            op: {mode: {k: v for k, v in data.items() if k != "raw"} for mode, data in modes.items()}
            for op, modes in run.profile.items()
        },
        "list_after_writes": to_jsonable(run.list_after_writes),
        "notes": run.notes,
        "durations_seconds": run.durations,
    }
