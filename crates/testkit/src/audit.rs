//! The local stack API server's audit log: which writes reached the server,
//! who made them and what it answered.
//!
//! The stack's audit policy (`deploy/local/audit-policy.yaml`) records, one
//! JSON line per request at level Metadata, only updates and patches of
//! Deployments, StatefulSets and their `/scale`, patches of pods, and
//! creates, updates and patches of Leases. The log is written in blocking
//! mode: a request's event is in the file before its response is sent.
//!
//! An [`AuditLog`] reads the file incrementally: each read parses only the
//! lines appended since the last one, keeps the events of the namespace it
//! follows (lines of other namespaces are skipped before being parsed), and
//! holds back a partial last line until it is complete. So reading a test's
//! events right after its request costs the lines written meanwhile, not
//! the whole log of the suite.
//!
//! ```no_run
//! # async fn example(ns: &rtc_testkit::TestNamespace) -> Result<(), rtc_testkit::Error> {
//! use rtc_testkit::audit::{AuditLog, accepted_writes};
//!
//! let mut audit = AuditLog::from_end(&rtc_testkit::Endpoints::from_env().audit_log)?
//!     .namespace(ns.name());
//! // ... the code under test scales the workload ...
//! let writes = accepted_writes(audit.events()?);
//! for (key, events) in &writes {
//!     println!("{} {}: {} writes", key.user, key.resource, events.len());
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use crate::Error;

/// How often [`AuditLog::wait_for`] looks at the file again.
const POLL: Duration = Duration::from_millis(20);

/// One audit event: a request as the API server saw it, once its response
/// was complete. Only the fields tests use are read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Event {
    /// The request's unique id.
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// The stage of the request: `ResponseComplete` in the stack's log.
    pub stage: String,
    /// The Kubernetes verb: `create`, `update`, `patch`, `get`, ...
    pub verb: String,
    /// Who made the request.
    pub user: User,
    /// The object the request was about.
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    /// The answer's status.
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    /// When the server received the request.
    pub request_received_timestamp: Timestamp,
    /// When the event's stage was reached: for `ResponseComplete`, when the
    /// response was complete.
    pub stage_timestamp: Timestamp,
}

/// The user of an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct User {
    /// e.g. `system:serviceaccount:<namespace>:load-balancer` or `rtc-admin`.
    #[serde(default)]
    pub username: String,
}

/// The object an [`Event`] is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ObjectRef {
    /// The resource, plural and lowercase: `deployments`, `leases`, ...
    #[serde(default)]
    pub resource: Option<String>,
    /// The subresource: `scale`, `status`, ...
    #[serde(default)]
    pub subresource: Option<String>,
    /// The namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The object's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The API group (empty or absent for the core group).
    #[serde(default)]
    pub api_group: Option<String>,
}

/// The status of an [`Event`]'s response.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ResponseStatus {
    /// The HTTP status code.
    #[serde(default)]
    pub code: Option<u16>,
}

impl Event {
    /// The response's HTTP status code, when the server answered.
    pub fn code(&self) -> Option<u16> {
        self.response_status.as_ref().and_then(|s| s.code)
    }

    /// The server accepted the request (a 2xx answer).
    pub fn accepted(&self) -> bool {
        self.code().is_some_and(|code| (200..300).contains(&code))
    }

    /// The request changes state: `create`, `update`, `patch`, `delete` or
    /// `deletecollection`.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// The object's namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.object_ref.as_ref()?.namespace.as_deref()
    }

    /// The object's resource.
    pub fn resource(&self) -> Option<&str> {
        self.object_ref.as_ref()?.resource.as_deref()
    }

    /// The object's subresource.
    pub fn subresource(&self) -> Option<&str> {
        self.object_ref.as_ref()?.subresource.as_deref()
    }

    /// The object's name.
    pub fn name(&self) -> Option<&str> {
        self.object_ref.as_ref()?.name.as_deref()
    }

    /// The request is about `resource` and `subresource` (`None`: the
    /// resource itself), e.g. `is_about("deployments", Some("scale"))`.
    pub fn is_about(&self, resource: &str, subresource: Option<&str>) -> bool {
        self.resource() == Some(resource) && self.subresource() == subresource
    }

    /// How long the server took, from receiving the request to this event's
    /// stage (zero if the clock went backwards).
    pub fn duration(&self) -> Duration {
        self.stage_timestamp
            .duration_since(self.request_received_timestamp)
            .try_into()
            .unwrap_or_default()
    }
}

/// Who wrote what: the key of [`accepted_writes`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteKey {
    /// The user.
    pub user: String,
    /// The resource, e.g. `deployments`.
    pub resource: String,
    /// The subresource, e.g. `scale`; `None` for the resource itself.
    pub subresource: Option<String>,
}

/// The accepted writes (2xx answers) among `events`, grouped by user and
/// resource/subresource, each group in log order: its length is the count,
/// its events carry the verbs, names and timestamps.
pub fn accepted_writes<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> BTreeMap<WriteKey, Vec<&'a Event>> {
    let mut writes: BTreeMap<WriteKey, Vec<&'a Event>> = BTreeMap::new();
    for event in events {
        if !(event.is_write() && event.accepted()) {
            continue;
        }
        let key = WriteKey {
            user: event.user.username.clone(),
            resource: event.resource().unwrap_or_default().to_owned(),
            subresource: event.subresource().map(str::to_owned),
        };
        writes.entry(key).or_default().push(event);
    }
    writes
}

/// The number of accepted writes by `user` to `resource`/`subresource`
/// among `events`.
pub fn count_accepted_writes<'a>(
    events: impl IntoIterator<Item = &'a Event>,
    user: &str,
    resource: &str,
    subresource: Option<&str>,
) -> usize {
    events
        .into_iter()
        .filter(|e| {
            e.is_write()
                && e.accepted()
                && e.user.username == user
                && e.is_about(resource, subresource)
        })
        .count()
}

/// A reader of the audit log that keeps the events it has read.
///
/// Reads are incremental (see the module docs). The file is read with
/// blocking I/O, which for the few kilobytes appended between two reads of
/// a test is quicker than handing it to a thread. If the file becomes
/// shorter than what was read (a new log, begun by `deploy/local/stack up`),
/// reading starts again from its beginning.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// How far the file has been read.
    offset: u64,
    /// The last line read, when it had no newline yet.
    partial: Vec<u8>,
    /// The first line read is the rest of one that began before the reader
    /// (see [`from_end`](Self::from_end)).
    skip_first: bool,
    /// Only events of this namespace are kept.
    namespace: Option<String>,
    /// The `"namespace":"<name>"` bytes a line must hold to be parsed.
    needle: Option<Vec<u8>>,
    events: Vec<Event>,
}

impl AuditLog {
    /// A reader of the whole log at `path`, from its first line.
    ///
    /// # Errors
    ///
    /// [`Error::AuditLog`] when the file cannot be opened (the stack's API
    /// server writes it on its first recorded request).
    pub fn open(path: &Path) -> Result<Self, Error> {
        File::open(path).map_err(|e| audit_error(path, e))?;
        Ok(Self::at(path, 0, false))
    }

    fn at(path: &Path, offset: u64, skip_first: bool) -> Self {
        Self {
            path: path.to_owned(),
            offset,
            partial: Vec::new(),
            skip_first,
            namespace: None,
            needle: None,
            events: Vec::new(),
        }
    }

    /// A reader of what is written to the log at `path` from now on: make
    /// it before the requests whose events the test wants.
    ///
    /// # Errors
    ///
    /// [`Error::AuditLog`] when the file cannot be opened.
    pub fn from_end(path: &Path) -> Result<Self, Error> {
        let failed = |e| audit_error(path, e);
        let mut file = File::open(path).map_err(failed)?;
        let len = file.metadata().map_err(failed)?.len();
        // The end may be inside a line being written: that line is not
        // "from now on", so it is skipped up to its newline.
        let mut last = [b'\n'];
        if len > 0 {
            file.seek(SeekFrom::Start(len - 1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(failed)?;
        }
        Ok(Self::at(path, len, last[0] != b'\n'))
    }

    /// Keeps only the events whose object is in `namespace` (a test's own,
    /// [`TestNamespace::name`](crate::TestNamespace::name)), from the next
    /// read on.
    #[must_use]
    pub fn namespace(mut self, namespace: &str) -> Self {
        // Go's encoding/json writes no spaces, so the objectRef of an event
        // of this namespace holds exactly these bytes.
        self.needle = Some(format!("\"namespace\":\"{namespace}\"").into_bytes());
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the lines appended since the last read and returns every event
    /// kept so far, in log order.
    ///
    /// # Errors
    ///
    /// [`Error::AuditLog`] when the file cannot be read or a complete line
    /// is not an audit event.
    pub fn events(&mut self) -> Result<&[Event], Error> {
        self.read()?;
        Ok(&self.events)
    }

    /// Reads the lines appended since the last read and returns the events
    /// among them that are kept.
    ///
    /// # Errors
    ///
    /// As [`events`](Self::events).
    pub fn read_new(&mut self) -> Result<&[Event], Error> {
        let before = self.events.len();
        self.read()?;
        Ok(&self.events[before..])
    }

    /// Reads until an event kept by this reader matches `matches`, and
    /// returns it; the events read on the way are kept too.
    ///
    /// The stack writes events before it answers, so an event of a request
    /// that has returned is normally found by the first read; the wait
    /// covers a log on a slow disk.
    ///
    /// # Errors
    ///
    /// As [`events`](Self::events), and [`Error::AuditLog`] when no event
    /// matched within `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = 0;
        loop {
            self.read()?;
            if let Some(found) = self.events[seen..].iter().find(|e| matches(e)) {
                return Ok(found.clone());
            }
            seen = self.events.len();
            if tokio::time::Instant::now() >= deadline {
                let scope = match &self.namespace {
                    Some(ns) => format!(" of namespace {ns}"),
                    None => String::new(),
                };
                return Err(audit_error(
                    &self.path,
                    format!("no matching event{scope} within {timeout:?}"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn read(&mut self) -> Result<(), Error> {
        let mut file = File::open(&self.path).map_err(|e| audit_error(&self.path, e))?;
        let len = file
            .metadata()
            .map_err(|e| audit_error(&self.path, e))?
            .len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
            self.skip_first = false;
        }
        if len == self.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| audit_error(&self.path, e))?;
        let mut chunk = std::mem::take(&mut self.partial);
        let start = chunk.len();
        file.take(len - self.offset)
            .read_to_end(&mut chunk)
            .map_err(|e| audit_error(&self.path, e))?;
        self.offset += (chunk.len() - start) as u64;
        let complete = match chunk.iter().rposition(|&b| b == b'\n') {
            Some(last) => last + 1,
            None => {
                self.partial = chunk;
                return Ok(());
            }
        };
        self.partial = chunk.split_off(complete);
        let mut lines = chunk[..complete - 1].split(|&b| b == b'\n');
        if std::mem::take(&mut self.skip_first) {
            lines.next();
        }
        for line in lines {
            self.keep(line)?;
        }
        Ok(())
    }

    fn keep(&mut self, line: &[u8]) -> Result<(), Error> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if let Some(needle) = &self.needle
            && !line.windows(needle.len()).any(|w| w == needle.as_slice())
        {
            return Ok(());
        }
        let event: Event = serde_json::from_slice(line).map_err(|e| {
            audit_error(
                &self.path,
                format!(
                    "a line is not an audit event ({e}): {}",
                    String::from_utf8_lossy(line)
                ),
            )
        })?;
        if self.namespace.is_none() || event.namespace() == self.namespace.as_deref() {
            self.events.push(event);
        }
        Ok(())
    }
}

fn audit_error(path: &Path, source: impl Into<crate::error::BoxError>) -> Error {
    Error::AuditLog {
        path: path.to_owned(),
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn line(id: &str, verb: &str, ns: &str, sub: Option<&str>, code: u16) -> String {
        let subresource = sub.map_or(String::new(), |s| format!(",\"subresource\":\"{s}\""));
        format!(
            concat!(
                r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"{}","#,
                r#""stage":"ResponseComplete","requestURI":"/x","verb":"{}","#,
                r#""user":{{"username":"system:serviceaccount:{}:load-balancer","groups":["system:authenticated"]}},"#,
                r#""objectRef":{{"resource":"deployments","namespace":"{}","name":"socket","apiGroup":"apps","apiVersion":"v1"{}}},"#,
                r#""responseStatus":{{"metadata":{{}},"code":{}}},"#,
                r#""requestReceivedTimestamp":"2026-01-01T10:00:00.100000Z","stageTimestamp":"2026-01-01T10:00:00.112500Z"}}"#,
                "\n"
            ),
            id, verb, ns, ns, subresource, code
        )
    }

    struct TempLog(PathBuf);

    impl TempLog {
        fn new() -> Self {
            let path = std::env::temp_dir().join(format!("{}.log", crate::unique_name("audit")));
            std::fs::write(&path, "").expect("temporary audit log");
            Self(path)
        }

        fn append(&self, text: &str) {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.0)
                .expect("temporary audit log");
            file.write_all(text.as_bytes()).expect("append");
        }
    }

    impl Drop for TempLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn events_parse_with_their_timestamps() -> Result<(), Error> {
        let log = TempLog::new();
        log.append(&line("a", "update", "ns-1", Some("scale"), 200));
        let mut audit = AuditLog::open(&log.0)?;
        let events = audit.events()?;
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.audit_id, "a");
        assert_eq!(event.stage, "ResponseComplete");
        assert_eq!(
            event.user.username,
            "system:serviceaccount:ns-1:load-balancer"
        );
        assert!(event.is_about("deployments", Some("scale")));
        assert_eq!(event.name(), Some("socket"));
        assert_eq!(event.code(), Some(200));
        assert!(event.accepted() && event.is_write());
        assert_eq!(event.duration(), Duration::from_micros(12_500));
        Ok(())
    }

    #[test]
    fn a_partial_last_line_waits_for_its_end() -> Result<(), Error> {
        let log = TempLog::new();
        let whole = line("a", "update", "ns-1", Some("scale"), 200);
        let (head, tail) = whole.split_at(100);
        log.append(head);
        let mut audit = AuditLog::open(&log.0)?;
        assert!(audit.events()?.is_empty());
        log.append(tail);
        assert_eq!(audit.read_new()?.len(), 1);
        assert!(audit.read_new()?.is_empty(), "each line is read once");
        Ok(())
    }

    #[test]
    fn only_the_followed_namespace_is_kept() -> Result<(), Error> {
        let log = TempLog::new();
        log.append(&line("a", "update", "ns-1", Some("scale"), 200));
        log.append(&line("b", "update", "ns-2", Some("scale"), 200));
        log.append(&line("c", "update", "ns-1", Some("scale"), 409));
        // A namespace whose name is a prefix of another's is not confused with it.
        log.append(&line("d", "patch", "ns-10", None, 200));
        let mut audit = AuditLog::open(&log.0)?.namespace("ns-1");
        let ids: Vec<_> = audit
            .events()?
            .iter()
            .map(|e| e.audit_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "c"]);
        Ok(())
    }

    #[test]
    fn from_end_sees_only_later_lines() -> Result<(), Error> {
        let log = TempLog::new();
        log.append(&line("old", "update", "ns-1", Some("scale"), 200));
        let half = line("cut", "update", "ns-1", Some("scale"), 200);
        log.append(&half[..50]);
        let mut audit = AuditLog::from_end(&log.0)?;
        log.append(&half[50..]);
        log.append(&line("new", "update", "ns-1", Some("scale"), 200));
        let ids: Vec<_> = audit
            .events()?
            .iter()
            .map(|e| e.audit_id.as_str())
            .collect();
        assert_eq!(ids, ["new"]);

        // At a line's end, nothing is skipped.
        let mut audit = AuditLog::from_end(&log.0)?;
        log.append(&line("next", "update", "ns-1", Some("scale"), 200));
        let ids: Vec<_> = audit
            .events()?
            .iter()
            .map(|e| e.audit_id.as_str())
            .collect();
        assert_eq!(ids, ["next"]);
        Ok(())
    }

    #[test]
    fn a_new_log_is_read_from_its_start() -> Result<(), Error> {
        let log = TempLog::new();
        log.append(&line("a", "update", "ns-1", None, 200));
        log.append(&line("b", "update", "ns-1", None, 200));
        let mut audit = AuditLog::open(&log.0)?;
        assert_eq!(audit.events()?.len(), 2);
        std::fs::write(&log.0, line("c", "patch", "ns-1", None, 200)).expect("new log");
        let new: Vec<_> = audit
            .read_new()?
            .iter()
            .map(|e| e.audit_id.clone())
            .collect();
        assert_eq!(new, ["c"]);
        Ok(())
    }

    #[test]
    fn a_complete_line_that_is_not_an_event_is_an_error() -> Result<(), Error> {
        let log = TempLog::new();
        log.append("not json\n");
        let mut audit = AuditLog::open(&log.0)?;
        let error = audit.events().expect_err("not an event");
        assert_eq!(error.label(), "audit_log");
        assert!(error.to_string().contains("not json"), "{error}");
        Ok(())
    }

    #[test]
    fn accepted_writes_are_counted_by_user_and_subresource() -> Result<(), Error> {
        let log = TempLog::new();
        log.append(&line("a", "update", "ns-1", Some("scale"), 200));
        log.append(&line("b", "update", "ns-1", Some("scale"), 409));
        log.append(&line("c", "update", "ns-1", Some("scale"), 200));
        log.append(&line("d", "patch", "ns-1", None, 200));
        log.append(&line("e", "get", "ns-1", None, 200));
        let mut audit = AuditLog::open(&log.0)?;
        let events = audit.events()?;
        let writes = accepted_writes(events);
        let user = "system:serviceaccount:ns-1:load-balancer";
        let scale = WriteKey {
            user: user.to_owned(),
            resource: "deployments".to_owned(),
            subresource: Some("scale".to_owned()),
        };
        let ids: Vec<_> = writes[&scale].iter().map(|e| e.audit_id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert_eq!(
            count_accepted_writes(events, user, "deployments", Some("scale")),
            2
        );
        assert_eq!(count_accepted_writes(events, user, "deployments", None), 1);
        Ok(())
    }
}
