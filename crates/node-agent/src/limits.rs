//! Container resources as cgroup file values, computed as the kubelet
//! computes them.
//!
//! - CPU limit: a CFS quota over a 100 ms period (`cpu.cfs_quota_us` in v1,
//!   `cpu.max` in v2), at least 1 ms, as the kubelet's minimum quota.
//! - CPU request: `cpu.shares` (v1) of `millicores × 1024 / 1000`, at least
//!   2, or its v2 `cpu.weight` equivalent.
//! - Memory limit: `memory.limit_in_bytes` (v1) or `memory.max` (v2).
//!
//! A pod's own cgroup gets the sum of its containers' values; a limit the
//! pod sums only when every container sets it, as a pod with one unlimited
//! container is unlimited.

use k8s_openapi::api::core::v1::{Container, ResourceRequirements};

use crate::quantity::{QuantityError, parse_non_negative};

/// The CFS period the kubelet uses, in microseconds.
pub const CFS_PERIOD_US: u64 = 100_000;
/// The smallest quota the kubelet sets, in microseconds.
const MIN_QUOTA_US: u64 = 1_000;
/// The smallest `cpu.shares` the kernel takes.
const MIN_SHARES: u64 = 2;
/// The largest `cpu.shares` the kernel takes.
const MAX_SHARES: u64 = 262_144;

/// Resources of one container (or the sum for a pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// CPU limit in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// CPU request in millicores.
    pub cpu_request_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit_bytes: Option<u64>,
}

fn to_u64(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

impl Limits {
    /// The limits of `resources`.
    ///
    /// # Errors
    ///
    /// [`QuantityError`] for a quantity that is not one, or is negative.
    pub fn of(resources: Option<&ResourceRequirements>) -> Result<Self, QuantityError> {
        let get = |list: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
                   key: &str,
                   what: &'static str| {
            list.and_then(|l| l.get(key))
                .map(|q| parse_non_negative(&q.0, what))
                .transpose()
        };
        let limits = resources.and_then(|r| r.limits.as_ref());
        let requests = resources.and_then(|r| r.requests.as_ref());
        let cpu_limit = get(limits, "cpu", "cpu limit")?;
        let cpu_request = get(requests, "cpu", "cpu request")?;
        let memory_limit = get(limits, "memory", "memory limit")?;
        Ok(Self {
            cpu_limit_millis: cpu_limit.map(|q| to_u64(q.millis_ceil())),
            // The API server defaults a missing request to the limit.
            cpu_request_millis: cpu_request.or(cpu_limit).map(|q| to_u64(q.millis_ceil())),
            memory_limit_bytes: memory_limit.map(|q| to_u64(q.units_ceil())),
        })
    }

    /// The pod-level sum of `containers`' limits.
    ///
    /// # Errors
    ///
    /// As [`Limits::of`], for the first container with a bad quantity.
    pub fn of_pod(containers: &[Container]) -> Result<Self, QuantityError> {
        let each: Vec<Self> = containers
            .iter()
            .map(|c| Self::of(c.resources.as_ref()))
            .collect::<Result<_, _>>()?;
        let sum_all = |pick: fn(&Self) -> Option<u64>| {
            each.iter()
                .map(pick)
                .try_fold(0_u64, |total, value| value.map(|v| total.saturating_add(v)))
                .filter(|_| !each.is_empty())
        };
        let requests: u64 = each.iter().filter_map(|l| l.cpu_request_millis).sum();
        Ok(Self {
            cpu_limit_millis: sum_all(|l| l.cpu_limit_millis),
            cpu_request_millis: (requests > 0).then_some(requests),
            memory_limit_bytes: sum_all(|l| l.memory_limit_bytes),
        })
    }

    /// The CFS quota in microseconds per [`CFS_PERIOD_US`], or `None` for no
    /// CPU limit.
    pub fn cfs_quota_us(&self) -> Option<u64> {
        self.cpu_limit_millis
            .map(|millis| (millis.saturating_mul(CFS_PERIOD_US) / 1000).max(MIN_QUOTA_US))
    }

    /// `cpu.shares` from the CPU request: 2 (the least) without one.
    pub fn cpu_shares(&self) -> u64 {
        self.cpu_request_millis
            .map_or(MIN_SHARES, |millis| millis.saturating_mul(1024) / 1000)
            .clamp(MIN_SHARES, MAX_SHARES)
    }

    /// `cpu.weight` (cgroup v2) for the same share, by the kernel's own
    /// conversion from shares.
    pub fn cpu_weight(&self) -> u64 {
        1 + ((self.cpu_shares() - MIN_SHARES) * 9_999) / (MAX_SHARES - MIN_SHARES)
    }

    /// The files and values to write in a cgroup v1 `cpu` hierarchy.
    pub fn v1_cpu_files(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cpu.shares", self.cpu_shares().to_string()),
            ("cpu.cfs_period_us", CFS_PERIOD_US.to_string()),
            (
                "cpu.cfs_quota_us",
                self.cfs_quota_us()
                    .map_or_else(|| "-1".to_owned(), |q| q.to_string()),
            ),
        ]
    }

    /// The files and values to write in a cgroup v1 `memory` hierarchy.
    pub fn v1_memory_files(&self) -> Vec<(&'static str, String)> {
        vec![(
            "memory.limit_in_bytes",
            self.memory_limit_bytes
                .map_or_else(|| "-1".to_owned(), |b| b.to_string()),
        )]
    }

    /// The files and values to write in a cgroup v2 directory.
    pub fn v2_files(&self) -> Vec<(&'static str, String)> {
        let quota = self
            .cfs_quota_us()
            .map_or_else(|| "max".to_owned(), |q| q.to_string());
        vec![
            ("cpu.weight", self.cpu_weight().to_string()),
            ("cpu.max", format!("{quota} {CFS_PERIOD_US}")),
            (
                "memory.max",
                self.memory_limit_bytes
                    .map_or_else(|| "max".to_owned(), |b| b.to_string()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn resources(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> ResourceRequirements {
        let list = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect(),
            )
        };
        ResourceRequirements {
            limits: list(limits),
            requests: list(requests),
            ..ResourceRequirements::default()
        }
    }

    fn limits(l: &[(&str, &str)], r: &[(&str, &str)]) -> Limits {
        Limits::of(Some(&resources(l, r))).expect("valid")
    }

    #[test]
    fn half_a_core_and_512_mebibytes() {
        let l = limits(&[("cpu", "500m"), ("memory", "512Mi")], &[]);
        assert_eq!(
            l.v1_cpu_files(),
            [
                ("cpu.shares", "512".to_owned()),
                ("cpu.cfs_period_us", "100000".to_owned()),
                ("cpu.cfs_quota_us", "50000".to_owned()),
            ]
        );
        assert_eq!(
            l.v1_memory_files(),
            [("memory.limit_in_bytes", "536870912".to_owned())]
        );
        assert_eq!(
            l.v2_files(),
            [
                ("cpu.weight", "20".to_owned()),
                ("cpu.max", "50000 100000".to_owned()),
                ("memory.max", "536870912".to_owned()),
            ]
        );
    }

    #[test]
    fn whole_cores_and_gibibytes() {
        let l = limits(&[("cpu", "1"), ("memory", "1Gi")], &[("cpu", "250m")]);
        assert_eq!(l.cfs_quota_us(), Some(100_000));
        assert_eq!(l.cpu_shares(), 256);
        assert_eq!(l.memory_limit_bytes, Some(1 << 30));
    }

    #[test]
    fn no_limits_mean_unlimited_and_least_shares() {
        let l = Limits::of(None).expect("none");
        assert_eq!(l, Limits::default());
        assert_eq!(l.v1_cpu_files()[2], ("cpu.cfs_quota_us", "-1".to_owned()));
        assert_eq!(l.v1_cpu_files()[0], ("cpu.shares", "2".to_owned()));
        assert_eq!(l.v1_memory_files()[0].1, "-1");
        assert_eq!(l.v2_files()[1].1, "max 100000");
        assert_eq!(l.v2_files()[2].1, "max");
        assert_eq!(l.cpu_weight(), 1);
    }

    #[test]
    fn tiny_cpu_limits_get_the_minimum_quota() {
        assert_eq!(limits(&[("cpu", "1m")], &[]).cfs_quota_us(), Some(1_000));
        assert_eq!(limits(&[("cpu", "0.5m")], &[]).cfs_quota_us(), Some(1_000));
    }

    #[test]
    fn bad_or_negative_quantities_name_the_value() {
        let err = Limits::of(Some(&resources(&[("memory", "lots")], &[]))).expect_err("bad");
        assert!(err.to_string().contains("\"lots\""), "{err}");
        let err = Limits::of(Some(&resources(&[("cpu", "-1")], &[]))).expect_err("negative");
        assert_eq!(
            err.to_string(),
            "quantity \"-1\" is negative; a cpu limit must be zero or more"
        );
    }

    #[test]
    fn pod_limits_sum_only_when_every_container_is_limited() {
        let container = |l: &[(&str, &str)]| Container {
            resources: Some(resources(l, &[])),
            ..Container::default()
        };
        let both = [
            container(&[("cpu", "500m"), ("memory", "1Gi")]),
            container(&[("cpu", "250m"), ("memory", "512Mi")]),
        ];
        let pod = Limits::of_pod(&both).expect("pod");
        assert_eq!(pod.cpu_limit_millis, Some(750));
        assert_eq!(pod.cpu_request_millis, Some(750));
        assert_eq!(pod.memory_limit_bytes, Some((1 << 30) + (512 << 20)));

        let one_unlimited = [container(&[("cpu", "500m")]), container(&[])];
        let pod = Limits::of_pod(&one_unlimited).expect("pod");
        assert_eq!(pod.cpu_limit_millis, None);
        assert_eq!(pod.memory_limit_bytes, None);
        assert_eq!(pod.cpu_request_millis, Some(500));
        assert_eq!(Limits::of_pod(&[]).expect("empty"), Limits::default());
    }
}
