//! The pure election logic: what to do next, and what a read or a write
//! means, given the time passed in. No I/O, no clock of its own.
//!
//! The rules (client-go's, with two deliberate differences noted):
//! - Another candidate's claim expires when **this** candidate has seen the
//!   Lease unchanged (same resourceVersion) for the claim's
//!   `leaseDurationSeconds`, measured on its own monotonic clock from the
//!   moment it first saw that version. Timestamps in the Lease are never
//!   compared with a clock, so wall-clock skew between pods cannot matter.
//!   (client-go compares the record's bytes; comparing resourceVersions is
//!   stricter: every write, whatever it changes, restarts the wait.)
//! - A leader counts its own time from the moment it **sent** its last
//!   successful write, and stops acting `renew_deadline` after that. Others
//!   start counting no earlier than the write was stored, and wait the
//!   longer `lease_duration`, so the leader has stepped down before anyone
//!   may take over. (client-go starts the renew deadline one retry period
//!   after the last success, which can exceed the lease duration with
//!   short leases.)
//! - Every write carries the resourceVersion last seen; a conflict leads to
//!   a re-read, never to an overwrite.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::ElectionConfig;
use crate::store::{LeaseRecord, Versioned};

/// The leadership of one candidate, as published on the watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading.
    Follower {
        /// The holder of the Lease as last seen, if any.
        holder: Option<String>,
    },
    /// Leading.
    Leader {
        /// The fencing token: the Lease's transition count at acquisition.
        /// Strictly greater than the token of every earlier leadership of
        /// the same Lease (as long as the Lease object is not deleted).
        token: u64,
        /// When this leader stops acting unless it renews before.
        until: Instant,
    },
}

impl Leadership {
    /// Whether this is [`Leadership::Leader`].
    pub fn is_leader(&self) -> bool {
        matches!(self, Self::Leader { .. })
    }

    /// The fencing token, when leading.
    pub fn token(&self) -> Option<u64> {
        match self {
            Self::Leader { token, .. } => Some(*token),
            Self::Follower { .. } => None,
        }
    }
}

/// The next request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Read the Lease.
    Read,
    /// Create the Lease with this record.
    Create(LeaseRecord),
    /// Write this record if the Lease is still at `version`.
    Replace {
        /// The record to write.
        record: LeaseRecord,
        /// The resourceVersion it was based on.
        version: String,
    },
    /// Nothing to do until the next retry period.
    Idle,
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDown {
    /// No successful renewal within the renew deadline.
    Deadline,
    /// The Lease was seen held by someone else, or with another token.
    Lost,
    /// Released on shutdown.
    Released,
}

impl StepDown {
    /// A short, fixed label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::Lost => "lost",
            Self::Released => "released",
        }
    }
}

/// A change of leadership that a call caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Became leader with this fencing token.
    Acquired(u64),
    /// Stopped leading.
    SteppedDown(StepDown),
}

#[derive(Debug, Clone)]
struct Observed {
    version: String,
    record: LeaseRecord,
    /// When this candidate first saw `version`.
    since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Lead {
    token: u64,
    /// When the last successful write was sent.
    renewed_at: Instant,
}

/// One candidate's election state. Feed it what the store said and the
/// time; it says what to write next and whether it leads.
#[derive(Debug, Clone)]
pub struct Candidate {
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    observed: Option<Observed>,
    lead: Option<Lead>,
    /// The version of this candidate's last successful write.
    written: Option<String>,
    /// The token of this candidate's latest leadership, if it ever led.
    last_token: Option<u64>,
}

impl Candidate {
    /// A follower that has seen nothing yet. `config` should have passed
    /// [`ElectionConfig::validate`].
    pub fn new(config: &ElectionConfig) -> Self {
        Self {
            identity: config.identity.clone(),
            lease_duration: config.lease_duration,
            renew_deadline: config.renew_deadline,
            observed: None,
            lead: None,
            written: None,
            last_token: None,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Leadership at `now`: a leader past its deadline is already a follower.
    pub fn leadership(&self, now: Instant) -> Leadership {
        match self.lead {
            Some(lead) if now < self.deadline_of(lead) => Leadership::Leader {
                token: lead.token,
                until: self.deadline_of(lead),
            },
            _ => Leadership::Follower {
                holder: self.observed.as_ref().and_then(|o| o.record.holder.clone()),
            },
        }
    }

    /// When the leader must have renewed by; `None` when following.
    pub fn deadline(&self) -> Option<Instant> {
        self.lead.map(|lead| self.deadline_of(lead))
    }

    fn deadline_of(&self, lead: Lead) -> Instant {
        lead.renewed_at + self.renew_deadline
    }

    /// Steps down if the renew deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Option<Change> {
        let lead = self.lead?;
        if now >= self.deadline_of(lead) {
            self.lead = None;
            return Some(Change::SteppedDown(StepDown::Deadline));
        }
        None
    }

    /// What to do at the start of an attempt: a leader that knows the
    /// current version renews straight away; everyone else reads first.
    pub fn plan(&mut self, wall: SystemTime) -> Plan {
        match (&self.lead, &self.observed) {
            (Some(lead), Some(observed)) if self.holds(&observed.record, lead.token) => {
                Plan::Replace {
                    record: self.renewal(&observed.record, lead.token, wall),
                    version: observed.version.clone(),
                }
            }
            _ => Plan::Read,
        }
    }

    /// Takes in a read finished at `now` and says what to write, if anything.
    pub fn on_read(
        &mut self,
        now: Instant,
        wall: SystemTime,
        lease: Option<Versioned>,
    ) -> (Plan, Option<Change>) {
        let mut change = self.expire(now);
        let Some(lease) = lease else {
            if self.lead.take().is_some() {
                change = Some(Change::SteppedDown(StepDown::Lost));
            }
            self.observed = None;
            return (
                Plan::Create(self.acquisition(first_token(wall), wall)),
                change,
            );
        };
        let fresh = self
            .observed
            .as_ref()
            .is_none_or(|o| o.version != lease.version);
        if fresh {
            self.observed = Some(Observed {
                version: lease.version.clone(),
                record: lease.record.clone(),
                since: now,
            });
        }
        if let Some(lead) = self.lead
            && !self.holds(&lease.record, lead.token)
        {
            self.lead = None;
            change = Some(Change::SteppedDown(StepDown::Lost));
        }
        let record = &lease.record;
        let plan = if let Some(lead) = self.lead {
            Plan::Replace {
                record: self.renewal(record, lead.token, wall),
                version: lease.version,
            }
        } else if self.may_take(record, &lease.version, now) {
            Plan::Replace {
                record: self.acquisition(record.transitions.saturating_add(1), wall),
                version: lease.version,
            }
        } else {
            Plan::Idle
        };
        (plan, change)
    }

    /// Takes in a successful write that was sent at `sent` and answered at `now`.
    pub fn on_written(
        &mut self,
        sent: Instant,
        now: Instant,
        written: Versioned,
    ) -> Option<Change> {
        self.written = Some(written.version.clone());
        let token = written.record.transitions;
        let mine = written.record.holder.as_deref() == Some(self.identity.as_str());
        self.observed = Some(Observed {
            version: written.version,
            record: written.record,
            since: now,
        });
        if !mine {
            return self
                .lead
                .take()
                .map(|_| Change::SteppedDown(StepDown::Released));
        }
        self.last_token = Some(token);
        let was = self.lead.replace(Lead {
            token,
            renewed_at: sent,
        });
        // A write that came back after the deadline renews nothing we can
        // rely on: we may already have stepped down and others may count
        // from an earlier version. Keep the new lead only if it is still valid.
        if now >= sent + self.renew_deadline {
            self.lead = None;
            return was.map(|_| Change::SteppedDown(StepDown::Deadline));
        }
        match was {
            Some(old) if old.token == token => None,
            _ => Some(Change::Acquired(token)),
        }
    }

    /// Steps down for shutdown and says what to write to hand the Lease over
    /// at once: no holder, so others may take it on their next attempt.
    /// `None` when this candidate does not hold the Lease as far as it knows.
    pub fn release(&mut self, wall: SystemTime) -> (Option<Plan>, Option<Change>) {
        let change = self
            .lead
            .take()
            .map(|_| Change::SteppedDown(StepDown::Released));
        // Only a Lease that names us with the token of our own latest
        // leadership is ours to clear: one in our name with another token
        // belongs to another process with the same identity.
        let plan = self.observed.as_ref().and_then(|observed| {
            let ours = self
                .last_token
                .is_some_and(|token| self.holds(&observed.record, token));
            ours.then(|| Plan::Replace {
                record: LeaseRecord {
                    holder: None,
                    lease_duration: Duration::from_secs(1),
                    acquire_time: Some(wall),
                    renew_time: Some(wall),
                    transitions: observed.record.transitions,
                },
                version: observed.version.clone(),
            })
        });
        (plan, change)
    }

    /// Takes in a release attempt that hit a conflict: says whether the
    /// fresh read still shows this candidate as holder, and if so what to write.
    pub fn release_after_read(
        &mut self,
        now: Instant,
        wall: SystemTime,
        lease: Option<Versioned>,
    ) -> Option<Plan> {
        let lease = lease?;
        self.observed = Some(Observed {
            version: lease.version,
            record: lease.record,
            since: now,
        });
        self.release(wall).0
    }

    fn holds(&self, record: &LeaseRecord, token: u64) -> bool {
        record.holder.as_deref() == Some(self.identity.as_str()) && record.transitions == token
    }

    fn may_take(&self, record: &LeaseRecord, version: &str, now: Instant) -> bool {
        if record.holder.is_none() {
            return true;
        }
        if self.written.as_deref() == Some(version) {
            // Our own write, untouched since (we stepped down at the
            // deadline, or released): nobody else can have taken over, and
            // the compare-and-swap proves it. A new leadership, a new token.
            return true;
        }
        // Anyone else's claim, including one in our name that this
        // candidate did not write (an earlier process with the same
        // identity, or a write whose answer was lost): wait it out.
        let claimed = if record.lease_duration.is_zero() {
            self.lease_duration
        } else {
            record.lease_duration
        };
        self.observed
            .as_ref()
            .is_some_and(|o| now >= o.since + claimed)
    }

    fn acquisition(&self, transitions: u64, wall: SystemTime) -> LeaseRecord {
        LeaseRecord {
            holder: Some(self.identity.clone()),
            lease_duration: self.lease_duration,
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions,
        }
    }

    fn renewal(&self, current: &LeaseRecord, token: u64, wall: SystemTime) -> LeaseRecord {
        LeaseRecord {
            holder: Some(self.identity.clone()),
            lease_duration: self.lease_duration,
            acquire_time: current.acquire_time.or(Some(wall)),
            renew_time: Some(wall),
            transitions: token,
        }
    }
}

/// Seconds from 2020-01-01 to 2020-01-01 + 2^31 s fit `leaseTransitions`
/// (int32) with room for takeovers.
const FIRST_TOKEN_EPOCH_S: u64 = 1_577_836_800;
const FIRST_TOKEN_MAX: u64 = i32::MAX as u64 - 1_000_000;

/// The transition count, and so the fencing token, a Lease this candidate
/// creates starts at: the seconds since 2020-01-01 by its wall clock.
///
/// A Lease that is deleted and created again must not start its tokens over
/// at 0: the decision state and the workload's claim keep the highest token
/// seen and refuse lower ones, so every later leader would be refused for
/// good. Takeovers add one each and cannot come faster than one per lease
/// duration (at least a second), so a Lease created later starts above any
/// token the earlier one reached, as long as the clocks that wrote them
/// agree to within the gap between deletion and creation. Capped so that
/// takeovers still fit the API's int32 (around the year 2088).
fn first_token(wall: SystemTime) -> u64 {
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().saturating_sub(FIRST_TOKEN_EPOCH_S))
        .min(FIRST_TOKEN_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(3);
    const RENEW: Duration = Duration::from_secs(2);

    fn candidate(identity: &str) -> Candidate {
        Candidate::new(&ElectionConfig::new(identity).with_timing(
            LEASE,
            RENEW,
            Duration::from_millis(500),
        ))
    }

    fn lease(holder: Option<&str>, version: &str, transitions: u64) -> Versioned {
        Versioned {
            record: LeaseRecord {
                holder: holder.map(str::to_owned),
                lease_duration: LEASE,
                acquire_time: Some(SystemTime::UNIX_EPOCH),
                renew_time: Some(SystemTime::UNIX_EPOCH),
                transitions,
            },
            version: version.to_owned(),
        }
    }

    fn written(plan: &Plan, version: &str) -> Versioned {
        let record = match plan {
            Plan::Create(record) | Plan::Replace { record, .. } => record.clone(),
            other => panic!("expected a write, got {other:?}"),
        };
        Versioned {
            record,
            version: version.to_owned(),
        }
    }

    fn wall() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn a_lease_created_again_starts_above_the_tokens_of_the_one_before() {
        // The Lease of 2023-11-14 saw a thousand takeovers; it is deleted,
        // and a day later a candidate creates it again.
        let before = first_token(wall()) + 1_000;
        let day_later = wall() + Duration::from_secs(86_400);
        let mut a = candidate("a");
        let (plan, _) = a.on_read(Instant::now(), day_later, None);
        let Plan::Create(record) = plan else {
            panic!("expected a create, got {plan:?}");
        };
        assert!(
            record.transitions > before,
            "{} <= {before}",
            record.transitions
        );
        assert!(i32::try_from(record.transitions).is_ok());
        assert_eq!(first_token(SystemTime::UNIX_EPOCH), 0);
        assert_eq!(
            first_token(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 4)),
            FIRST_TOKEN_MAX
        );
    }

    #[test]
    fn creates_a_missing_lease_and_leads_until_the_renew_deadline() {
        let t0 = Instant::now();
        let mut a = candidate("a");
        assert_eq!(a.plan(wall()), Plan::Read);
        let (plan, change) = a.on_read(t0, wall(), None);
        assert_eq!(change, None);
        assert!(
            matches!(&plan, Plan::Create(r) if r.holder.as_deref() == Some("a") && r.transitions == first_token(wall()))
        );
        let change = a.on_written(t0, t0 + Duration::from_millis(50), written(&plan, "1"));
        assert_eq!(change, Some(Change::Acquired(first_token(wall()))));
        // Counted from when the write was sent, not when it was answered.
        assert_eq!(
            a.leadership(t0),
            Leadership::Leader {
                token: first_token(wall()),
                until: t0 + RENEW
            }
        );
        assert_eq!(a.expire(t0 + RENEW - Duration::from_millis(1)), None);
        assert_eq!(
            a.expire(t0 + RENEW),
            Some(Change::SteppedDown(StepDown::Deadline))
        );
        assert!(!a.leadership(t0 + RENEW).is_leader());
    }

    #[test]
    fn a_leader_renews_with_the_version_it_wrote_and_keeps_its_token() {
        let t0 = Instant::now();
        let mut a = candidate("a");
        let (plan, _) = a.on_read(t0, wall(), Some(lease(None, "7", 4)));
        assert_eq!(
            a.on_written(t0, t0, written(&plan, "8")),
            Some(Change::Acquired(5))
        );
        let renewal = a.plan(wall());
        assert!(
            matches!(&renewal, Plan::Replace { version, record } if version == "8" && record.transitions == 5)
        );
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(a.on_written(t1, t1, written(&renewal, "9")), None);
        assert_eq!(a.deadline(), Some(t1 + RENEW));
    }

    #[test]
    fn another_holder_is_respected_until_seen_unchanged_for_its_lease_duration() {
        let t0 = Instant::now();
        let mut b = candidate("b");
        let (plan, _) = b.on_read(t0, wall(), Some(lease(Some("a"), "5", 2)));
        assert_eq!(plan, Plan::Idle);
        let (plan, _) = b.on_read(
            t0 + LEASE - Duration::from_millis(1),
            wall(),
            Some(lease(Some("a"), "5", 2)),
        );
        assert_eq!(plan, Plan::Idle);
        let (plan, _) = b.on_read(t0 + LEASE, wall(), Some(lease(Some("a"), "5", 2)));
        assert!(
            matches!(&plan, Plan::Replace { version, record } if version == "5" && record.transitions == 3 && record.holder.as_deref() == Some("b"))
        );
    }

    #[test]
    fn any_new_version_restarts_the_wait_even_with_the_same_content() {
        let t0 = Instant::now();
        let mut b = candidate("b");
        b.on_read(t0, wall(), Some(lease(Some("a"), "5", 2)));
        // Same record (a frozen wall clock writes identical timestamps), new version.
        let t1 = t0 + Duration::from_secs(2);
        b.on_read(t1, wall(), Some(lease(Some("a"), "6", 2)));
        let (plan, _) = b.on_read(t0 + LEASE, wall(), Some(lease(Some("a"), "6", 2)));
        assert_eq!(plan, Plan::Idle);
        let (plan, _) = b.on_read(t1 + LEASE, wall(), Some(lease(Some("a"), "6", 2)));
        assert!(matches!(plan, Plan::Replace { .. }));
    }

    #[test]
    fn lease_timestamps_never_decide_expiry() {
        let t0 = Instant::now();
        for stamp in [
            SystemTime::UNIX_EPOCH,
            wall() + Duration::from_secs(86_400 * 365),
        ] {
            let mut b = candidate("b");
            let mut seen = lease(Some("a"), "5", 2);
            seen.record.renew_time = Some(stamp);
            seen.record.acquire_time = Some(stamp);
            let (plan, _) = b.on_read(t0, wall(), Some(seen.clone()));
            assert_eq!(plan, Plan::Idle, "renewTime {stamp:?}");
            let (plan, _) = b.on_read(t0 + LEASE, wall(), Some(seen));
            assert!(matches!(plan, Plan::Replace { .. }), "renewTime {stamp:?}");
        }
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let t0 = Instant::now();
        let mut a = candidate("a");
        let (plan, _) = a.on_read(t0, wall(), Some(lease(None, "1", 0)));
        a.on_written(t0, t0, written(&plan, "2"));
        let (plan, change) = a.release(wall());
        assert_eq!(change, Some(Change::SteppedDown(StepDown::Released)));
        let Some(release) = plan else {
            panic!("a holder releases");
        };
        assert!(
            matches!(&release, Plan::Replace { version, record } if version == "2" && record.holder.is_none() && record.transitions == 1)
        );
        assert_eq!(a.on_written(t0, t0, written(&release, "3")), None);
        assert_eq!(a.release(wall()), (None, None));

        let mut b = candidate("b");
        let (plan, _) = b.on_read(t0, wall(), Some(written(&release, "3")));
        assert!(matches!(&plan, Plan::Replace { record, .. } if record.transitions == 2));
    }

    #[test]
    fn a_leader_that_sees_another_holder_steps_down() {
        let t0 = Instant::now();
        let mut a = candidate("a");
        let (plan, _) = a.on_read(t0, wall(), None);
        a.on_written(t0, t0, written(&plan, "1"));
        let (plan, change) = a.on_read(t0, wall(), Some(lease(Some("b"), "2", 1)));
        assert_eq!(change, Some(Change::SteppedDown(StepDown::Lost)));
        assert_eq!(plan, Plan::Idle);
        assert_eq!(
            a.leadership(t0),
            Leadership::Follower {
                holder: Some("b".into())
            }
        );
    }

    #[test]
    fn a_leader_whose_lease_was_edited_renews_on_the_new_version() {
        let t0 = Instant::now();
        let mut a = candidate("a");
        let (plan, _) = a.on_read(t0, wall(), None);
        a.on_written(t0, t0, written(&plan, "1"));
        let (plan, change) =
            a.on_read(t0, wall(), Some(lease(Some("a"), "2", first_token(wall()))));
        assert_eq!(change, None);
        assert!(matches!(plan, Plan::Replace { version, .. } if version == "2"));
    }

    #[test]
    fn a_write_answered_after_the_deadline_does_not_lead() {
        let t0 = Instant::now();
        let mut a = candidate("a");
        let (plan, _) = a.on_read(t0, wall(), None);
        assert_eq!(a.on_written(t0, t0 + RENEW, written(&plan, "1")), None);
        assert!(!a.leadership(t0 + RENEW).is_leader());
        // Seeing its own name later, it takes the Lease back as a new leadership.
        let (plan, _) = a.on_read(t0 + RENEW, wall(), Some(lease(Some("a"), "1", 0)));
        assert!(matches!(&plan, Plan::Replace { record, .. } if record.transitions == 1));
    }
}
