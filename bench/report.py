#!/usr/bin/env python3
"""Merges the per-protocol results of bench/run into one table and bench/results.json.

Usage: report.py [--strict] RESULTS_DIR OUT_JSON MACHINE VERSIONS PARAMS
RESULTS_DIR holds imap.jsonl (bench/imap/run), pop3.json (bench/pop3/run), smtp.jsonl
(bench/smtp/run + bench/smtp/postfix-run) and startup.json (bench/startup); any may be missing.
Ratio = Tessera / peer; the "better" column says whether higher or lower is better.
With --strict (bench/run's CI smoke mode) it exits 1 when a step's results are missing or a row
lacks either figure, or Tessera answered a load command with NO/BAD, so a broken benchmark script fails CI instead of printing dashes.
"""
import datetime, json, os, sys

args = sys.argv[1:]
strict = bool(args) and args[0] == "--strict"
if strict:
    args = args[1:]
src, out_json, machine, versions, params = args[:5]
rows = []  # (section, measure, tessera, peer, peer_name, better)


def add(section, measure, t, p, peer, better):
    rows.append({"section": section, "measure": measure, "tessera": t, "peer": p, "peer_name": peer,
                 "better": better, "ratio": (t / p) if (t is not None and p) else None})


def load_jsonl(name):
    path = os.path.join(src, name)
    return [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []


missing = []
smtp = load_jsonl("smtp.jsonl")
if smtp:
    def find(server, s, r, reuse=0, key="accepted_per_s"):
        """The run of that row with the median `key` (bench/run repeats the 1-recipient runs:
        SMTP_ROUNDS); with an even count, the lower of the two middle runs."""
        runs = sorted((x for x in smtp if x["server"] == server and x["sessions"] == s and x["rcpts"] == r
                       and x.get("reuse", 0) == reuse and x.get(key) is not None), key=lambda x: x[key])
        return runs[(len(runs) - 1) // 2] if runs else None

    def rounds(s, r):
        n = max(sum(1 for x in smtp if x["server"] == server and x["sessions"] == s and x["rcpts"] == r
                    and not x.get("reuse", 0)) for server in ("tessera", "postfix+dovecot"))
        return f", median of {n} runs" if n > 1 else ""
    # One row per (recipients, sessions) either server ran: bench/run's SMTP_SESSIONS decides.
    rcpts_run = sorted({x["rcpts"] for x in smtp if not x.get("reuse", 0)})
    sessions_run = sorted({x["sessions"] for x in smtp if not x.get("reuse", 0)})
    for r in rcpts_run:
        for s in sessions_run:
            t, p = find("tessera", s, r), find("postfix+dovecot", s, r)
            add("SMTP", f"accepted+durable msg/s, {s} session(s), {r} rcpt(s){rounds(s, r)}",
                t and t["accepted_per_s"], p and p["accepted_per_s"], "Postfix (queued)", "higher")
    for r in rcpts_run:
        for s in sessions_run:
            t, p = find("tessera", s, r), find("postfix+dovecot", s, r, key="delivered_per_s")
            add("SMTP", f"in the mailbox msg/s, {s} session(s), {r} rcpt(s){rounds(s, r)}",
                t and t["accepted_per_s"], p and p["delivered_per_s"], "Postfix->LMTP->Dovecot", "higher")
    # The extra measurement (bench/run's SMTP_REUSE_SESSIONS): smtp-source -d, every session
    # keeps its connection for all its messages. Not the workload; labelled as such.
    reused = sorted({(x["rcpts"], x["sessions"]) for x in smtp if x.get("reuse", 0)})
    for r, s in reused:
        t, p = find("tessera", s, r, 1), find("postfix+dovecot", s, r, 1)
        add("SMTP", f"accepted+durable msg/s, {s} session(s), {r} rcpt(s), several msgs per connection (smtp-source -d)",
            t and t["accepted_per_s"], p and p["accepted_per_s"], "Postfix (queued)", "higher")
else:
    missing.append("smtp")

imap = load_jsonl("imap.jsonl")
if imap:
    def get(server, test, n=None, style="long"):
        return next((x["result"] for x in imap if x["server"] == server and x["test"] == test
                     and (n is None or (x["result"].get("sessions") == n
                                        and x["result"].get("style", "long") == style))), None)
    styles = {"long": "long sessions", "login": "one login per session"}
    for style, label in styles.items():
        for n in (1, 10, 50):
            t, d = get("tessera", "load", n, style), get("dovecot", "load", n, style)
            add("IMAP", f"mixed load ops/s, {n} session(s), {label}", t and t["ops_per_s"], d and d["ops_per_s"],
                "Dovecot", "higher")
            add("IMAP", f"protocol errors, {n} session(s), {label}", t and t.get("errors"), d and d.get("errors"),
                "Dovecot", "lower")
    for style, label in styles.items():
        for n in (1, 10, 50):
            t, d = get("tessera", "load", n, style), get("dovecot", "load", n, style)
            if t and d:
                for cmd in t["commands"]:
                    if cmd in d["commands"]:
                        for q in ("p50_ms", "p99_ms"):
                            add("IMAP", f"{cmd} {q[:3]} ms, {n} session(s), {label}", t["commands"][cmd][q],
                                d["commands"][cmd][q], "Dovecot", "lower")
    t, d = get("tessera", "idle"), get("dovecot", "idle")
    if t and d:
        add("IMAP", f"IDLE sessions held", t["sessions"], d["sessions"], "Dovecot", "higher")
        add("IMAP", "RSS per IDLE session KiB", t["rss_per_session_kib"], d["rss_per_session_kib"], "Dovecot", "lower")
        add("IMAP", "PSS per IDLE session KiB", t["pss_per_session_kib"], d["pss_per_session_kib"], "Dovecot", "lower")
    t, d = get("tessera", "big"), get("dovecot", "big")
    if t and d:
        for k in t:
            if k != "messages" and k in d:
                add("IMAP", f"{k}, {t['messages']} msgs, ms", t[k]["median_ms"], d[k]["median_ms"], "Dovecot", "lower")
else:
    missing.append("imap")

p = os.path.join(src, "pop3.json")
if os.path.exists(p):
    s = json.load(open(p))["servers"]
    add("POP3", f"RETR {s['tessera']['count']} msgs, msg/s", s["tessera"]["rate"], s["dovecot"]["rate"], "Dovecot", "higher")
    add("POP3", "RETR MB/s", s["tessera"]["mbs"], s["dovecot"]["mbs"], "Dovecot", "higher")
    add("POP3", "login ms", s["tessera"]["login"], s["dovecot"]["login"], "Dovecot", "lower")
else:
    missing.append("pop3")

p = os.path.join(src, "startup.json")
if os.path.exists(p):
    s = json.load(open(p))
    t, d = s["tessera"], s["dovecot"]
    add("Start-up", "time to first listener, ms", t["startup_ms"], d["startup_ms"], "Dovecot", "lower")
    add("Start-up", "idle RSS KiB (all processes)", t["idle_rss_kib"], d["idle_rss_kib"], "Dovecot", "lower")
    add("Start-up", "idle PSS KiB (all processes)", t["idle_pss_kib"], d["idle_pss_kib"], "Dovecot", "lower")
else:
    missing.append("startup")


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return f"{v:,}"


now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print(f"{now}; {machine}; {versions}; {params}")
if missing:
    print(f"MISSING (failed or skipped): {', '.join(missing)}")
print("| area | measure | Tessera | peer | Tessera/peer | better |")
print("|---|---|---|---|---|---|")
for r in rows:
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    print(f"| {r['section']} | {r['measure']} | {fmt(r['tessera'])} | {fmt(r['peer'])} ({r['peer_name']}) | {ratio} | {r['better']} |")
json.dump({"date": now, "machine": machine, "versions": versions, "params": params, "missing": missing,
           "rows": rows}, open(out_json, "w"), indent=1)
print(f"\nwrote {out_json}")
if strict:
    empty = [f"{r['section']}: {r['measure']}" for r in rows if r["tessera"] is None or r["peer"] is None]
    errors = [f"{r['measure']}: {r['tessera']}" for r in rows
              if r["measure"].startswith("protocol errors") and r["tessera"]]
    skipped = os.environ.get("SKIP", "").split()  # bench/run's SKIP: not missing, asked for
    missing = [m for m in missing if m not in skipped]
    if missing or empty or errors or not rows:
        print(f"STRICT: missing steps {missing}, rows without both figures {empty}, "
              f"Tessera protocol errors {errors}", file=sys.stderr)
        sys.exit(1)
