#!/usr/bin/env python3
"""Markdown tables from bench/results/*.json: bench/run.sh's (HTTP/1.1, idle WebSockets) and
bench/h2.sh's (h2-*.json: HTTP/2 and TLS). For each protocol, one table of ratios (cutover over
each peer at the same upstream, worker count and body size) with the revision measured; given
several files of one kind, every figure is the median over them, and each file is listed.
Files written before the upstream and worker dimensions existed (demo-app upstream; `nginx1`
was nginx with 1 worker, every other proxy had 2) are read as such.

Usage: bench/summarize.py [--cases] bench/results/A.json [h2-B.json ...]
  --cases  also print every case's own figures (req/s, percentiles, CPU per request, load)
"""
import json, statistics as st, sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
show_cases = "--cases" in sys.argv
LABEL = {"direct": "direct (no proxy)", "nginx": "nginx", "haproxy": "HAProxy",
         "hyper": "bare hyper proxy (bench/hyper-floor)", "cutover": "cutover"}


def normalize(d):
    """Cases of an HTTP/1.1 file with `upstream` and `workers`, whatever its age."""
    out = []
    for c in d["cases"]:
        c = dict(c)
        if "upstream" not in c:
            c["upstream"] = "demo"
            if c["case"] == "nginx1":
                c["case"], c["workers"] = "nginx", 1
            else:
                c["workers"] = None if c["case"] == "direct" else 2
        out.append(c)
    return out


def med(values):
    v = [x for x in values if x is not None]
    return st.median(v) if v else None


def fmt(x, spec="{:.2f}"):
    return "–" if x is None else spec.format(x)


def lead(r, lower_is_better=False):
    """A ratio in bold where cutover is not behind."""
    if r is None:
        return "–"
    good = r <= 1.0 if lower_is_better else r >= 1.0
    return f"**{r:.2f}**" if good else f"{r:.2f}"


files = [(p, json.load(open(p))) for p in args]
http1 = [(p, d) for p, d in files if d.get("kind", "http1") == "http1" and d.get("cases")]
h2 = [(p, d) for p, d in files if d.get("kind") == "h2"]
ws_files = [(p, d) for p, d in files if d.get("websockets_10k")]


def revisions(group):
    return ", ".join(sorted({str(d.get("revision"))[:10] for _, d in group}))


def runs_line(group):
    return "; ".join(f"`{p.split('/')[-1]}` (load before the cases: "
                     f"{min(float(c['loadavg_before'].split()[0]) for c in d['cases']):.1f}–"
                     f"{max(float(c['loadavg_before'].split()[0]) for c in d['cases']):.1f})"
                     for p, d in group)


if http1:
    cases = [(c, p) for p, d in http1 for c in normalize(d)]
    keys = sorted({(c["upstream"], c["body_bytes"], c["workers"]) for c, _ in cases if c["case"] == "cutover"},
                  key=lambda k: (k[0] != "static", k[2] or 0, k[1]))

    def fig(case, up, body, w, f):
        return med(f(c) for c, _ in cases if c["case"] == case and c["upstream"] == up
                   and c["body_bytes"] == body and c["workers"] == (None if case == "direct" else w))

    print(f"\n### HTTP/1.1 (bench/run.sh), revision {revisions(http1)}\n")
    print(f"{len(http1)} run(s): {runs_line(http1)}. Ratios are cutover / the other, of the medians:"
          " req/s higher is better, p99 and CPU per request lower is better; bold where cutover is"
          " not behind.\n")
    print("| upstream | workers | body | / nginx req/s | p99 | CPU/req | / HAProxy req/s | p99 | CPU/req"
          " | / floor req/s | cutover req/s | cutover p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for up, body, w in keys:
        row = [up, str(w), f"{body:,} B"]
        co = {k: fig("cutover", up, body, w, f) for k, f in
              (("rps", lambda c: c["rps"]), ("p99", lambda c: c["lat_us"]["p99"]),
               ("cpu", lambda c: c["proxy_cpu_us_per_req"]))}
        for other in ("nginx", "haproxy"):
            rps = fig(other, up, body, w, lambda c: c["rps"])
            p99 = fig(other, up, body, w, lambda c: c["lat_us"]["p99"])
            cpu = fig(other, up, body, w, lambda c: c["proxy_cpu_us_per_req"])
            row += [lead(co["rps"] / rps if rps else None),
                    lead(co["p99"] / p99 if p99 else None, True),
                    lead(co["cpu"] / cpu if cpu and co["cpu"] else None, True)]
        fl = fig("hyper", up, body, w, lambda c: c["rps"])
        row += [fmt(co["rps"] / fl if fl else None), f"{co['rps']:,.0f}", f"{co['p99'] / 1000:.2f} ms"]
        print("| " + " | ".join(row) + " |")
    if show_cases:
        print("\n| upstream | workers | case | body | req/s | p50 | p99 | p99.9 | proxy CPU µs/req | ctx sw/req | load (1m) before |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        seen = sorted({(c["upstream"], c["workers"] or 0, c["case"], c["body_bytes"]) for c, _ in cases},
                      key=lambda k: (k[0] != "static", k[3], k[1], list(LABEL).index(k[2])))
        for up, w, name, body in seen:
            sel = [c for c, _ in cases if (c["upstream"], c["workers"] or 0, c["case"], c["body_bytes"]) == (up, w, name, body)]
            l = lambda k: med(c["lat_us"][k] for c in sel) / 1000
            print(f"| {up} | {w or '–'} | {LABEL[name]} | {body:,} B | {med(c['rps'] for c in sel):,.0f} | "
                  f"{l('p50'):.2f} ms | {l('p99'):.2f} ms | {l('p999'):.2f} ms | "
                  f"{fmt(med(c['proxy_cpu_us_per_req'] for c in sel), '{:.1f}')} | "
                  f"{fmt(med(c.get('proxy_ctx_switches_per_req') for c in sel))} | "
                  f"{sel[0]['loadavg_before'].split()[0]} |")

if h2:
    cases = [c for _, d in h2 for c in d["cases"]]
    keys = sorted({(c["scenario"], c["body_bytes"], c["workers"]) for c in cases if c["case"] == "cutover"},
                  key=lambda k: (k[0], k[2], k[1]))

    def fig(case, s, body, w, f):
        return med(f(c) for c in cases if (c["case"], c["scenario"], c["body_bytes"], c["workers"]) == (case, s, body, w))

    print(f"\n### HTTP/2 and TLS (bench/h2.sh), revision {revisions(h2)}\n")
    print(f"{len(h2)} run(s): {runs_line(h2)}. TLS: {h2[0][1]['params']['tls']}; negotiated: "
          f"{'; '.join(sorted(set(h2[0][1]['params']['negotiated'])))}.\n")
    print("| scenario | workers | body | / nginx req/s | p99 | CPU/req | / HAProxy req/s | p99 | CPU/req | cutover req/s | cutover p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, body, w in keys:
        co = {k: fig("cutover", s, body, w, f) for k, f in
              (("rps", lambda c: c["rps"]), ("p99", lambda c: c["lat_us"]["p99"]),
               ("cpu", lambda c: c["proxy_cpu_us_per_req"]))}
        row = [s, str(w), f"{body:,} B"]
        for other in ("nginx", "haproxy"):
            rps = fig(other, s, body, w, lambda c: c["rps"])
            p99 = fig(other, s, body, w, lambda c: c["lat_us"]["p99"])
            cpu = fig(other, s, body, w, lambda c: c["proxy_cpu_us_per_req"])
            row += [lead(co["rps"] / rps if rps else None), lead(co["p99"] / p99 if p99 else None, True),
                    lead(co["cpu"] / cpu if cpu else None, True)]
        row += [f"{co['rps']:,.0f}", f"{co['p99'] / 1000:.2f} ms"]
        print("| " + " | ".join(row) + " |")
    if show_cases:
        print("\n| scenario | workers | case | body | req/s | p50 | p99 | p99.9 | proxy CPU µs/req | errors | load (1m) before |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in sorted(cases, key=lambda c: (c["scenario"], c["workers"], c["body_bytes"], c["case"])):
            l = c["lat_us"]
            print(f"| {c['scenario']} | {c['workers']} | {LABEL[c['case']]} | {c['body_bytes']:,} B | {c['rps']:,.0f} | "
                  f"{l['p50'] / 1000:.2f} ms | {l['p99'] / 1000:.2f} ms | {l['p999'] / 1000:.2f} ms | "
                  f"{c['proxy_cpu_us_per_req']:.1f} | {c['errors']} | {c['loadavg_before'].split()[0]} |")

if ws_files:
    path, d = ws_files[-1]
    ws = {w["case"]: w for w in d["websockets_10k"]}
    print(f"\n### Idle WebSockets (bench/run.sh, `{path.split('/')[-1]}`), revision {str(d.get('revision'))[:10]}\n")
    print(f"Open-file limit {d.get('fd_limit', '?'):,}: a proxy holds 2 descriptors per session.\n")
    print("| process | sessions held | RSS idle | VmHWM holding | kB per session | projected to 10,000 | cutover / it |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    co = ws.get("cutover")
    for name in ("direct", "nginx", "haproxy", "cutover"):
        w = ws.get(name)
        if not w:
            continue
        label = "demo-app alone (direct)" if name == "direct" else LABEL[name] + (
            f" ({w['processes']} processes, summed)" if w["processes"] > 1 else "")
        ratio = "–" if name in ("direct", "cutover") or not co else lead(co["kb_per_ws"] / w["kb_per_ws"], True)
        print(f"| {label} | {w['websockets']:,} | {w['idle_rss_kb'] / 1024:.1f} MiB | {w['vmhwm_kb'] / 1024:.1f} MiB | "
              f"{w['kb_per_ws']:.1f} | {w['vmhwm_kb_at_10k'] / 1024:.0f} MiB | {ratio} |")
