//! The frames of docs/socket-protocol.md as the generator uses them: the
//! message it sends, the frames it reads, and why a connection ended.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ledger::{AckStatus, MsgId};

/// The client id of client `index` of run `run` (valid per the protocol:
/// `[A-Za-z0-9._~@-]`, at most 128 characters, for a run id of at most 32).
#[must_use]
pub fn client_id(run: &str, index: u32) -> String {
    format!("lg-{run}-{index}")
}

/// Whether `run` can name clients and messages: 1 to 32 characters from
/// `[A-Za-z0-9]`.
#[must_use]
pub fn valid_run_id(run: &str) -> bool {
    (1..=32).contains(&run.len()) && run.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The frame that sends message `id` to client `to`, sent `at` after the
/// run's start. The body carries the generator's id and send time; `ref`
/// repeats the id so the ack can be matched.
#[must_use]
pub fn send_frame(run: &str, id: MsgId, to: u32, at: Duration) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        lg: &'a str,
        t: u64,
    }
    #[derive(Serialize)]
    struct Send<'a> {
        to: &'a str,
        body: Body<'a>,
        #[serde(rename = "ref")]
        reference: &'a str,
    }
    let lg = id.render(run);
    let to = client_id(run, to);
    let frame = Send {
        to: &to,
        body: Body {
            lg: &lg,
            t: u64::try_from(at.as_micros()).unwrap_or(u64::MAX),
        },
        reference: &lg,
    };
    // Plain strings and integers: serialization cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// A frame from a socket node, as far as the generator cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// The first frame of a connection.
    Welcome {
        /// The node's name.
        node: String,
    },
    /// A message was accepted; `id` is the generator's id from `ref`.
    Ack {
        /// Matched from `ref`; `None` when `ref` is not one of this run's.
        id: Option<MsgId>,
        /// `None` for a status the protocol does not define.
        status: Option<AckStatus>,
    },
    /// A message for this client; `id` is the generator's id from the body.
    Message {
        /// `None` for a body that is not one of this run's.
        id: Option<MsgId>,
    },
    /// The node drains: reconnect after this long.
    Reconnect {
        /// `retry_after_ms`.
        retry_after: Duration,
    },
    /// A frame was refused.
    Error {
        /// The error code, e.g. `unavailable`.
        code: String,
        /// The refused message's id, from `ref`.
        id: Option<MsgId>,
    },
    /// Not JSON, or a type the generator does not know.
    Other,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    node: Option<Cow<'a, str>>,
    #[serde(default, rename = "ref", borrow)]
    reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
    #[serde(default, borrow)]
    body: Option<MaybeBody<'a>>,
}

/// A body of this generator's, or anything else (another sender's).
#[derive(Deserialize)]
#[serde(untagged)]
enum MaybeBody<'a> {
    Ours(#[serde(borrow)] RawBody<'a>),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct RawBody<'a> {
    #[serde(default, borrow)]
    lg: Option<Cow<'a, str>>,
}

impl ServerFrame {
    /// Reads a text frame of run `run`.
    #[must_use]
    pub fn parse(run: &str, text: &str) -> Self {
        let Ok(raw) = serde_json::from_str::<Raw<'_>>(text) else {
            return Self::Other;
        };
        let id = |r: &Option<Cow<'_, str>>| r.as_deref().and_then(|r| MsgId::parse(run, r));
        match raw.kind.as_ref() {
            "welcome" => Self::Welcome {
                node: raw.node.unwrap_or_default().into_owned(),
            },
            "ack" => Self::Ack {
                id: id(&raw.reference),
                status: raw.status.as_deref().and_then(AckStatus::parse),
            },
            "message" => Self::Message {
                id: match raw.body {
                    Some(MaybeBody::Ours(RawBody { lg: Some(lg) })) => MsgId::parse(run, &lg),
                    _ => None,
                },
            },
            "reconnect" => Self::Reconnect {
                retry_after: Duration::from_millis(raw.retry_after_ms.unwrap_or(0)),
            },
            "error" => Self::Error {
                code: raw.code.unwrap_or_default().into_owned(),
                id: id(&raw.reference),
            },
            _ => Self::Other,
        }
    }
}

/// Why a connection ended or could not be made; the keys of the summary's
/// `reconnects`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A `reconnect` frame or close 1012: the node drains.
    Drain,
    /// HTTP 503 on the upgrade: the node drains.
    Refused503,
    /// Close 1013: node full, presence store away, or reading too slowly.
    TryAgainLater,
    /// Close 1008: bad id or rate limit.
    Policy,
    /// Close 4000: another connection took this client id.
    Replaced,
    /// Any other close code.
    Closed,
    /// The connection ended without a close frame, or failed.
    Dropped,
    /// The TCP connect or the upgrade failed or timed out.
    ConnectFailed,
    /// No welcome frame in time.
    NoWelcome,
}

impl Reason {
    /// The reason of a close code.
    #[must_use]
    pub fn of_close(code: u16) -> Self {
        match code {
            1012 => Self::Drain,
            1013 => Self::TryAgainLater,
            1008 => Self::Policy,
            4000 => Self::Replaced,
            _ => Self::Closed,
        }
    }

    /// How long new connections should avoid a target that ended one for
    /// this reason: a draining or refusing node stays so for a while.
    #[must_use]
    pub fn cool_down(self) -> Option<Duration> {
        match self {
            Self::Drain | Self::Refused503 => Some(Duration::from_secs(5)),
            Self::ConnectFailed | Self::TryAgainLater => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Whether the client should connect again.
    #[must_use]
    pub fn reconnects(self) -> bool {
        self != Self::Replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_sent_frame_reads_back_as_the_recipients_message() {
        let id = MsgId { sender: 2, seq: 41 };
        let frame: serde_json::Value =
            serde_json::from_str(&send_frame("r7", id, 5, Duration::from_millis(3))).expect("json");
        assert_eq!(frame["to"], "lg-r7-5");
        assert_eq!(frame["ref"], "r7-2-41");
        assert_eq!(frame["body"]["lg"], "r7-2-41");
        assert_eq!(frame["body"]["t"], 3000);
        let message = format!(
            r#"{{"type":"message","id":"socket-1/1-2/3","from":"lg-r7-2","to":"lg-r7-5","sent_ms":1,"body":{}}}"#,
            frame["body"]
        );
        assert_eq!(
            ServerFrame::parse("r7", &message),
            ServerFrame::Message { id: Some(id) }
        );
    }

    #[test]
    fn the_nodes_frames_are_read() {
        let run = "r";
        assert_eq!(
            ServerFrame::parse(
                run,
                r#"{"type":"welcome","client_id":"a","node":"socket-3"}"#
            ),
            ServerFrame::Welcome {
                node: "socket-3".into()
            }
        );
        assert_eq!(
            ServerFrame::parse(
                run,
                r#"{"type":"ack","id":"x","ref":"r-1-2","status":"buffered"}"#
            ),
            ServerFrame::Ack {
                id: Some(MsgId { sender: 1, seq: 2 }),
                status: Some(AckStatus::Buffered)
            }
        );
        assert_eq!(
            ServerFrame::parse(run, r#"{"type":"reconnect","retry_after_ms":730}"#),
            ServerFrame::Reconnect {
                retry_after: Duration::from_millis(730)
            }
        );
        assert_eq!(
            ServerFrame::parse(
                run,
                r#"{"type":"error","code":"unavailable","message":"m","ref":"r-0-9"}"#
            ),
            ServerFrame::Error {
                code: "unavailable".into(),
                id: Some(MsgId { sender: 0, seq: 9 })
            }
        );
        assert_eq!(
            ServerFrame::parse(run, r#"{"type":"message","body":"not ours"}"#),
            ServerFrame::Message { id: None }
        );
        assert_eq!(ServerFrame::parse(run, "nope"), ServerFrame::Other);
    }

    #[test]
    fn close_codes_map_to_reasons() {
        assert_eq!(Reason::of_close(1012), Reason::Drain);
        assert_eq!(Reason::of_close(4000), Reason::Replaced);
        assert!(!Reason::Replaced.reconnects());
        assert!(Reason::of_close(1000).reconnects());
    }

    #[test]
    fn run_ids_are_checked() {
        assert!(valid_run_id("abc123"));
        assert!(!valid_run_id(""));
        assert!(!valid_run_id("a-b"));
        assert!(!valid_run_id(&"a".repeat(33)));
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in ".{0,80}") {
            let _ = ServerFrame::parse("r", &text);
        }

        #[test]
        fn client_ids_meet_the_protocol(run in "[A-Za-z0-9]{1,32}", index in any::<u32>()) {
            let id = client_id(&run, index);
            prop_assert!(id.len() <= 128);
            prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~@-".contains(&b)));
        }
    }
}
