//! Showing the run: a live screen on a terminal (ratatui), plain progress
//! lines otherwise.

use std::io::{IsTerminal, Stdout};
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

use crate::observe::View;

/// The live screen's terminal; dropping it leaves the alternate screen.
pub struct Screen(Terminal<CrosstermBackend<Stdout>>);

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Screen")
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(self.0.backend_mut(), LeaveAlternateScreen);
        let _ = self.0.show_cursor();
    }
}

/// How the run is shown.
#[derive(Debug)]
pub enum Display {
    /// The live screen.
    Live(Box<Screen>),
    /// A line every few seconds.
    Lines {
        /// Seconds between lines.
        every: u64,
        /// When the last line was printed, seconds since the start.
        last: Option<u64>,
    },
}

/// One line of the run so far, for plain output.
pub fn line(elapsed: Duration, view: &View) -> String {
    let s = &view.sample;
    let p95 = s.nodes.iter().map(|n| n.p95_ms).fold(0.0, f64::max);
    let conns: u64 = s.nodes.iter().map(|n| n.conn).sum();
    let last = view
        .decisions
        .iter()
        .find(|d| d.action != "hold")
        .map_or_else(String::new, |d| {
            format!(
                " | last step: {} {} -> {} ({}, {})",
                d.action, d.from, d.to, d.urgency, d.reason
            )
        });
    format!(
        "[demo] {:>4}s {:<8} load {} conns, {} sent | replicas wanted {} ready {} | pods report {} conns, p95 max {:.0} ms | leader {} | draining {}{}",
        elapsed.as_secs(),
        s.load.phase.as_deref().unwrap_or("grace"),
        s.load.open,
        s.load.sent,
        s.wanted.map_or("-".into(), |w| w.to_string()),
        s.ready.map_or("-".into(), |r| r.to_string()),
        conns,
        p95,
        s.leader.as_deref().unwrap_or("none"),
        view.drains.len(),
        last
    )
}

impl Display {
    /// The live screen when standard output is a terminal and `plain` is
    /// not asked for; else lines every `every` seconds.
    pub fn new(plain: bool, every: u64) -> Self {
        let lines = Self::Lines { every, last: None };
        if plain || !std::io::stdout().is_terminal() {
            return lines;
        }
        let mut out = std::io::stdout();
        if execute!(out, EnterAlternateScreen).is_err() {
            return lines;
        }
        match Terminal::new(CrosstermBackend::new(out)) {
            Ok(t) => Self::Live(Box::new(Screen(t))),
            Err(_) => lines,
        }
    }

    /// Shows `view` after `elapsed` of `total`.
    pub fn show(&mut self, elapsed: Duration, total: Duration, view: &View) {
        match self {
            Self::Lines { every, last } => {
                let now = elapsed.as_secs();
                if last.is_none_or(|l| now >= l + *every) {
                    *last = Some(now);
                    println!("{}", line(elapsed, view));
                }
            }
            Self::Live(screen) => {
                let _ = screen.0.draw(|frame| live(frame, elapsed, total, view));
            }
        }
    }

    /// Leaves the live screen, if any (dropping the [`Screen`]); nothing
    /// more is shown.
    pub fn finish(&mut self) {
        *self = Self::Lines {
            every: u64::MAX,
            last: None,
        };
    }
}

fn live(frame: &mut ratatui::Frame<'_>, elapsed: Duration, total: Duration, view: &View) {
    let s = &view.sample;
    let [head, pods, decisions] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Min(6),
        Constraint::Length(11),
    ])
    .areas(frame.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let header = vec![
        Line::from(vec![
            Span::styled("rtc-autoscale demo", bold),
            Span::raw(format!(
                "   {}s of about {}s   phase {}",
                elapsed.as_secs(),
                total.as_secs(),
                s.load.phase.as_deref().unwrap_or("grace")
            )),
        ]),
        Line::from(format!(
            "load: {} connections open (profile wants {}), {} messages sent, {} received",
            s.load.open, s.load.wanted, s.load.sent, s.load.received
        )),
        Line::from(vec![
            Span::raw("replicas: wanted "),
            Span::styled(s.wanted.map_or("-".into(), |w| w.to_string()), bold),
            Span::raw(format!(
                ", ready {}   leader: {}   draining: {}",
                s.ready.map_or("-".into(), |r| r.to_string()),
                s.leader.as_deref().unwrap_or("none"),
                if view.drains.is_empty() {
                    "none".to_owned()
                } else {
                    view.drains.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )),
        ]),
        Line::from("Ctrl-C stops the run and removes the fleet"),
    ];
    frame.render_widget(
        Paragraph::new(header).block(Block::default().borders(Borders::ALL)),
        head,
    );
    let rows = s.nodes.iter().map(|n| {
        let style = if n.draining {
            Style::default().fg(Color::Yellow)
        } else if n.cpu > 0.8 || n.p95_ms > 500.0 {
            Style::default().fg(Color::Red)
        } else {
            Style::default()
        };
        Row::new(vec![
            n.pod.clone(),
            n.conn.to_string(),
            format!("{:.0}%", n.cpu * 100.0),
            format!("{:.0}%", n.mem * 100.0),
            format!("{:.0}", n.mps),
            format!("{:.0} ms", n.p95_ms),
            if n.draining { "draining" } else { "" }.to_owned(),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Min(28),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(["pod", "conns", "cpu", "mem", "msg/s", "p95", ""]).style(bold))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("socket pods (their latest heartbeats)"),
            ),
        pods,
    );
    let lines: Vec<Line> = view
        .decisions
        .iter()
        .map(|d| {
            let style = match d.action.as_str() {
                "scale_out" => Style::default().fg(Color::Red),
                "scale_in" => Style::default().fg(Color::Cyan),
                _ => Style::default(),
            };
            Line::styled(
                format!(
                    "{} -> {} {} [{}] {}",
                    d.from, d.to, d.outcome, d.urgency, d.explanation
                ),
                style,
            )
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title("latest decisions of the leader, newest first"),
        ),
        decisions,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DecisionEntry, Load, NodeFigures, Sample};

    #[test]
    fn a_plain_line_says_load_replicas_leader_and_the_last_step() {
        let mut view = View {
            sample: Sample {
                wanted: Some(4),
                ready: Some(3),
                leader: Some("load-balancer-x".into()),
                load: Load {
                    phase: Some("burst".into()),
                    open: 600,
                    sent: 1200,
                    ..Load::default()
                },
                nodes: vec![NodeFigures {
                    conn: 300,
                    p95_ms: 41.6,
                    ..NodeFigures::default()
                }],
                ..Sample::default()
            },
            ..View::default()
        };
        view.decisions.push_front(DecisionEntry {
            action: "scale_out".into(),
            from: 2,
            to: 4,
            urgency: "critical".into(),
            reason: "capacity".into(),
            ..DecisionEntry::default()
        });
        let text = line(Duration::from_secs(42), &view);
        let mut display = Display::new(true, 5);
        display.show(Duration::from_secs(1), Duration::from_secs(9), &view);
        display.finish();
        display.finish();
        assert!(matches!(
            display,
            Display::Lines {
                every: u64::MAX,
                ..
            }
        ));
        assert_eq!(
            text,
            "[demo]   42s burst    load 600 conns, 1200 sent | replicas wanted 4 ready 3 | pods report 300 conns, p95 max 42 ms | leader load-balancer-x | draining 0 | last step: scale_out 2 -> 4 (critical, capacity)"
        );
    }
}
