//! Progress while a run goes: a bar on a terminal, a plain line a second
//! otherwise, or nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The state of a run, once a second.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Time since the start.
    pub elapsed: Duration,
    /// The whole profile's length.
    pub total: Duration,
    /// The running phase's name; `None` during the grace period.
    pub phase: Option<String>,
    /// Connections the schedule wants.
    pub wanted: u32,
    /// Connections open.
    pub open: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages received (first arrivals).
    pub received: u64,
    /// Messages sent and not yet received.
    pub pending: u64,
    /// Reconnects so far.
    pub reconnects: u64,
}

impl Snapshot {
    fn line(&self) -> String {
        let conns = match &self.phase {
            Some(_) => format!("{}/{}", self.open, self.wanted),
            None => self.open.to_string(),
        };
        format!(
            "{} conns {conns} sent {} acked {} received {} pending {} reconnects {}",
            self.phase.as_deref().unwrap_or("grace"),
            self.sent,
            self.acked,
            self.received,
            self.pending,
            self.reconnects
        )
    }
}

/// Receives the run's state.
pub trait Progress: Send {
    /// Called about once a second.
    fn update(&mut self, snapshot: &Snapshot);
    /// Called once at the end.
    fn finish(&mut self) {}
}

/// No progress.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn update(&mut self, _: &Snapshot) {}
}

/// A bar on standard error when it is a terminal, else plain lines.
#[derive(Debug)]
pub enum Stderr {
    /// An indicatif bar.
    Bar(ProgressBar),
    /// A line a second.
    Lines,
}

impl Stderr {
    /// A bar when standard error is a terminal, lines otherwise.
    #[must_use]
    pub fn new(total: Duration) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Lines;
        }
        let bar = ProgressBar::with_draw_target(
            Some(u64::try_from(total.as_millis()).unwrap_or(u64::MAX)),
            ProgressDrawTarget::stderr(),
        );
        let style = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        Self::Bar(bar)
    }
}

impl Progress for Stderr {
    fn update(&mut self, snapshot: &Snapshot) {
        match self {
            Self::Bar(bar) => {
                bar.set_position(u64::try_from(snapshot.elapsed.as_millis()).unwrap_or(u64::MAX));
                bar.set_message(snapshot.line());
            }
            Self::Lines => eprintln!(
                "loadgen: {:>6.1}s {}",
                snapshot.elapsed.as_secs_f64(),
                snapshot.line()
            ),
        }
    }

    fn finish(&mut self) {
        if let Self::Bar(bar) = self {
            bar.finish();
        }
    }
}
