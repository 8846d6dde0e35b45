//! Human-readable tables of a load run; the JSON form is the serde view of the
//! same structs, written by the caller.

use std::fmt::Write;

use crate::histogram::Summary;
use crate::load::Outcome;

fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

pub fn latency_row(label: &str, s: &Summary) -> String {
    format!(
        "{label:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        ms(s.p50_us),
        ms(s.p90_us),
        ms(s.p99_us),
        ms(s.p999_us),
        ms(s.p9999_us),
        ms(s.max_us)
    )
}

pub fn outcome_table(o: &Outcome) -> String {
    let mut out = String::new();
    let rate = o.target_rate.map_or("max (closed loop)".to_owned(), |r| {
        format!("{r:.0} req/s (open loop)")
    });
    let _ = writeln!(
        out,
        "load: {rate}, {} {} connections, {:.1} s",
        o.connections, o.http, o.elapsed_s
    );
    let _ = writeln!(
        out,
        "requests: sent {} answered {} errors {} timeouts {} missed slots {}",
        o.sent, o.answered, o.errors, o.timeouts, o.missed_slots
    );
    let _ = writeln!(
        out,
        "throughput: {:.0} req/s answered, client CPU {:.0}% of one core",
        o.achieved_rps,
        o.client_cpu_share * 100.0
    );
    let statuses: Vec<String> = o.status.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    let _ = writeln!(out, "status: {}", statuses.join(", "));
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>9} {:>13} {:>12} {:>11} {:>11}",
        "kind",
        "sent good",
        "sent bad",
        "answered good",
        "answered bad",
        "unexpected",
        "unanswered"
    );
    for (kind, c) in &o.kinds {
        let _ = writeln!(
            out,
            "{kind:<10} {:>10} {:>9} {:>13} {:>12} {:>11} {:>11}",
            c.sent_good,
            c.sent_bad,
            c.answered_good,
            c.answered_bad,
            c.unexpected_status,
            c.unanswered
        );
    }
    let _ = writeln!(
        out,
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    let label = if o.target_rate.is_some() {
        "corrected"
    } else {
        "uncorrected"
    };
    let _ = writeln!(out, "{}", latency_row(label, &o.latency));
    let _ = writeln!(out, "{}", latency_row("service time", &o.service_time));
    if let Some(err) = &o.first_error {
        let _ = writeln!(out, "first error: {err}");
    }
    out
}
