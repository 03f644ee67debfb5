//! Draws the chart and prints the story of a recorded run again:
//! `cargo run -p rtc-demo --example redraw -- RECORD.jsonl CHART.png`.

use rtc_demo::record::{Entry, Overload, story};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(record), Some(chart)) = (args.next(), args.next()) else {
        return Err("usage: redraw RECORD.jsonl CHART.png".into());
    };
    let text = std::fs::read_to_string(&record)?;
    let entries = text
        .lines()
        .map(serde_json::from_str::<Entry>)
        .collect::<Result<Vec<_>, _>>()?;
    rtc_demo::chart::draw(&entries, std::path::Path::new(&chart), "rtc-autoscale demo")?;
    let overload = Overload {
        cpu: 0.7,
        mem: 0.75,
        conn: Some(135.0),
        mps: Some(225.0),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&story(&entries, &overload))?
    );
    Ok(())
}
