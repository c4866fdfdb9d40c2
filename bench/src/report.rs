//! Tables: one line per run for the console, the markdown report, and the
//! project's targets set against what was measured (reported, never
//! asserted).

use std::fmt::Write as _;

use serde::Serialize;

use crate::contestant::Backend;
use crate::load::LoadResult;
use crate::suite::{PairedComparison, Pairing, Report, RunRecord, Scenario};

/// One target and what was measured for it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None` when the inputs were not measured.
    pub met: Option<bool>,
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

fn opt1(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn mode(l: &LoadResult) -> String {
    match l.target_rate {
        Some(r) => format!("{r:.0}/s"),
        None => "max".into(),
    }
}

fn errors(l: &LoadResult) -> String {
    let unsent = if l.unsent > 0 { format!(", {} unsent", l.unsent) } else { String::new() };
    if l.errors == 0 {
        return format!("0{unsent}");
    }
    let kinds: Vec<String> = l.error_kinds.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("{} ({}){unsent}", l.errors, kinds.join(", "))
}

/// A one-line summary of a run, for progress output.
pub fn one_line(r: &RunRecord) -> String {
    let l = &r.load;
    format!(
        "{} ({}) {:?} {}: {:.0} calls/s, p50 {} ms, p99 {} ms, p99.9 {} ms, errors {}, gw CPU {} µs/call",
        r.contestant,
        r.upstream,
        r.scenario,
        mode(l),
        l.calls_per_s,
        ms(l.latency.p50_us),
        ms(l.latency.p99_us),
        ms(l.latency.p999_us),
        errors(l),
        opt1(r.gateway_cpu_us_per_call),
    )
}

/// The table of a single load run (the `load` command).
pub fn load_table(l: &LoadResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| mode | sessions | requests | ok | errors | calls/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
        mode(l),
        l.concurrency,
        l.requests,
        l.ok,
        errors(l),
        l.calls_per_s,
        ms(l.latency.p50_us),
        ms(l.latency.p90_us),
        ms(l.latency.p99_us),
        ms(l.latency.p999_us),
        ms(l.latency.max_us),
    );
    for e in &l.error_samples {
        let _ = writeln!(s, "\nerror: {e}");
    }
    s
}

fn find<'a>(r: &'a Report, contestant: &str, upstream: &str, scenario: Scenario, fixed: bool) -> Option<&'a RunRecord> {
    r.runs.iter().find(|x| {
        x.contestant == contestant
            && x.upstream == upstream
            && x.scenario == scenario
            && x.load.target_rate.is_some() == fixed
            && x.load.ok > 0
    })
}

pub fn targets(r: &Report) -> Vec<TargetCheck> {
    let mut v = Vec::new();
    // 1. CPU per proxied call (gateway process alone, max-rate run).
    let cpu = find(r, "bastion", "stdio", Scenario::Call, false).and_then(|x| x.gateway_cpu_us_per_call);
    // At a fixed rate, every call also pays for waking an idle process;
    // the direct fixture, which does no proxying at all, shows that floor.
    let fixed = find(r, "bastion", "stdio", Scenario::Call, true).and_then(|x| x.gateway_cpu_us_per_call);
    let direct_fixed = find(r, "direct", "http", Scenario::Call, true).and_then(|x| x.gateway_cpu_us_per_call);
    let at_rate = match (fixed, direct_fixed) {
        (Some(b), Some(d)) => format!("; at the fixed rate {b:.1} µs, the direct server alone {d:.1} µs"),
        (Some(b), None) => format!("; at the fixed rate {b:.1} µs"),
        _ => String::new(),
    };
    v.push(TargetCheck {
        target: "gateway CPU per proxied tools/call ≤ 50 µs".into(),
        measured: cpu.map_or("not measured".into(), |c| format!("{c:.1} µs (stdio upstream, max rate){at_rate}")),
        met: cpu.map(|c| c <= 50.0),
    });
    // 2. Added latency at the fixed rate, over the direct floor.
    let floor = find(r, "direct", "http", Scenario::Call, true);
    for upstream in ["stdio", "http"] {
        let b = find(r, "bastion", upstream, Scenario::Call, true);
        let (m50, m99, met50, met99) = match (b, floor) {
            (Some(b), Some(f)) if f.load.latency.p50_us > b.load.latency.p50_us => {
                let m = format!(
                    "floor invalid: direct p50 {} ms is slower than the gateway's {} ms",
                    ms(f.load.latency.p50_us),
                    ms(b.load.latency.p50_us)
                );
                (m.clone(), m, None, None)
            }
            (Some(b), Some(f)) => {
                let d50 = b.load.latency.p50_us - f.load.latency.p50_us;
                let d99 = b.load.latency.p99_us - f.load.latency.p99_us;
                (format!("{} ms", ms(d50)), format!("{} ms", ms(d99)), Some(d50 <= 200.0), Some(d99 <= 1000.0))
            }
            _ => ("not measured".into(), "not measured".into(), None, None),
        };
        let rate = floor.and_then(|f| f.load.target_rate).unwrap_or(0.0);
        v.push(TargetCheck {
            target: format!("added p50 latency over direct at {rate:.0} calls/s ≤ 0.2 ms ({upstream} upstream)"),
            measured: m50,
            met: met50,
        });
        v.push(TargetCheck {
            target: format!("added p99 latency over direct at {rate:.0} calls/s ≤ 1 ms ({upstream} upstream)"),
            measured: m99,
            met: met99,
        });
    }
    // 3. Throughput against supergateway's best mode.
    let bastion = find(r, "bastion", "stdio", Scenario::Call, false).map(|x| x.load.calls_per_s);
    let sg = ["supergateway-stateful", "supergateway-stateless"]
        .iter()
        .filter_map(|c| find(r, c, "stdio", Scenario::Call, false))
        .map(|x| x.load.calls_per_s)
        .fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a.max(x))));
    let (m, met) = match (bastion, sg) {
        (Some(b), Some(s)) if s > 0.0 => (format!("{b:.0} vs {s:.0} calls/s = {:.1}×", b / s), Some(b >= 5.0 * s)),
        _ => ("not measured".into(), None),
    };
    v.push(TargetCheck {
        target: "calls/s ≥ 5× supergateway's best mode (every call audited, the default)".into(),
        measured: m,
        met,
    });
    // 4. Idle sessions.
    let idle = r.idle.iter().find(|i| i.contestant == "bastion");
    let per = idle.and_then(|i| i.bytes_per_session);
    v.push(TargetCheck {
        target: "idle session ≤ 16 KiB".into(),
        measured: per.map_or("not measured".into(), |b| {
            format!("{:.1} KiB ({} sessions)", b / 1024.0, idle.map_or(0, |i| i.opened))
        }),
        met: per.map(|b| b <= 16.0 * 1024.0),
    });
    let at10k = idle.filter(|i| i.opened >= 10_000);
    v.push(TargetCheck {
        target: "10,000 sessions with RSS ≤ 300 MiB".into(),
        measured: match (idle, at10k) {
            (Some(i), Some(_)) => format!("{} MiB", mib(i.rss_after_kib)),
            (Some(i), None) => format!("only {} sessions opened ({} MiB)", i.opened, mib(i.rss_after_kib)),
            _ => "not measured".into(),
        },
        met: at10k.map(|i| i.rss_after_kib <= 300 * 1024),
    });
    // 5. Start to ready.
    let ready = r.start_to_ready.as_ref().filter(|s| !s.readyz_ms.is_empty());
    let median = ready.map(|s| {
        let mut v = s.readyz_ms.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    v.push(TargetCheck {
        target: "start to ready ≤ 100 ms with 100 stdio servers".into(),
        measured: match (median, ready) {
            (Some(m), Some(s)) => format!("{m:.1} ms (median of {}, {} servers)", s.readyz_ms.len(), s.servers),
            _ => "not measured".into(),
        },
        met: match (median, ready) {
            (Some(m), Some(s)) if s.servers >= 100 => Some(m <= 100.0),
            _ => None,
        },
    });
    // 6. Authorization on: access tokens and 50 Cedar rules cost at most
    // 10 µs of CPU per call over API keys alone (max rate, stdio upstream):
    // from the paired runs when made, else from the single runs.
    let paired = paired_medians(r, Pairing::Authz);
    let single = find(r, AUTHZ, "stdio", Scenario::Call, false)
        .and_then(|x| x.gateway_cpu_us_per_call)
        .zip(find(r, "bastion", "stdio", Scenario::Call, false).and_then(|x| x.gateway_cpu_us_per_call));
    let (measured, diff) = cpu_difference(paired, single);
    v.push(TargetCheck {
        target: "gateway CPU per call with authz on (access token + 50 Cedar rules) ≤ API keys alone + 10 µs".into(),
        measured,
        met: diff.map(|d| d <= 10.0),
    });
    // 7. A call through the user's own process (a server run once per
    // user) costs no more gateway CPU than through a shared one, once the
    // process runs (max rate, stdio upstream; 2 µs is the run-to-run noise
    // of single runs).
    let per_user = find(r, PER_USER, "stdio", Scenario::Call, false)
        .and_then(|x| x.gateway_cpu_us_per_call)
        .zip(find(r, "bastion", "stdio", Scenario::Call, false).and_then(|x| x.gateway_cpu_us_per_call));
    v.push(TargetCheck {
        target: "gateway CPU per call through the user's own process ≤ through a shared one (± 2 µs noise)".into(),
        measured: per_user.map_or("not measured".into(), |(p, b)| {
            format!("{} µs: {p:.1} vs {b:.1} µs (stdio upstream, max rate)", signed(p - b, 1))
        }),
        met: per_user.map(|(p, b)| p - b <= PER_USER_NOISE_US),
    });
    // 8. Auditing every call costs at most 5 µs of gateway CPU per call,
    // and the max rate holds with it (stdio upstream; the same ± 2 µs and
    // 5 % run-to-run noise of single runs).
    let paired = paired_medians(r, Pairing::Audit);
    let on = find(r, "bastion", "stdio", Scenario::Call, false);
    let off = find(r, NO_AUDIT, "stdio", Scenario::Call, false);
    let single = on.and_then(|x| x.gateway_cpu_us_per_call).zip(off.and_then(|x| x.gateway_cpu_us_per_call));
    let cpu = paired.as_ref().map(|(a, k, _, _)| (*a, *k)).or(single);
    let (measured, diff) = cpu_difference(paired, single);
    v.push(TargetCheck {
        target: "gateway CPU per call with every call audited ≤ audit off + 5 µs".into(),
        measured,
        met: diff.map(|d| d <= 5.0),
    });
    // 9. The data guard (its defaults) reading a 1 KiB argument and its
    // 1 KiB echo costs at most 15 µs of gateway CPU per call.
    let (measured, diff) = cpu_difference(paired_medians(r, Pairing::Guard), None);
    v.push(TargetCheck {
        target: "gateway CPU per call with the data guard reading 1 KiB in and 1 KiB out ≤ guard off + 15 µs".into(),
        measured,
        met: diff.map(|d| d <= 15.0),
    });
    // The max rate holds with it: Bastion's max-rate figure (target 3) is
    // its rate with every call audited, the default; against audit off,
    // the rate lost is no more than the added CPU explains (audit off's
    // CPU per call over audit on's): nothing waits on the trail.
    let ratio = paired_ratio(r, Pairing::Audit);
    let rate = on.map(|x| x.load.calls_per_s).zip(off.map(|x| x.load.calls_per_s));
    let (measured, ratio) = match (ratio, rate) {
        (Some((q, n)), _) => (format!("{:.1} % of audit off (median of {n} paired max-rate runs)", q * 100.0), Some(q)),
        (None, Some((a, b))) => (format!("{a:.0} vs {b:.0} calls/s (stdio upstream)"), Some(a / b)),
        _ => ("not measured".into(), None),
    };
    let explained = cpu.filter(|(a, k)| *a > 0.0 && *k > 0.0).map(|(a, k)| (k / a).min(1.0));
    let measured = match explained {
        Some(x) if ratio.is_some() => format!("{measured}; the added CPU explains {:.1} %", x * 100.0),
        _ => measured,
    };
    v.push(TargetCheck {
        target: "max-rate calls/s with audit on ≥ audit off × its CPU per call ÷ audit on's (no more lost than the added CPU explains)".into(),
        measured,
        met: ratio.zip(explained).map(|(q, x)| q >= x),
    });
    // 10. Limits checked in process (rates at every level, a server's
    // calls in flight, a daily quota; nothing refused) cost under 2 µs of
    // gateway CPU per call.
    let (measured, diff) = cpu_difference(paired_medians(r, Pairing::Limits), None);
    v.push(TargetCheck {
        target: "gateway CPU per call with limits checked in process (6 rules and a quota) < limits off + 2 µs".into(),
        measured,
        met: diff.map(|d| d < 2.0),
    });
    v
}

/// A pairing's medians: (variant, base, difference, rounds).
fn paired_medians(r: &Report, pairing: Pairing) -> Option<(f64, f64, f64, String)> {
    let c = r.paired.iter().find(|c| c.pairing == pairing)?;
    Some((
        c.variant_gateway_cpu_us_per_call?,
        c.base_gateway_cpu_us_per_call?,
        c.difference_us_per_call?,
        format!("{} paired {} runs", c.rounds.len(), paired_runs(c)),
    ))
}

/// What a pairing's runs were: `max-rate`, or their fixed rate.
fn paired_runs(c: &crate::suite::PairedComparison) -> String {
    match c.rate {
        None => "max-rate".into(),
        Some(rate) => format!("{rate:.0} calls/s"),
    }
}

/// A pairing's median rate ratio and its rounds.
fn paired_ratio(r: &Report, pairing: Pairing) -> Option<(f64, usize)> {
    let c = r.paired.iter().find(|c| c.pairing == pairing)?;
    Some((c.rate_ratio?, c.rounds.len()))
}

/// A CPU difference, from the paired runs when made, else from the single
/// runs (variant, base).
fn cpu_difference(paired: Option<(f64, f64, f64, String)>, single: Option<(f64, f64)>) -> (String, Option<f64>) {
    match (paired, single) {
        (Some((a, k, d, runs)), _) => {
            (format!("{} µs: {a:.1} vs {k:.1} µs (medians of {runs}, stdio upstream)", signed(d, 1)), Some(d))
        }
        (None, Some((a, k))) => {
            (format!("{} µs: {a:.1} vs {k:.1} µs (stdio upstream, max rate)", signed(a - k, 1)), Some(a - k))
        }
        _ => ("not measured".into(), None),
    }
}

/// The contestant with the audit trail off.
pub const NO_AUDIT: &str = "bastion-noaudit";

/// The contestant whose server runs once per user.
pub const PER_USER: &str = "bastion-per-user";

/// The run-to-run noise of a single max-rate run's CPU per call, in µs.
const PER_USER_NOISE_US: f64 = 2.0;

/// The contestant with authorization on.
pub const AUTHZ: &str = "bastion-authz";

/// Authorization on against API keys alone, scenario by scenario: the same
/// gateway, upstream (stdio) and load.
fn authz_section(r: &Report, s: &mut String) {
    let _ = writeln!(s, "\n## Authorization on against API keys alone\n");
    let _ = writeln!(
        s,
        "`{AUTHZ}`: clients present an RS256 access token, validated against the key set the benchmark \
         serves; the user has role `user` in the group holding the server; 50 Cedar rules on top of the \
         built-in ones. `bastion`: an API key, the user an admin, the built-in rules alone. Both over the \
         stdio upstream. CPU in µs per successful request, the gateway process alone. The target is judged \
         on the paired runs below; single runs, and fixed-rate ones above all (where each call also pays for \
         waking idle processes), move by several µs from run to run.\n"
    );
    let _ = writeln!(
        s,
        "| scenario | mode | API keys calls/s | API keys gw CPU | authz on calls/s | authz on gw CPU | difference |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    let rows = [
        (Scenario::Call, true, "a. tools/call"),
        (Scenario::Call, false, "a. tools/call"),
        (Scenario::Setup, false, "c. session set-up"),
        (Scenario::Stateless, true, "d. stateless tools/call"),
        (Scenario::Stateless, false, "d. stateless tools/call"),
    ];
    let mut any = false;
    for (scenario, fixed, title) in rows {
        let keys = find(r, "bastion", "stdio", scenario, fixed);
        let authz = find(r, AUTHZ, "stdio", scenario, fixed);
        let Some(l) = authz.or(keys).map(|x| &x.load) else { continue };
        any = true;
        let rate = |x: Option<&RunRecord>| x.map_or("–".into(), |x| format!("{:.0}", x.load.calls_per_s));
        let cpu = |x: Option<&RunRecord>| opt1(x.and_then(|x| x.gateway_cpu_us_per_call));
        let diff = match (authz.and_then(|x| x.gateway_cpu_us_per_call), keys.and_then(|x| x.gateway_cpu_us_per_call)) {
            (Some(a), Some(k)) => format!("{} µs", signed(a - k, 1)),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {title} | {} | {} | {} | {} | {} | {diff} |",
            mode(l),
            rate(keys),
            cpu(keys),
            rate(authz),
            cpu(authz)
        );
    }
    if !any {
        let _ = writeln!(s, "| (not run) | | | | | | |");
    }
    paired_table(r, Pairing::Authz, s);
}

/// A pairing's rounds, as a table.
fn paired_table(r: &Report, pairing: Pairing, s: &mut String) {
    let Some(c) = r.paired.iter().find(|c| c.pairing == pairing) else { return };
    let (base, variant) = pairing.labels();
    let _ = writeln!(
        s,
        "\nPaired runs: both gateways started side by side, then in each round one {} `tools/call` run \
         of each ({} sessions), the order alternating from round to round. The difference is the median of \
         the rounds' differences.\n",
        if c.rate.is_some() { format!("{} (fixed rate)", paired_runs(c)) } else { paired_runs(c) },
        r.settings["concurrency"]
    );
    let _ = writeln!(
        s,
        "| round | {base} calls/s | {base} gw CPU | {variant} calls/s | {variant} gw CPU | difference | errors | steal % |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|---|");
    for (i, x) in c.rounds.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.0} | {} | {} | {} / {} | {} / {} |",
            i + 1,
            x.base.load.calls_per_s,
            opt1(x.base.gateway_cpu_us_per_call),
            x.variant.load.calls_per_s,
            opt1(x.variant.gateway_cpu_us_per_call),
            x.difference().map_or("–".into(), |d| format!("{} µs", signed(d, 1))),
            errors(&x.base.load),
            errors(&x.variant.load),
            opt1(x.base.steal_percent),
            opt1(x.variant.steal_percent),
        );
    }
    let _ = writeln!(
        s,
        "| **median** | | {} | | {} | **{}** | | |",
        opt1(c.base_gateway_cpu_us_per_call),
        opt1(c.variant_gateway_cpu_us_per_call),
        c.difference_us_per_call.map_or("–".into(), |d| format!("{} µs", signed(d, 1))),
    );
}

/// The data guard on against off.
fn guard_section(r: &Report, s: &mut String) {
    if !r.paired.iter().any(|c| c.pairing == Pairing::Guard) {
        return;
    }
    let _ = writeln!(s, "\n## Data guard on against off\n");
    let _ = writeln!(
        s,
        "`bastion` runs the data guard with its defaults; `bastion-noguard` is the same gateway with \
         `guard.enabled: false`. Each call sends 1 KiB of text to the echo server, which returns it: \
         the guard reads 1 KiB on the way in and 1 KiB on the way out. Both over the stdio upstream."
    );
    paired_table(r, Pairing::Guard, s);
}

/// Audit on (into SQLite, then into PostgreSQL) against audit off.
fn audit_section(r: &Report, s: &mut String) {
    let sqlite = r.paired.iter().any(|c| c.pairing == Pairing::Audit);
    let postgres = r.paired.iter().find(|c| c.pairing == Pairing::AuditPostgres);
    if !sqlite && postgres.is_none() {
        return;
    }
    let _ = writeln!(s, "\n## Audit trail on against off\n");
    let _ = writeln!(
        s,
        "`{NO_AUDIT}` is `bastion` with `audit.enabled: false`; it is set against the same gateway auditing \
         every call into its store. Both over the stdio upstream."
    );
    if sqlite {
        let _ = writeln!(
            s,
            "\n### SQLite\n\n`bastion` audits into its default SQLite store: the store's work is inside the \
             gateway process and counts in its CPU."
        );
        paired_table(r, Pairing::Audit, s);
    }
    if let Some(c) = postgres {
        let _ = writeln!(
            s,
            "\n### PostgreSQL\n\n`{POSTGRES}` is `bastion` with its store in a PostgreSQL server the benchmark \
             starts for it on loopback (`scripts/pg-throwaway`: a fresh cluster, `fsync` and \
             `synchronous_commit` off), so every call's record is written there. The gateway's own part of \
             the writes (the records, the statements, the client side of the protocol) is in `gw CPU`; the \
             server's work is not the gateway's and is not in `gw CPU`: it is shown below the table."
        );
        paired_table(r, Pairing::AuditPostgres, s);
        if let Some(q) = c.rate_ratio {
            let _ = writeln!(
                s,
                "\nMax rate with audit on PostgreSQL: {:.1} % of audit off (median of the rounds' ratios).",
                q * 100.0
            );
        }
        backend_cpu_line(c, Backend::Postgres, s);
    }
}

/// The CPU per call of a variant's backend server (outside the gateway's
/// tree), below its pairing's table.
fn backend_cpu_line(c: &PairedComparison, backend: Backend, s: &mut String) {
    let what = match backend {
        Backend::Redis => "its process alone",
        Backend::Postgres => "its postmaster and every backend",
    };
    let rounds: Vec<String> = c.rounds.iter().map(|x| opt1(x.variant.backend_cpu(backend))).collect();
    let _ = writeln!(
        s,
        "\n{} server CPU per call ({what}): {} µs (median; rounds: {}).",
        backend.name(),
        opt1(c.variant_backend_cpu(backend)),
        rounds.join(", ")
    );
}

/// Limits on (in process, then on Redis) against none.
fn limits_section(r: &Report, s: &mut String) {
    let local = r.paired.iter().any(|c| c.pairing == Pairing::Limits);
    let redis = r.paired.iter().find(|c| c.pairing == Pairing::LimitsRedis);
    if !local && redis.is_none() {
        return;
    }
    let _ = writeln!(s, "\n## Limits on against off\n");
    let _ = writeln!(
        s,
        "`{LIMITS}` is `bastion` with rate limits at every level a call falls under (every caller, the user, \
         the server, the tool, the user and the tool: 1,000,000/s each, bursts of 1,000,000), a limit of \
         4,096 calls in flight on the server and a quota of 1,000,000,000 calls per user per day: six \
         rules and a quota checked on every call, none of them ever reached (a refusal fails the suite). \
         No group rule: the benchmark's user is in no group. Both over the stdio upstream."
    );
    if local {
        let _ = writeln!(s, "\n### In process\n\nThe rate buckets in the gateway's memory.");
        paired_table(r, Pairing::Limits, s);
    }
    if let Some(c) = redis {
        let _ = writeln!(
            s,
            "\n### On Redis\n\n`{LIMITS_REDIS}`: the same rules, their buckets in a Redis server the benchmark \
             starts for it on loopback (nothing saved to disk); every call waits for one round trip to it. \
             Redis's own CPU is not the gateway's and is not in `gw CPU`; it is shown below the table."
        );
        paired_table(r, Pairing::LimitsRedis, s);
        backend_cpu_line(c, Backend::Redis, s);
    }
}

/// Three replicas against one, behind nginx, on one store and one Redis.
fn replicas_section(r: &Report, s: &mut String) {
    let Some(c) = &r.replicas else { return };
    let _ = writeln!(s, "\n## Replicas: three against one\n");
    let _ = writeln!(
        s,
        "Stateless `2026-07-28` `tools/call echo` at max rate ({} clients, closed loop) through nginx with \
         `deploy/nginx/bastion.conf`, in front of one Bastion replica (its three addresses all naming `r1`) \
         and in front of three (`bastion serve --replica r1|r2|r3`). The replicas share one PostgreSQL store \
         (a throwaway server, a database of this run's own; every call audited into it), one Redis \
         (`limits.redis`, a global rate rule of 1,000,000/s that never refuses, so every call takes its \
         bucket there) and the same master key, audit key and API key pepper; each runs the echo fixture \
         over stdio. In each round one run goes through each nginx, the order alternating. Latencies in ms; \
         CPU in µs per successful call: `Bastion` is the three replica processes together (the idle ones cost next to \
         nothing with one replica), `+ echo` adds their stdio servers; nginx, Redis and PostgreSQL (its \
         postmaster and backends) each on their own.\n",
        c.concurrency
    );
    let _ = writeln!(
        s,
        "**This machine has {} core(s)**, shared by every replica, nginx, PostgreSQL, Redis and the load \
         generator. With few cores the replicas compete for the same CPUs: the ratio then shows what going \
         through the shared store, Redis and nginx costs, not horizontal scaling, which needs the replicas on \
         machines (or cores) of their own.\n",
        c.nproc
    );
    let _ = writeln!(
        s,
        "| round | replicas | calls/s | p50 | p99 | errors | Bastion CPU | + echo | nginx | Redis | PostgreSQL | load gen | steal % |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, round) in c.rounds.iter().enumerate() {
        for x in [&round.one, &round.three] {
            let l = &x.load;
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                x.replicas,
                l.calls_per_s,
                ms(l.latency.p50_us),
                ms(l.latency.p99_us),
                errors(l),
                opt1(x.bastion_cpu_us_per_call),
                opt1(x.bastion_tree_cpu_us_per_call),
                opt1(x.nginx_cpu_us_per_call),
                opt1(x.redis_cpu_us_per_call),
                opt1(x.postgres_cpu_us_per_call),
                opt1(x.loadgen_cpu_us_per_call),
                opt1(x.steal_percent),
            );
        }
    }
    let _ = writeln!(s, "\n{}", replicas_summary(c));
}

/// The replicas scenario's medians in one line.
pub fn replicas_summary(c: &crate::replicas::ReplicasComparison) -> String {
    let rate = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
    format!(
        "Medians of {} round(s): one replica {} calls/s, three replicas {} calls/s, ratio {}; Bastion CPU per \
         call {} µs with one replica, {} µs with three ({} core(s)).",
        c.rounds.len(),
        rate(c.one_calls_per_s),
        rate(c.three_calls_per_s),
        c.ratio.map_or("–".into(), |q| format!("{q:.2}×")),
        opt1(c.one_bastion_cpu_us_per_call),
        opt1(c.three_bastion_cpu_us_per_call),
        c.nproc,
    )
}

/// One run of the replicas scenario, for progress output.
pub fn replicas_line(x: &crate::replicas::ReplicasRun) -> String {
    let l = &x.load;
    format!(
        "replicas: {} behind nginx: {:.0} calls/s, p50 {} ms, p99 {} ms, errors {}, Bastion CPU {} µs/call \
         (nginx {}, Redis {}, PostgreSQL {})",
        x.replicas,
        l.calls_per_s,
        ms(l.latency.p50_us),
        ms(l.latency.p99_us),
        errors(l),
        opt1(x.bastion_cpu_us_per_call),
        opt1(x.nginx_cpu_us_per_call),
        opt1(x.redis_cpu_us_per_call),
        opt1(x.postgres_cpu_us_per_call),
    )
}

/// The contestant with limits checked in process.
pub const LIMITS: &str = "bastion-limits";

/// The contestant with its rate buckets in Redis.
pub const LIMITS_REDIS: &str = "bastion-limits-redis";

/// The contestant with its store (and audit trail) in PostgreSQL.
pub const POSTGRES: &str = "bastion-postgres";

/// A paired comparison in one line, for progress output.
pub fn paired_line(c: &PairedComparison) -> String {
    let (base, variant) = c.pairing.labels();
    let servers: String = Backend::ALL
        .into_iter()
        .filter_map(|b| c.variant_backend_cpu(b).map(|v| format!("; {} CPU {v:.1} µs/call", b.name())))
        .collect();
    format!(
        "{variant} against {base}, {} round(s): gw CPU {} vs {} µs/call, difference {} µs/call, rate {} \
         (medians){servers}",
        c.rounds.len(),
        opt1(c.variant_gateway_cpu_us_per_call),
        opt1(c.base_gateway_cpu_us_per_call),
        c.difference_us_per_call.map_or("–".into(), |d| signed(d, 1)),
        c.rate_ratio.map_or("–".into(), |q| format!("{:.1} %", q * 100.0)),
    )
}

fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "–",
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmark results{}\n", if r.smoke { " (smoke run: not a measurement)" } else { "" });
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} × {}, {} MiB memory, Linux {}. Generated by `scripts/bench` (unix time {}).\n",
        m.nproc, m.cpu_model, m.memory_mib, m.kernel, r.unix_time
    );
    let _ = writeln!(
        s,
        "Fixed-rate runs: {} calls/s over {} sessions for {} s (open loop, corrected for coordinated omission). \
         Max-rate runs: {} sessions, closed loop. Latencies in ms. CPU in µs per successful call: \
         `gw` is the gateway process alone, `tree` adds its children (the stdio upstream). \
         Peak RSS in MiB (VmHWM, gateway / whole tree). Steal: the share of the machine's CPU time the \
         hypervisor gave to other guests during the run (a noisy neighbour shows here).\n",
        r.settings["fixed_rate_per_s"], r.settings["concurrency"], r.settings["duration_s"], r.settings["concurrency"]
    );
    if !r.failures.is_empty() {
        let _ = writeln!(s, "## Failed\n");
        for f in &r.failures {
            let _ = writeln!(s, "- **{f}**");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| target | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(s, "| {} | {} | {} |", t.target, t.measured, met(t.met));
    }
    let sections: [(Scenario, Option<&str>, &str); 4] = [
        (Scenario::Call, Some("stdio"), "a. tools/call, stdio upstream"),
        (Scenario::Call, Some("http"), "b. tools/call, Streamable HTTP upstream"),
        (Scenario::Setup, None, "c. session set-up (initialize + initialized + tools/list)"),
        (Scenario::Stateless, None, "d. stateless 2026-07-28 tools/call"),
    ];
    for (scenario, upstream, title) in sections {
        let _ = writeln!(s, "\n## {title}\n");
        let _ = writeln!(
            s,
            "| contestant | mode | calls/s | p50 | p99 | p99.9 | errors | gw CPU | tree CPU | peak RSS gw / tree | steal % |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|");
        let mut rows: Vec<&RunRecord> = r
            .runs
            .iter()
            .filter(|x| {
                x.scenario == scenario
                    && match upstream {
                        // The direct fixture is the floor of both a and b.
                        Some(u) => x.upstream == u || x.contestant == "direct",
                        None => true,
                    }
            })
            .collect();
        rows.sort_by_key(|x| (x.contestant != "direct", x.load.target_rate.is_none()));
        if rows.is_empty() {
            let _ = writeln!(s, "| (not run) | | | | | | | | | | |");
        }
        for x in rows {
            let l = &x.load;
            let name = if upstream.is_none() && x.contestant == "bastion" && x.upstream == "http" {
                "bastion (http upstream)".to_string()
            } else {
                x.contestant.to_string()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                name,
                mode(l),
                l.calls_per_s,
                ms(l.latency.p50_us),
                ms(l.latency.p99_us),
                ms(l.latency.p999_us),
                errors(l),
                opt1(x.gateway_cpu_us_per_call),
                opt1(x.tree_cpu_us_per_call),
                mib(x.gateway_peak_rss_kib),
                mib(x.tree_peak_rss_kib),
                opt1(x.steal_percent),
            );
        }
    }
    authz_section(r, &mut s);
    audit_section(r, &mut s);
    guard_section(r, &mut s);
    limits_section(r, &mut s);
    replicas_section(r, &mut s);
    let _ = writeln!(s, "\n## e. idle sessions\n");
    let _ = writeln!(
        s,
        "| contestant | sessions opened | failed | open time s | RSS before → after (MiB) | per session | still answering | processes |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---:|---:|---:|");
    if r.idle.is_empty() {
        let _ = writeln!(s, "| (not run) | | | | | | | |");
    }
    for i in &r.idle {
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {:.1} | {} → {} | {} | {}/{} | {} |",
            i.contestant,
            i.note.as_ref().map_or(String::new(), |n| format!(" ({n})")),
            i.opened,
            i.failed,
            i.open_seconds,
            mib(i.rss_before_kib),
            mib(i.rss_after_kib),
            i.bytes_per_session.map_or("–".into(), |b| format!("{:.1} KiB", b / 1024.0)),
            i.still_alive,
            i.checked,
            i.processes_after,
        );
    }
    let _ = writeln!(s, "\n## Start to ready\n");
    match &r.start_to_ready {
        Some(sr) => {
            let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
            let all: Vec<f64> = sr.all_tools_ms.iter().flatten().copied().collect();
            let _ = writeln!(
                s,
                "`bastion serve` with {} stdio servers: first 200 on `/readyz` after {} ms; \
                 every server's tools listed after {} ms.",
                sr.servers,
                list(&sr.readyz_ms),
                if all.is_empty() { "–".into() } else { list(&all) }
            );
        }
        None => {
            let _ = writeln!(s, "(not measured)");
        }
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(s, "\n## Skipped\n");
        for k in &r.skipped {
            let reason = k.reason.lines().next().unwrap_or("");
            let _ = writeln!(s, "- {} ({} upstream), scenario {}: {}", k.contestant, k.upstream, k.scenario, reason);
        }
    }
    s
}

fn signed(v: f64, decimals: usize) -> String {
    format!("{}{v:.decimals$}", if v > 0.0 { "+" } else { "" })
}

/// One line per soak interval, for progress output.
pub fn soak_interval_line(i: &crate::soak::Interval) -> String {
    format!(
        "interval {}{}: {} calls ({:.0}/s), {} errors, {} faults, p50 {} ms, p99 {} ms; gateway RSS {} MiB, {} fds, {} threads",
        i.index,
        if i.warmup { " (warm-up)" } else { "" },
        i.calls,
        i.calls_per_s,
        i.errors,
        i.faults,
        ms(i.latency.p50_us),
        ms(i.latency.p99_us),
        mib(i.gateway.rss_kib),
        i.gateway.fds.map_or("?".into(), |f| f.to_string()),
        i.gateway.threads,
    )
}

fn drift_line(name: &str, d: Option<&crate::soak::Drift>, unit: &str, scale: f64, decimals: usize) -> String {
    match d {
        Some(d) => format!(
            "| {name} | {:.decimals$} | {:.decimals$} | {} | {} |",
            d.first / scale,
            d.last / scale,
            signed(d.delta / scale, decimals),
            d.slope_per_min.map_or("–".into(), |s| format!("{} {unit}/min", signed(s / scale, decimals + 1))),
        ),
        None => format!("| {name} | – | – | – | – |"),
    }
}

/// Minutes as given on the command line: `5`, `0.2`.
fn minutes_arg(m: f64) -> String {
    let s = format!("{m:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The soak report.
pub fn soak_markdown(r: &crate::soak::SoakReport) -> String {
    let mut s = String::new();
    let st = &r.settings;
    let minutes = st.duration.as_secs_f64() / 60.0;
    let _ = writeln!(
        s,
        "# Soak: {minutes:.1} minutes{}\n",
        if r.smoke { " (smoke run: checks the harness, measures nothing)" } else { "" }
    );
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} × {}, {} MiB memory, Linux {}. {} binaries{}. Generated by `scripts/bench {}` (unix time {}).\n",
        m.nproc,
        m.cpu_model,
        m.memory_mib,
        m.kernel,
        r.binaries,
        r.revision.as_ref().map_or(String::new(), |v| format!(" built from {v}")),
        if r.smoke { "--soak-smoke".to_string() } else { format!("--soak {}", minutes_arg(minutes)) },
        r.unix_time
    );
    let w = &r.workers;
    let _ = writeln!(
        s,
        "Load: {:.0} requests/s paced over {} session-era (2025-11-25) and {} stateless (2026-07-28) workers, \
         spread over the stdio server (`/mcp/echo`), the Streamable HTTP server (`/mcp/echo-http`) and the \
         aggregate (`/mcp`). Session-era workers hold a `GET` stream and end their session with `DELETE` \
         every {:.0} s; one more worker runs a fault every {:.1} s (call timed out by the gateway at its \
         {:.0} s `callTimeout`, cancelled with `notifications/cancelled`, abandoned by the client). \
         Sampled every {:.1} s; the first interval is the warm-up. Latency in ms over every request but the faults. \
         `gw CPU %` is the gateway's CPU time as a share of one core; `machine busy %` counts everything on the \
         machine, the load generator and the upstreams included.\n",
        st.rate,
        w["session"],
        w["stateless"],
        st.churn_every.as_secs_f64(),
        st.fault_every.as_secs_f64(),
        st.call_timeout.as_secs_f64(),
        st.interval.as_secs_f64(),
    );
    let _ = writeln!(s, "## Verdict\n");
    if r.failures.is_empty() {
        let _ = writeln!(s, "Passed: no unexpected error; the gateway stopped cleanly.\n");
    } else {
        for f in &r.failures {
            let _ = writeln!(s, "- **failed**: {f}");
        }
        let _ = writeln!(s);
    }

    let _ = writeln!(s, "## Intervals\n");
    let _ = writeln!(
        s,
        "| # | end s | calls | calls/s | errors | faults | p50 | p99 | max | RSS MiB | fds | threads | tree RSS MiB | processes | gw CPU % | gw µs/call | machine busy % | steal % | sessions +/− | log warn/error |"
    );
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    let b = &r.baseline;
    let _ = writeln!(
        s,
        "| start | {:.1} | | | | | | | | {} | {} | {} | {} | {} | | | | | | |",
        b.t_s,
        mib(b.rss_kib),
        b.fds.map_or("?".into(), |f| f.to_string()),
        b.threads,
        mib(b.tree_rss_kib),
        b.processes
    );
    for i in &r.intervals {
        let g = &i.gateway;
        let _ = writeln!(
            s,
            "| {}{} | {:.1} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | +{} / −{} | {} / {} |",
            i.index,
            if i.warmup { " (warm-up)" } else { "" },
            i.end_s,
            i.calls,
            i.calls_per_s,
            i.errors,
            i.faults,
            ms(i.latency.p50_us),
            ms(i.latency.p99_us),
            ms(i.latency.max_us),
            mib(g.rss_kib),
            g.fds.map_or("?".into(), |f| f.to_string()),
            g.threads,
            mib(g.tree_rss_kib),
            g.processes,
            opt1(i.gateway_cpu_percent),
            opt1(i.gateway_cpu_us_per_call),
            opt1(i.machine_busy_percent),
            opt1(i.steal_percent),
            i.sessions_opened,
            i.sessions_closed,
            i.log_warnings,
            i.log_errors,
        );
    }
    let a = &r.after_close;
    let _ = writeln!(
        s,
        "| all closed | {:.1} | | | | | | | | {} | {} | {} | {} | {} | | | | | | |",
        a.t_s,
        mib(a.rss_kib),
        a.fds.map_or("?".into(), |f| f.to_string()),
        a.threads,
        mib(a.tree_rss_kib),
        a.processes
    );

    let _ = writeln!(
        s,
        "\n`start`: before the load; `all closed`: one second after every session was closed and every client \
         connection dropped (descriptors against the start: {}).",
        signed(a.fds.unwrap_or(0) as f64 - b.fds.unwrap_or(0) as f64, 0)
    );
    let _ = writeln!(s, "\n### The gateway's descriptors by kind\n");
    let mut kinds: Vec<&String> = std::iter::once(b)
        .chain(r.intervals.iter().map(|i| &i.gateway))
        .chain(std::iter::once(a))
        .flat_map(|p| p.fd_kinds.keys())
        .collect();
    kinds.sort();
    kinds.dedup();
    let _ = writeln!(s, "| | {} |", kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(kinds.len()));
    let rows = std::iter::once(("start".to_string(), b))
        .chain(r.intervals.iter().map(|i| (format!("{}", i.index), &i.gateway)))
        .chain(std::iter::once(("all closed".to_string(), a)));
    for (name, p) in rows {
        let cells: Vec<String> = kinds.iter().map(|k| p.fd_kinds.get(*k).copied().unwrap_or(0).to_string()).collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    }
    let d = &r.drift;
    let _ = writeln!(
        s,
        "\n## Drift after warm-up\n\nFrom the end of the warm-up interval ({:.1} s) to the last sample ({:.1} s); \
         the slope is a least-squares fit over every sample in between.\n",
        d.from_s, d.to_s
    );
    let _ = writeln!(s, "| gateway | first | last | last − first | slope |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    let _ = writeln!(s, "{}", drift_line("RSS (MiB)", d.rss_kib.as_ref(), "MiB", 1024.0, 2));
    let _ = writeln!(s, "{}", drift_line("open descriptors", d.fds.as_ref(), "fds", 1.0, 0));
    let _ = writeln!(s, "{}", drift_line("threads", d.threads.as_ref(), "threads", 1.0, 0));
    let _ = writeln!(s, "{}", drift_line("RSS with the stdio server (MiB)", d.tree_rss_kib.as_ref(), "MiB", 1024.0, 2));

    let t = &r.totals;
    let _ = writeln!(s, "\n## Totals\n");
    let _ = writeln!(
        s,
        "{} requests, {} ok ({} session-era, {} stateless), {} unexpected errors; p50 {} ms, p90 {} ms, p99 {} ms, \
         max {} ms. {} sessions opened and {} closed with `DELETE`; {} `GET` streams opened, {} of them seen to \
         end with their session's `DELETE`. Processes under the gateway: {} at most at once, {} over the run ({}).\n",
        t.calls,
        t.ok,
        t.session_ok,
        t.stateless_ok,
        t.errors,
        ms(t.latency.p50_us),
        ms(t.latency.p90_us),
        ms(t.latency.p99_us),
        ms(t.latency.max_us),
        t.sessions_opened,
        t.sessions_closed,
        t.get_streams_opened,
        t.get_streams_ended_by_delete,
        r.children_at_once,
        r.children_seen.len(),
        r.children_seen.join(", "),
    );
    let _ = writeln!(s, "| era | request | ok | errors | p50 | p99 | max |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for o in &t.per_op {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            match o.era {
                crate::soak::Era::Session => "2025-11-25",
                crate::soak::Era::Stateless => "2026-07-28",
            },
            o.op,
            o.ok,
            o.errors,
            ms(o.latency.p50_us),
            ms(o.latency.p99_us),
            ms(o.latency.max_us),
        );
    }
    let _ = writeln!(s, "\n### Faults that ended as expected\n");
    if t.faults_by_kind.is_empty() {
        let _ = writeln!(s, "(none)");
    }
    for (k, v) in &t.faults_by_kind {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s, "\n### Unexpected errors\n");
    if t.errors_by_kind.is_empty() {
        let _ = writeln!(s, "None.");
    }
    for (k, v) in &t.errors_by_kind {
        let _ = writeln!(s, "- {k}: {v}");
    }
    if !t.error_samples.is_empty() {
        let _ = writeln!(s, "\nFirst ones:\n");
        for e in &t.error_samples {
            let _ = writeln!(s, "- {e}");
        }
    }
    let sh = &r.shutdown;
    let _ = writeln!(s, "\n## Shutdown\n");
    let _ = writeln!(
        s,
        "SIGTERM with every session closed: {} after {}; {} processes of its tree left{}.",
        sh.status,
        sh.exit_ms.map_or("–".into(), |v| format!("{v:.0} ms")),
        sh.leftover_processes,
        if sh.clean { "" } else { " (**not clean**)" }
    );
    let _ = writeln!(s, "\n## Gateway log\n");
    let _ = writeln!(s, "{} WARN and {} ERROR lines (log level `warn`).", r.log.warnings, r.log.errors);
    if !r.log.samples.is_empty() {
        let _ = writeln!(s);
        for l in &r.log.samples {
            let _ = writeln!(s, "- `{}`", l.replace('`', "'"));
        }
    }
    s
}
