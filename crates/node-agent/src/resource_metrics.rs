//! The text of the kubelet's resource-metrics endpoint, `/metrics/resource`:
//! the figures metrics-server reads, named, labelled, ordered and formatted
//! as the kubelet's own collector writes them
//! (`pkg/kubelet/metrics/collectors/resource_metrics.go` of Kubernetes,
//! through Prometheus' text exposition format 0.0.4).
//!
//! Pure: it renders figures it is given ([`ResourceStats`]); reading them is
//! [`crate::usage`]'s job.
//!
//! What the kubelet's output looks like, and so this one's:
//! - one family per metric, families in name order, each with its
//!   `# HELP` (the stability level first, `[STABLE]`) and `# TYPE` lines;
//!   a family without samples is left out;
//! - labels in name order (`container`, `namespace`, `pod`), samples in the
//!   order of their label values;
//! - values as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes them
//!   (`1.2345678e+07`), CPU in core-seconds, memory in bytes;
//! - usage samples carry the time they were read, in milliseconds since
//!   the epoch (metrics-server takes its rates from them); the start times
//!   and the scrape error carry none.

use std::fmt::Write as _;

/// The content type of the text format, as the kubelet answers it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Usage read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time, in nanoseconds.
    pub cpu_ns: u64,
    /// Working set: memory in use less what the kernel can take back at
    /// once (inactive file pages), in bytes.
    pub memory_working_set_bytes: u64,
    /// When it was read, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// One container's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStats {
    /// The container's name.
    pub name: String,
    /// When the running process started, in seconds since the epoch.
    pub start_time_s: f64,
    /// Its usage, when it could be read.
    pub usage: Option<Usage>,
}

/// One pod's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PodStats {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The whole pod's usage, when it could be read.
    pub usage: Option<Usage>,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
}

/// Everything one scrape reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceStats {
    /// The node's usage, when it could be read.
    pub node: Option<Usage>,
    /// The pods with a running container.
    pub pods: Vec<PodStats>,
    /// Whether some figure could not be read (`scrape_error` 1).
    pub error: bool,
}

/// One metric family: name, help (with its stability level), type.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

const CONTAINER_CPU: Family = Family {
    name: "container_cpu_usage_seconds_total",
    help: "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    kind: "counter",
};
const CONTAINER_MEMORY: Family = Family {
    name: "container_memory_working_set_bytes",
    help: "[STABLE] Current working set of the container in bytes",
    kind: "gauge",
};
const CONTAINER_START: Family = Family {
    name: "container_start_time_seconds",
    help: "[STABLE] Start time of the container since unix epoch in seconds",
    kind: "gauge",
};
const NODE_CPU: Family = Family {
    name: "node_cpu_usage_seconds_total",
    help: "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    kind: "counter",
};
const NODE_MEMORY: Family = Family {
    name: "node_memory_working_set_bytes",
    help: "[STABLE] Current working set of the node in bytes",
    kind: "gauge",
};
const POD_CPU: Family = Family {
    name: "pod_cpu_usage_seconds_total",
    help: "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    kind: "counter",
};
const POD_MEMORY: Family = Family {
    name: "pod_memory_working_set_bytes",
    help: "[STABLE] Current working set of the pod in bytes",
    kind: "gauge",
};
const RESOURCE_SCRAPE_ERROR: Family = Family {
    name: "resource_scrape_error",
    help: "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    kind: "gauge",
};
const SCRAPE_ERROR: Family = Family {
    name: "scrape_error",
    help: "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
    kind: "gauge",
};

/// A sample: label pairs in name order, value, optional timestamp.
type Sample = (Vec<(&'static str, String)>, f64, Option<i64>);

/// Renders `stats` as the body of `/metrics/resource`.
pub fn render(stats: &ResourceStats) -> String {
    let mut container_cpu = Vec::new();
    let mut container_memory = Vec::new();
    let mut container_start = Vec::new();
    let mut pod_cpu = Vec::new();
    let mut pod_memory = Vec::new();
    for pod in &stats.pods {
        for c in &pod.containers {
            let labels = vec![
                ("container", c.name.clone()),
                ("namespace", pod.namespace.clone()),
                ("pod", pod.name.clone()),
            ];
            if c.start_time_s > 0.0 {
                container_start.push((labels.clone(), c.start_time_s, None));
            }
            if let Some(u) = c.usage {
                container_cpu.push((labels.clone(), seconds(u.cpu_ns), Some(u.at_ms)));
                container_memory.push((labels, u.memory_working_set_bytes as f64, Some(u.at_ms)));
            }
        }
        if let Some(u) = pod.usage {
            let labels = vec![
                ("namespace", pod.namespace.clone()),
                ("pod", pod.name.clone()),
            ];
            pod_cpu.push((labels.clone(), seconds(u.cpu_ns), Some(u.at_ms)));
            pod_memory.push((labels, u.memory_working_set_bytes as f64, Some(u.at_ms)));
        }
    }
    let node = |f: fn(&Usage) -> f64| -> Vec<Sample> {
        stats
            .node
            .iter()
            .map(|u| (Vec::new(), f(u), Some(u.at_ms)))
            .collect()
    };
    let error = if stats.error { 1.0 } else { 0.0 };
    let mut out = String::new();
    for (family, samples) in [
        (&CONTAINER_CPU, container_cpu),
        (&CONTAINER_MEMORY, container_memory),
        (&CONTAINER_START, container_start),
        (&NODE_CPU, node(|u| seconds(u.cpu_ns))),
        (&NODE_MEMORY, node(|u| u.memory_working_set_bytes as f64)),
        (&POD_CPU, pod_cpu),
        (&POD_MEMORY, pod_memory),
        (&RESOURCE_SCRAPE_ERROR, vec![(Vec::new(), error, None)]),
        (&SCRAPE_ERROR, vec![(Vec::new(), error, None)]),
    ] {
        write_family(&mut out, family, samples);
    }
    out
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn write_family(out: &mut String, family: &Family, mut samples: Vec<Sample>) {
    if samples.is_empty() {
        return;
    }
    samples.sort_by(|a, b| {
        let values = |s: &Sample| s.0.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
        values(a).cmp(&values(b))
    });
    let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
    let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
    for (labels, value, at_ms) in samples {
        out.push_str(family.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (name, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{name}=\"{}\"", escape(v));
            }
            out.push('}');
        }
        out.push(' ');
        out.push_str(&go_float(value));
        if let Some(at) = at_ms {
            let _ = write!(out, " {at}");
        }
        out.push('\n');
    }
}

/// A label value as the text format needs it: backslash, double quote and
/// line feed escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(ch),
        }
    }
    out
}

/// `v` as Prometheus' Go client writes a sample value: `0`, `1`, `-1`,
/// `NaN` and `±Inf` spelled out, otherwise the shortest digits that read
/// back as `v`, in exponent form (`e+07`, at least two exponent digits)
/// when the decimal exponent is below -4 or at least 6, as Go's
/// `strconv.FormatFloat(v, 'g', -1, 64)` does.
pub fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if v == 0.0 {
        return "0".to_owned();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits: "1.2345678e7".
    let sci = format!("{v:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return sci;
    };
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.unsigned_abs());
    }
    // Plain form: Rust's `{}` is also the shortest round-tripping decimal.
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_ns: u64, memory: u64, at_ms: i64) -> Option<Usage> {
        Some(Usage {
            cpu_ns,
            memory_working_set_bytes: memory,
            at_ms,
        })
    }

    #[test]
    fn floats_are_written_as_go_writes_them() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.5, "0.5"),
            (12.345, "12.345"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (12345678.0, "1.2345678e+07"),
            (1.7648e9, "1.7648e+09"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (1e300, "1e+300"),
        ] {
            assert_eq!(go_float(v), want, "{v}");
        }
    }

    #[test]
    fn floats_read_back_as_themselves() {
        for v in [3.0e-7, 0.123456789, 987654.321, 1_764_812_345.678_9, 2.5e15] {
            let text = go_float(v);
            assert_eq!(text.parse::<f64>().ok(), Some(v), "{text}");
        }
    }

    /// The kubelet's own collector test (`resource_metrics_test.go`,
    /// "arbitrary container metrics for different container, pods and
    /// namespaces" and the node case), with this endpoint's figures.
    #[test]
    fn the_text_is_the_kubelets() {
        let stats = ResourceStats {
            node: usage(10_000_000_000, 1000, 1_624_396_278_302),
            pods: vec![
                PodStats {
                    namespace: "namespace_b".to_owned(),
                    name: "pod_b".to_owned(),
                    usage: usage(10_000_000_000, 1000, 1_624_396_278_302),
                    containers: vec![ContainerStats {
                        name: "container_a".to_owned(),
                        start_time_s: 1_624_396_278.0,
                        usage: usage(10_000_000_000, 1000, 1_624_396_278_302),
                    }],
                },
                PodStats {
                    namespace: "namespace_a".to_owned(),
                    name: "pod_a".to_owned(),
                    usage: usage(20_000_000_000, 2000, 1_624_396_278_302),
                    containers: vec![
                        ContainerStats {
                            name: "container_b".to_owned(),
                            start_time_s: 1_624_396_278.5,
                            usage: usage(10_000_000_000, 1000, 1_624_396_278_302),
                        },
                        ContainerStats {
                            name: "container_a".to_owned(),
                            start_time_s: 1_624_396_278.0,
                            usage: usage(10_000_000_000, 1000, 1_624_396_278_302),
                        },
                    ],
                },
            ],
            error: false,
        };
        let want = r#"# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="container_a",namespace="namespace_a",pod="pod_a"} 10 1624396278302
container_cpu_usage_seconds_total{container="container_a",namespace="namespace_b",pod="pod_b"} 10 1624396278302
container_cpu_usage_seconds_total{container="container_b",namespace="namespace_a",pod="pod_a"} 10 1624396278302
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="container_a",namespace="namespace_a",pod="pod_a"} 1000 1624396278302
container_memory_working_set_bytes{container="container_a",namespace="namespace_b",pod="pod_b"} 1000 1624396278302
container_memory_working_set_bytes{container="container_b",namespace="namespace_a",pod="pod_a"} 1000 1624396278302
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="container_a",namespace="namespace_a",pod="pod_a"} 1.624396278e+09
container_start_time_seconds{container="container_a",namespace="namespace_b",pod="pod_b"} 1.624396278e+09
container_start_time_seconds{container="container_b",namespace="namespace_a",pod="pod_a"} 1.6243962785e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 10 1624396278302
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1000 1624396278302
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace="namespace_a",pod="pod_a"} 20 1624396278302
pod_cpu_usage_seconds_total{namespace="namespace_b",pod="pod_b"} 10 1624396278302
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace="namespace_a",pod="pod_a"} 2000 1624396278302
pod_memory_working_set_bytes{namespace="namespace_b",pod="pod_b"} 1000 1624396278302
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE scrape_error gauge
scrape_error 0
"#;
        assert_eq!(render(&stats), want);
    }

    #[test]
    fn an_empty_node_reports_only_the_scrape_error() {
        let text = render(&ResourceStats {
            error: true,
            ..ResourceStats::default()
        });
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, ["resource_scrape_error 1", "scrape_error 1"]);
    }

    #[test]
    fn unread_usage_leaves_out_the_samples_but_keeps_the_start_time() {
        let text = render(&ResourceStats {
            node: None,
            pods: vec![PodStats {
                namespace: "ns".to_owned(),
                name: "p".to_owned(),
                usage: None,
                containers: vec![ContainerStats {
                    name: "c".to_owned(),
                    start_time_s: 1_700_000_000.25,
                    usage: None,
                }],
            }],
            error: true,
        });
        assert!(!text.contains("cpu_usage"), "{text}");
        assert!(!text.contains("node_"), "{text}");
        assert!(
            text.contains(
                "container_start_time_seconds{container=\"c\",namespace=\"ns\",pod=\"p\"} 1.70000000025e+09\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb"), "a\\nb");
    }
}
