//! The once-a-second progress line of a load run on stderr (rewritten in place on a
//! terminal, one line each otherwise).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    start: Instant,
    last_at: Instant,
    last_answered: u64,
    tty: bool,
}

impl Progress {
    pub fn new(start: Instant) -> Progress {
        Progress {
            start,
            last_at: start,
            last_answered: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Prints a line if a second passed since the last (for a loop that calls it
    /// far more often than that).
    pub fn tick(&mut self, now: Instant, sent: u64, answered: u64) {
        if now.duration_since(self.last_at) >= Duration::from_secs(1) {
            self.print(now, sent, answered);
        }
    }

    /// Prints a line now, the rate over the time since the last one.
    pub fn print(&mut self, now: Instant, sent: u64, answered: u64) {
        let seconds = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let line = format!(
            "[{:5.1}s] sent {sent} answered {answered} ({:.0} req/s)",
            now.duration_since(self.start).as_secs_f64(),
            answered.saturating_sub(self.last_answered) as f64 / seconds
        );
        self.last_at = now;
        self.last_answered = answered;
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{line}   ")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    pub fn finish(self) {
        eprintln!();
    }
}
