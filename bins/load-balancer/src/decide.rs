//! `load-balancer decide`: replays JSON lines of observations through the
//! decision core, offline (rtc-replay does the work).

use crate::args::{DecideArgs, Format};
use anyhow::Context;
use rtc_decision::Engine;
use std::io::Write;

pub(crate) fn run(args: &DecideArgs) -> anyhow::Result<()> {
    let engine = Engine::new(args.policy.input().policy()?)?;
    let format = match args.format {
        Format::Json => rtc_replay::Format::Json,
        Format::Timeline => rtc_replay::Format::Timeline,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut err = std::io::stderr().lock();
    let summary = match args.input.as_deref() {
        Some(p) if p.as_os_str() != "-" => {
            let f = std::fs::File::open(p)
                .with_context(|| format!("opening replay input {}", p.display()))?;
            let input = std::io::BufReader::new(f);
            rtc_replay::replay(engine, input, &mut out, &mut err, format)?
        }
        _ => rtc_replay::replay(engine, std::io::stdin().lock(), &mut out, &mut err, format)?,
    };
    out.flush()?;
    if summary.skipped > 0 {
        writeln!(
            err,
            "decide: {} of {} lines skipped as invalid (see above)",
            summary.skipped, summary.lines
        )?;
    }
    Ok(())
}
