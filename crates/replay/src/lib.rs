//! Offline replay of recorded observations through the decision core: the
//! engine of `load-balancer decide`.
//!
//! The input is JSON lines in the replay format of
//! [`rtc_decision::replay`] (one observation a line, state carried from
//! line to line); [`replay`] writes one decision a line in the same
//! format, or a readable [`Format::Timeline`].
//!
//! What it promises:
//! - **A bad line never ends the replay.** A line that is not a valid
//!   observation, or longer than [`MAX_LINE_BYTES`], is reported on the
//!   error stream with its line number and skipped; the state carries on
//!   over it. Blank lines are ignored.
//! - **Bounded memory.** An over-long line is read through, not buffered.
//! - **The same decisions as the load-balancer.** It steps the same
//!   [`Engine`] with the time each line gives.
//!
//! # Example
//!
//! ```
//! use rtc_decision::{Engine, Policy};
//! use rtc_replay::{Format, replay};
//!
//! let line = r#"{"now_ms":0,"replicas":5,"nodes":[{"id":"socket-0","cpu":0.75,"mem":0.8,"conn":900,"mps":40.0,"p95_ms":120.0,"lag_ms":15.0,"age_ms":1000,"draining":false}]}"#;
//! let (mut out, mut err) = (Vec::new(), Vec::new());
//! let summary = replay(Engine::new(Policy::default())?, line.as_bytes(), &mut out, &mut err, Format::Json)?;
//! assert_eq!(summary.scale_outs, 1);
//! assert!(String::from_utf8_lossy(&out).starts_with(r#"{"action":"scale_out""#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rtc_decision::replay::{ReplayInput, ReplayOutput, Replayer};
use rtc_decision::{Action, Decision, Engine};
use std::io::{BufRead, Write};

/// Lines longer than this are reported and skipped rather than buffered.
pub const MAX_LINE_BYTES: u64 = 16 * 1024 * 1024;

/// How decisions are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per input line, in the replay format.
    Json,
    /// A readable timeline: every scaling decision with its explanation,
    /// and every change of hold reason.
    Timeline,
}

/// What a replay went through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Lines read, blank and skipped ones included.
    pub lines: u64,
    /// Lines decided.
    pub decided: u64,
    /// Lines skipped as invalid.
    pub skipped: u64,
    /// Scale-out decisions.
    pub scale_outs: u64,
    /// Scale-in decisions.
    pub scale_ins: u64,
    /// Rebalance decisions (only with the rule switched on).
    pub rebalances: u64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Reading the input or writing the output or the error stream failed.
    #[error("replay i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A decision could not be written as JSON.
    #[error("writing a decision as json: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ReplayError {
    /// A short, fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Encode(_) => "encode",
        }
    }
}

/// Reads one line of at most `MAX_LINE_BYTES`; `Ok(None)` at the end.
/// An over-long line is consumed to its end and reported as `Err(len)`.
fn next_line(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<(), u64>>> {
    buf.clear();
    let n = std::io::Read::take(&mut *input, MAX_LINE_BYTES + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && n as u64 > MAX_LINE_BYTES {
        let mut total = n as u64;
        let mut sink = Vec::new();
        loop {
            sink.clear();
            let m = std::io::Read::take(&mut *input, 64 * 1024).read_until(b'\n', &mut sink)?;
            total += m as u64;
            if m == 0 || sink.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some(Err(total)));
    }
    Ok(Some(Ok(())))
}

/// Replays `input` into `out`; bad lines are reported on `err` with their
/// line number and skipped.
///
/// # Errors
///
/// [`ReplayError`] when reading or writing fails; invalid lines are not
/// errors.
pub fn replay(
    engine: Engine,
    mut input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
    format: Format,
) -> Result<Summary, ReplayError> {
    let mut replayer = Replayer::new(engine);
    let mut summary = Summary::default();
    let mut timeline = Timeline::default();
    let mut buf = Vec::new();
    while let Some(line) = next_line(&mut input, &mut buf)? {
        summary.lines += 1;
        let lineno = summary.lines;
        if let Err(len) = line {
            summary.skipped += 1;
            writeln!(
                err,
                "line {lineno}: skipped: {len} bytes is longer than the {MAX_LINE_BYTES}-byte limit for one line"
            )?;
            continue;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: ReplayInput = match serde_json::from_slice(&buf) {
            Ok(v) => v,
            Err(e) => {
                summary.skipped += 1;
                writeln!(err, "line {lineno}: skipped: {e}")?;
                continue;
            }
        };
        let decision = replayer.step(&parsed);
        summary.decided += 1;
        match decision.action {
            Action::ScaleOut => summary.scale_outs += 1,
            Action::ScaleIn => summary.scale_ins += 1,
            Action::Rebalance => summary.rebalances += 1,
            Action::Hold => {}
        }
        match format {
            Format::Json => {
                serde_json::to_writer(&mut *out, &ReplayOutput::from(&decision))?;
                out.write_all(b"\n")?;
            }
            Format::Timeline => timeline.write(out, &decision)?,
        }
    }
    if format == Format::Timeline {
        timeline.finish(out, &summary)?;
    }
    Ok(summary)
}

/// Turns decisions into a readable timeline: scaling decisions in full,
/// holds only when their reason changes.
#[derive(Debug, Default)]
struct Timeline {
    start_ms: Option<u64>,
    last_reason: Option<(rtc_decision::Reason, rtc_decision::Urgency)>,
    first_replicas: Option<u32>,
    last_to: Option<u32>,
    peak: u32,
}

impl Timeline {
    fn write(&mut self, out: &mut impl Write, d: &Decision) -> std::io::Result<()> {
        let start = *self.start_ms.get_or_insert(d.now_ms);
        self.first_replicas.get_or_insert(d.from);
        self.last_to = Some(d.to);
        self.peak = self.peak.max(d.to).max(d.from);
        let key = (d.reason, d.urgency);
        if d.action == Action::Hold && self.last_reason == Some(key) {
            return Ok(());
        }
        self.last_reason = Some(key);
        let secs = d.now_ms.saturating_sub(start) / 1000;
        let stamp = format!("[{:>3}:{:02}]", secs / 60, secs % 60);
        let pad = " ".repeat(stamp.len());
        for (i, line) in d.explain().enumerate() {
            let lead = if i == 0 { stamp.as_str() } else { pad.as_str() };
            writeln!(out, "{lead} {line}")?;
        }
        Ok(())
    }

    fn finish(&self, out: &mut impl Write, s: &Summary) -> std::io::Result<()> {
        let rebalances = if s.rebalances > 0 {
            format!(", {} rebalances", s.rebalances)
        } else {
            String::new()
        };
        writeln!(
            out,
            "{} ticks replayed, {} scale-outs, {} scale-ins{rebalances}, replicas {} -> {} (peak {}), {} lines skipped",
            s.decided,
            s.scale_outs,
            s.scale_ins,
            self.first_replicas.map_or("-".into(), |r| r.to_string()),
            self.last_to.map_or("-".into(), |r| r.to_string()),
            self.peak,
            s.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_decision::Policy;

    const SPEC_LINE: &str = r#"{"now_ms":0,"replicas":5,"nodes":[{"id":"socket-0","cpu":0.75,"mem":0.8,"conn":900,"mps":40.0,"p95_ms":120.0,"lag_ms":15.0,"age_ms":1000,"draining":false}]}"#;

    fn run_replay(input: &str, format: Format) -> (String, String, Summary) {
        let engine = Engine::new(Policy::default()).expect("default policy");
        let mut out = Vec::new();
        let mut err = Vec::new();
        let s = replay(engine, input.as_bytes(), &mut out, &mut err, format).expect("replay");
        (
            String::from_utf8(out).expect("utf8"),
            String::from_utf8(err).expect("utf8"),
            s,
        )
    }

    #[test]
    fn the_documented_example_gives_the_documented_output() {
        let (out, err, s) = run_replay(SPEC_LINE, Format::Json);
        assert_eq!(
            out,
            "{\"action\":\"scale_out\",\"delta\":3,\"from\":5,\"to\":8,\"urgency\":\"critical\",\"reason\":\"resource-overload\",\"victim\":null}\n"
        );
        assert_eq!(err, "");
        assert_eq!(s.decided, 1);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_skipped() {
        let input = format!(
            "{SPEC_LINE}\nnot json\n{{\"now_ms\":1,\"replicas\":5}}\n\n{}\n",
            SPEC_LINE.replace("\"now_ms\":0", "\"now_ms\":5000")
        );
        let (out, err, s) = run_replay(&input, Format::Json);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(err.contains("line 2: skipped"), "{err}");
        assert!(
            err.contains("line 3: skipped: missing field `nodes`"),
            "{err}"
        );
        assert_eq!(s.skipped, 2);
        assert_eq!(s.decided, 2);
        // The state carried over the bad lines: the second spike line is a
        // recent, settling hold (1 of 5 replicas reporting), not a fresh scale-out.
        let second: serde_json::Value =
            serde_json::from_str(out.lines().nth(1).expect("second line")).expect("json");
        assert_eq!(second["action"], "hold");
        assert_eq!(second["reason"], "settling");
        assert_eq!(second["urgency"], "critical");
    }

    #[test]
    fn an_oversized_line_is_skipped_without_losing_the_next() {
        let big = "x".repeat((MAX_LINE_BYTES + 10) as usize);
        let input = format!("{big}\n{SPEC_LINE}\n");
        let (out, err, s) = run_replay(&input, Format::Json);
        assert!(err.contains("line 1: skipped"), "{err}");
        assert_eq!(out.lines().count(), 1);
        assert_eq!(s.skipped, 1);
    }

    #[test]
    fn timeline_shows_scaling_with_reasons() {
        let (out, _, _) = run_replay(SPEC_LINE, Format::Timeline);
        assert!(
            out.contains("CRITICAL: resource overload (CPU 75.0%, Mem 80.0%)"),
            "{out}"
        );
        assert!(out.contains("SCALE_OUT nodes=5->8 (+3)"), "{out}");
        assert!(out.contains("1 ticks replayed, 1 scale-outs"), "{out}");
    }

    #[test]
    fn the_bundled_sample_trace_spikes_then_calms() {
        let trace = include_str!("../../decision/examples/spike-then-calm.jsonl");
        let (out, err, s) = run_replay(trace, Format::Json);
        assert_eq!(err, "");
        assert_eq!(s.skipped, 0);
        assert!(
            s.scale_outs >= 2,
            "a spike scales out more than once: {s:?}"
        );
        assert!(s.scale_ins >= 2, "calm scales back in: {s:?}");
        let last: serde_json::Value =
            serde_json::from_str(out.lines().last().expect("output")).expect("json");
        assert_eq!(last["action"], "hold");
    }
}
