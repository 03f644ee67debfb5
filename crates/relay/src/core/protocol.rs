//! The wire protocol between clients and the node (see
//! `docs/socket-protocol.md`): what clients send, what the node sends, the
//! close codes, the ack statuses and the checks on client ids. Pure.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest client id accepted.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Close codes the node uses, with the reason text sent beside each.
pub mod close {
    /// 1000: normal closure (the client closed first).
    pub const NORMAL: u16 = 1000;
    /// 1003: the node does not accept binary frames.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// 1008: policy violation: a bad client id, or a flood.
    pub const POLICY: u16 = 1008;
    /// 1009: a frame larger than the node accepts.
    pub const TOO_BIG: u16 = 1009;
    /// 1011: the node failed internally.
    pub const INTERNAL: u16 = 1011;
    /// 1012: the node is going away: reconnect (to another node).
    pub const SERVICE_RESTART: u16 = 1012;
    /// 1013: try again later: the node is full, or the client reads too slowly.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// 4000: another connection with the same client id replaced this one.
    pub const SUPERSEDED: u16 = 4000;
}

/// Checks a client id: 1 to [`MAX_CLIENT_ID_LEN`] characters from
/// `[A-Za-z0-9._~@-]`, so it is safe inside Redis keys and log lines.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'@' | b'-'))
}

/// What a client sends: a message for another client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Send<'a> {
    to: Option<String>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(rename = "ref")]
    reference: Option<String>,
}

/// A parsed, checked client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The recipient.
    pub to: String,
    /// The body, as JSON text, untouched.
    pub body: String,
    /// The client's own reference, echoed in the ack or error.
    pub reference: Option<String>,
}

/// Why a client frame was refused (the connection stays open).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, not an object, or with unknown fields.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A required field is missing.
    #[error("missing field {0:?}")]
    Missing(&'static str),
    /// The recipient is not a valid client id.
    #[error("recipient {0:?} is not a valid client id")]
    BadRecipient(String),
    /// The reference is too long.
    #[error("ref is longer than {MAX_CLIENT_ID_LEN} characters")]
    BadReference,
}

impl FrameError {
    /// The `code` field of the error frame; also the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Missing(_) => "missing_field",
            Self::BadRecipient(_) => "bad_recipient",
            Self::BadReference => "bad_ref",
        }
    }
}

/// Parses a text frame from a client.
///
/// # Errors
///
/// [`FrameError`] saying what is wrong; never panics, whatever the text.
pub fn parse_outgoing(text: &str) -> Result<Outgoing, FrameError> {
    let send: Send<'_> =
        serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let to = send.to.ok_or(FrameError::Missing("to"))?;
    let body = send.body.ok_or(FrameError::Missing("body"))?;
    if !valid_client_id(&to) {
        return Err(FrameError::BadRecipient(
            to.chars().take(MAX_CLIENT_ID_LEN).collect(),
        ));
    }
    if send
        .reference
        .as_ref()
        .is_some_and(|r| r.len() > MAX_CLIENT_ID_LEN)
    {
        return Err(FrameError::BadReference);
    }
    Ok(Outgoing {
        to,
        body: body.get().to_owned(),
        reference: send.reference,
    })
}

/// A message frame, as sent to the recipient. Also the value of Kafka
/// records and of offline-buffer entries, so relaying never re-encodes it.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageFrame<'a> {
    /// Always `"message"`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Unique id: `<node>/<boot>/<sequence>`.
    pub id: &'a str,
    /// The sender's client id.
    pub from: &'a str,
    /// The recipient's client id.
    pub to: &'a str,
    /// When the sending node accepted it, ms since the Unix epoch.
    pub sent_ms: u64,
    /// The sender's body, untouched.
    #[serde(borrow)]
    pub body: &'a RawValue,
}

/// The parts of a stored message frame the node needs to route it.
#[derive(Debug, Deserialize)]
pub struct FrameHead {
    /// The recipient.
    pub to: String,
    /// When it was sent.
    pub sent_ms: u64,
}

/// Encodes a message frame. `body` must be valid JSON (it is, when it comes
/// from [`parse_outgoing`]).
pub fn message_frame(id: &str, from: &str, to: &str, sent_ms: u64, body: &str) -> Option<String> {
    let body: &RawValue = serde_json::from_str(body).ok()?;
    serde_json::to_string(&MessageFrame {
        kind: "message",
        id,
        from,
        to,
        sent_ms,
        body,
    })
    .ok()
}

/// Reads the routing fields of a stored message frame.
pub fn frame_head(frame: &str) -> Option<FrameHead> {
    serde_json::from_str(frame).ok()
}

/// Where a sent message went, as reported in the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Handed to the recipient's connection on this node.
    Delivered,
    /// Published to the delivery topic of the recipient's node.
    Relayed,
    /// The recipient is offline: kept in its buffer.
    Buffered,
}

impl Status {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Relayed => "relayed",
            Self::Buffered => "buffered",
        }
    }
}

/// Frames the node sends other than messages.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control<'a> {
    /// First frame on every connection.
    Welcome {
        /// The client's id, as the node understood it.
        client_id: &'a str,
        /// The node serving it.
        node: &'a str,
    },
    /// A sent message was accepted.
    Ack {
        /// The message id the recipient will see.
        id: &'a str,
        /// The client's reference, if it gave one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// Where it went.
        status: Status,
    },
    /// A frame was refused; the connection stays open unless a close follows.
    Error {
        /// A fixed code (see the protocol document).
        code: &'a str,
        /// Human-readable detail.
        message: &'a str,
        /// The client's reference, if it gave one.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// The node is draining: reconnect after `retry_after_ms`; a close 1012
    /// follows.
    Reconnect {
        /// How long to wait before reconnecting.
        retry_after_ms: u64,
    },
}

impl Control<'_> {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_checked() {
        assert!(valid_client_id("alice"));
        assert!(valid_client_id("user-1.dev_2~x@y"));
        assert!(!valid_client_id(""));
        assert!(!valid_client_id("a b"));
        assert!(!valid_client_id("a:b"));
        assert!(!valid_client_id("ä"));
        assert!(!valid_client_id(&"x".repeat(129)));
        assert!(valid_client_id(&"x".repeat(128)));
    }

    #[test]
    fn a_good_message_parses_and_keeps_its_body_untouched() {
        let out = parse_outgoing(r#"{"to":"bob","body":{"b":[1, 2]},"ref":"r1"}"#)
            .expect("valid message");
        assert_eq!(out.to, "bob");
        assert_eq!(out.body, r#"{"b":[1, 2]}"#);
        assert_eq!(out.reference.as_deref(), Some("r1"));
        let frame = message_frame("n/b/1", "alice", "bob", 42, &out.body).expect("frame");
        assert_eq!(
            frame,
            r#"{"type":"message","id":"n/b/1","from":"alice","to":"bob","sent_ms":42,"body":{"b":[1, 2]}}"#
        );
        let head = frame_head(&frame).expect("head");
        assert_eq!((head.to.as_str(), head.sent_ms), ("bob", 42));
    }

    #[test]
    fn bad_frames_get_clear_codes() {
        let code = |text: &str| parse_outgoing(text).err().map(|e| e.code());
        assert_eq!(code("not json"), Some("malformed"));
        assert_eq!(code("[]"), Some("malformed"));
        assert_eq!(code("null"), Some("malformed"));
        assert_eq!(code(r#"{"to":"b","body":1,"x":2}"#), Some("malformed"));
        assert_eq!(code(r#"{"to":5,"body":1}"#), Some("malformed"));
        assert_eq!(code(r#"{"body":1}"#), Some("missing_field"));
        assert_eq!(code(r#"{"to":"b"}"#), Some("missing_field"));
        assert_eq!(code(r#"{"to":"b c","body":1}"#), Some("bad_recipient"));
        assert_eq!(code(r#"{"to":"","body":1}"#), Some("bad_recipient"));
        let long_ref = format!(r#"{{"to":"b","body":1,"ref":"{}"}}"#, "r".repeat(200));
        assert_eq!(code(&long_ref), Some("bad_ref"));
        let deep = format!(
            r#"{{"to":"b","body":{}1{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        // Deep nesting is passed over without recursion (and without panic).
        let _ = code(&deep);
    }

    #[test]
    fn control_frames_encode_as_documented() {
        assert_eq!(
            Control::Reconnect {
                retry_after_ms: 250
            }
            .encode(),
            r#"{"type":"reconnect","retry_after_ms":250}"#
        );
        assert_eq!(
            Control::Ack {
                id: "i",
                reference: None,
                status: Status::Buffered
            }
            .encode(),
            r#"{"type":"ack","id":"i","status":"buffered"}"#
        );
        assert_eq!(
            Control::Error {
                code: "malformed",
                message: "m",
                reference: Some("r")
            }
            .encode(),
            r#"{"type":"error","code":"malformed","message":"m","ref":"r"}"#
        );
    }
}
