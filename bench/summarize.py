#!/usr/bin/env python3
"""Markdown tables from bench/results/<date>.json files (the WebSocket part is taken from the
last file that has one). Usage: bench/summarize.py bench/results/A.json [B.json ...]"""
import json, sys

ws = None
ORDER = ["direct", "nginx1", "nginx", "haproxy", "hyper", "cutover"]
LABEL = {"direct": "direct (no proxy)", "nginx1": "nginx, 1 worker", "nginx": "nginx, 2 workers (auto)",
         "haproxy": "HAProxy, nbthread 2", "hyper": "bare hyper proxy (bench/hyper-floor)",
         "cutover": "cutover"}
for path in sys.argv[1:]:
    d = json.load(open(path))
    print(f"\n#### {path.split('/')[-1]} (revision {str(d.get('revision'))[:12]})\n")
    print("| case | body | req/s | p50 | p99 | p99.9 | proxy CPU | proxy CPU µs/req | ctx sw/req | upstream CPU | load avg (1m) before |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for body in sorted({c["body_bytes"] for c in d["cases"]}):
        for name in ORDER:
            c = next((c for c in d["cases"] if c["case"] == name and c["body_bytes"] == body), None)
            if not c: continue
            l = c["lat_us"]
            ms = lambda us: f"{us/1000:.2f} ms"
            dash = lambda v, f: "–" if v is None else f(v)
            print(f"| {LABEL[name]} | {body} B | {c['rps']:,.0f} | {ms(l['p50'])} | {ms(l['p99'])} | {ms(l['p999'])} | "
                  f"{dash(c['proxy_cpu_pct'] if name != 'direct' else None, lambda v: f'{v:.0f} %')} | "
                  f"{dash(c['proxy_cpu_us_per_req'], lambda v: f'{v:.1f}')} | "
                  f"{dash(c.get('proxy_ctx_switches_per_req'), lambda v: f'{v:.2f}')} | "
                  f"{c['upstream_cpu_pct']:.0f} % | {c['loadavg_before'].split()[0]} |")
    print("\n| ratio | body | req/s | p50 | p99 | p99.9 |\n|---|---:|---:|---:|---:|---:|")
    for k, r in d["ratios"].items():
        pair, body = k.split("@")
        print(f"| {pair} | {body} B | {r['rps']:.2f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} |")
    if d.get("websockets_10k"):
        ws = d["websockets_10k"]
if ws:
  print("\n| process | idle WebSockets held | RSS idle | VmHWM while holding | kB per WebSocket | VmHWM projected to 10,000 |")
  print("|---|---:|---:|---:|---:|---:|")
  for w in sorted(ws, key=lambda w: ORDER.index(w["case"])):
      name = "demo-app alone (direct)" if w["case"] == "direct" else LABEL.get(w["case"], w["case"]) + (f" ({w['processes']} processes, summed)" if w["processes"] > 1 else "")
      print(f"| {name} | {w['websockets']:,} | {w['idle_rss_kb']/1024:.1f} MiB | {w['vmhwm_kb']/1024:.1f} MiB | {w['kb_per_ws']:.1f} | {w['vmhwm_kb_at_10k']/1024:.0f} MiB |")

# Medians over all the files given (the headline when the machine was shared and noisy).
if len(sys.argv) > 2:
    import statistics as st
    runs = [json.load(open(p)) for p in sys.argv[1:]]
    def med(name, body, f):
        v = [f(c) for d in runs for c in d["cases"] if c["case"] == name and c["body_bytes"] == body]
        v = [x for x in v if x is not None]
        return st.median(v) if v else None
    bodies = sorted({c["body_bytes"] for d in runs for c in d["cases"]})
    print(f"\n#### median of {len(runs)} runs\n")
    print("| case | body | req/s | p50 | p99 | p99.9 | proxy CPU µs/req |\n|---|---:|---:|---:|---:|---:|---:|")
    for body in bodies:
        for name in ORDER:
            r = med(name, body, lambda c: c["rps"])
            if r is None: continue
            q = {k: med(name, body, lambda c, k=k: c["lat_us"][k]) for k in ("p50", "p99", "p999")}
            cpu = med(name, body, lambda c: c["proxy_cpu_us_per_req"])
            print(f"| {LABEL[name]} | {body} B | {r:,.0f} | {q['p50']/1000:.2f} ms | {q['p99']/1000:.2f} ms | {q['p999']/1000:.2f} ms | {'–' if cpu is None else f'{cpu:.1f}'} |")
    print("\n| ratio (of medians) | body | req/s | p50 | p99 | p99.9 | proxy CPU per request |\n|---|---:|---:|---:|---:|---:|---:|")
    for body in bodies:
        for other in ("nginx", "nginx1", "haproxy", "hyper", "direct"):
            a = {k: med("cutover", body, lambda c, k=k: c["lat_us"][k]) for k in ("p50", "p99", "p999")}
            b = {k: med(other, body, lambda c, k=k: c["lat_us"][k]) for k in ("p50", "p99", "p999")}
            ra, rb = med("cutover", body, lambda c: c["rps"]), med(other, body, lambda c: c["rps"])
            ca, cb = med("cutover", body, lambda c: c["proxy_cpu_us_per_req"]), med(other, body, lambda c: c["proxy_cpu_us_per_req"])
            if None in (ra, rb): continue
            cpu = "–" if cb is None else f"{ca / cb:.2f}"
            print(f"| cutover / {LABEL[other]} | {body} B | {ra / rb:.2f} | {a['p50'] / b['p50']:.2f} | {a['p99'] / b['p99']:.2f} | {a['p999'] / b['p999']:.2f} | {cpu} |")
