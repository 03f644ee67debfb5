//! The KEDA ScaledObject of deploy/k8s is a backup that must never act before
//! the load-balancer does. KEDA's `Utilization` is a percentage of the
//! container's resource *requests*; heartbeats, and so the decision policy,
//! measure CPU and memory as fractions of the container's *limits*. These
//! tests read both manifests (04-socket.yaml, 05-keda-scaler.yaml), turn
//! KEDA's targets into fractions of the limits and hold them against
//! [`Policy::default`]'s critical thresholds, so the manifests and the policy
//! cannot drift apart. Offline: no server is needed.

use rtc_decision::Policy;
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The HPA's default tolerance (`--horizontal-pod-autoscaler-tolerance`): it
/// scales up only once the metric is more than 10 % above its target.
const HPA_DEFAULT_TOLERANCE: f64 = 0.10;

/// Why a text is not a Kubernetes resource quantity.
#[derive(Debug, PartialEq)]
enum QuantityError {
    /// The text is empty.
    Empty,
    /// The number in front of the suffix is not digits with at most one
    /// decimal point (and an optional sign).
    BadNumber(String),
    /// The suffix is none of the decimal SI, binary SI or exponent suffixes.
    UnknownSuffix { quantity: String, suffix: String },
}

impl fmt::Display for QuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty quantity"),
            Self::BadNumber(q) => write!(
                f,
                "invalid quantity {q:?}: the number must be digits with at most one decimal point"
            ),
            Self::UnknownSuffix { quantity, suffix } => write!(
                f,
                "invalid quantity {quantity:?}: unknown suffix {suffix:?} \
                 (allowed: n u m k M G T P E, Ki Mi Gi Ti Pi Ei, or e/E and an exponent)"
            ),
        }
    }
}

impl std::error::Error for QuantityError {}

/// A Kubernetes resource quantity (`500m`, `1`, `512Mi`, `1Gi`, `1G`,
/// `1e3`) in base units: cores for CPU, bytes for memory.
fn parse_quantity(text: &str) -> Result<f64, QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let bad_number = || QuantityError::BadNumber(text.to_owned());
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_len = unsigned
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    if !number.contains(|c: char| c.is_ascii_digit()) || number.matches('.').count() > 1 {
        return Err(bad_number());
    }
    let magnitude: f64 = number.parse().map_err(|_| bad_number())?;
    let sign = if text.starts_with('-') { -1.0 } else { 1.0 };
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .filter(|e| {
                    let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                })
                .and_then(|e| e.parse::<i32>().ok())
                .ok_or_else(|| QuantityError::UnknownSuffix {
                    quantity: text.to_owned(),
                    suffix: suffix.to_owned(),
                })?;
            10f64.powi(exponent)
        }
    };
    Ok(sign * magnitude * scale)
}

/// KEDA's `Utilization` target (a percentage of the request) as a fraction
/// of the limit, the unit of heartbeats and of the decision policy.
fn limit_fraction(utilization_percent: u32, request: f64, limit: f64) -> f64 {
    f64::from(utilization_percent) * request / (100.0 * limit)
}

/// A quantity as written in the manifest, and its value in base units.
#[derive(Debug)]
struct Quantity {
    text: String,
    value: f64,
}

/// One CPU or memory trigger of the ScaledObject, with the request and limit
/// of the container it measures.
#[derive(Debug)]
struct Trigger {
    percent: u32,
    request: Quantity,
    limit: Quantity,
}

impl Trigger {
    /// The limit fraction above which the HPA may fire at the earliest.
    fn fraction(&self) -> f64 {
        limit_fraction(self.percent, self.request.value, self.limit.value)
    }
}

/// What the tests need from the two manifests.
#[derive(Debug)]
struct Backup {
    cpu: Trigger,
    memory: Trigger,
    scale_down_select_policy: Option<String>,
}

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s/base")
}

fn documents(file: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let values: Vec<Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(values.into_iter().filter(|v| !v.is_null()).collect())
}

/// A resource quantity of a container, a YAML string (`500m`) or number (`1`).
fn resource(container: &Value, kind: &str, name: &str, file: &Path) -> Result<Quantity> {
    let at = format!("{}: resources.{kind}.{name}", file.display());
    let value = &container["resources"][kind][name];
    let quantity = match value {
        Value::String(s) => parse_quantity(s).map_err(|e| format!("{at}: {e}"))?,
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("{at}: {n} is out of range"))?,
        Value::Null => return Err(format!("{at} is not set").into()),
        other => return Err(format!("{at}: {other} is not a quantity").into()),
    };
    if !(quantity.is_finite() && quantity > 0.0) {
        return Err(format!("{at}: {value} is not a positive quantity").into());
    }
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(Quantity {
        text,
        value: quantity,
    })
}

fn backup() -> Result<Backup> {
    let keda_file = k8s_dir().join("05-keda-scaler.yaml");
    let socket_file = k8s_dir().join("04-socket.yaml");
    let keda = documents(&keda_file)?;
    let scaled = keda
        .iter()
        .find(|d| d["kind"] == "ScaledObject")
        .ok_or_else(|| format!("{}: no ScaledObject", keda_file.display()))?;
    let target = &scaled["spec"]["scaleTargetRef"];
    let target_kind = target["kind"].as_str().unwrap_or("Deployment");
    let target_name = target["name"]
        .as_str()
        .ok_or_else(|| format!("{}: no scaleTargetRef.name", keda_file.display()))?;
    let socket = documents(&socket_file)?;
    let workload = socket
        .iter()
        .find(|d| d["kind"] == target_kind && d["metadata"]["name"] == target_name)
        .ok_or_else(|| {
            format!(
                "{}: no {target_kind} {target_name:?}, the target of {}",
                socket_file.display(),
                keda_file.display()
            )
        })?;
    let containers = workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .ok_or_else(|| format!("{}: {target_name} has no containers", socket_file.display()))?;

    let (mut cpu, mut memory) = (None, None);
    let triggers = scaled["spec"]["triggers"]
        .as_array()
        .ok_or_else(|| format!("{}: no triggers", keda_file.display()))?;
    for trigger in triggers {
        let kind = trigger["type"].as_str().unwrap_or_default();
        let at = format!("{}: trigger {kind:?}", keda_file.display());
        let slot = match kind {
            "cpu" => &mut cpu,
            "memory" => &mut memory,
            _ => {
                return Err(format!(
                    "{at}: only cpu and memory triggers can be held against the \
                     decision policy's thresholds"
                )
                .into());
            }
        };
        if trigger["metricType"] != "Utilization" {
            return Err(format!(
                "{at}: metricType {} is not Utilization (a percentage of the request)",
                trigger["metricType"]
            )
            .into());
        }
        // Without containerName the HPA measures the whole pod, which is the
        // socket container's own utilization only if it is the pod's one
        // container.
        let container = match trigger["metadata"]["containerName"].as_str() {
            Some(name) => containers
                .iter()
                .find(|c| c["name"] == name)
                .ok_or_else(|| format!("{at}: no container {name:?} in {target_name}"))?,
            None => match containers.as_slice() {
                [only] => only,
                _ => {
                    return Err(format!(
                        "{at}: {target_name} has {} containers; set containerName so the \
                         utilization is that of the container whose heartbeats count",
                        containers.len()
                    )
                    .into());
                }
            },
        };
        let value = trigger["metadata"]["value"]
            .as_str()
            .ok_or_else(|| format!("{at}: metadata.value is not a string"))?;
        let percent = value.parse::<u32>().map_err(|e| {
            format!("{at}: metadata.value {value:?} is not a whole number of percent: {e}")
        })?;
        let found = Trigger {
            percent,
            request: resource(container, "requests", kind, &socket_file)?,
            limit: resource(container, "limits", kind, &socket_file)?,
        };
        if slot.replace(found).is_some() {
            return Err(format!("{at}: more than one").into());
        }
    }
    let missing = |kind: &str| format!("{}: no {kind} trigger", keda_file.display());
    Ok(
        Backup {
            cpu: cpu.ok_or_else(|| missing("cpu"))?,
            memory: memory.ok_or_else(|| missing("memory"))?,
            scale_down_select_policy:
                scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                    ["selectPolicy"]
                    .as_str()
                    .map(str::to_owned),
        },
    )
}

/// An HPA's CPU or memory utilization is the fleet's average, so once it is
/// above the higher of the two critical rules (average overload, per-node
/// hotspot), every critical rule of the load-balancer has fired already.
#[test]
fn keda_fires_only_above_the_load_balancers_critical_thresholds() -> Result {
    let backup = backup()?;
    let urgency = Policy::default().urgency;
    let mut early = Vec::new();
    for (name, trigger, critical) in [
        (
            "cpu",
            &backup.cpu,
            urgency.overload_cpu.max(urgency.hotspot_cpu),
        ),
        (
            "memory",
            &backup.memory,
            urgency.overload_mem.max(urgency.hotspot_mem),
        ),
    ] {
        if trigger.fraction() <= critical {
            early.push(format!(
                "the {name} trigger at {}% of the request {} is {:.3} of the limit {}, not \
                 above the load-balancer's critical {name} threshold {critical} of the limit \
                 (it needs more than {:.1}%)",
                trigger.percent,
                trigger.request.text,
                trigger.fraction(),
                trigger.limit.text,
                critical * 100.0 * trigger.limit.value / trigger.request.value,
            ));
        }
    }
    assert!(
        early.is_empty(),
        "05-keda-scaler.yaml fires before the load-balancer: {}",
        early.join("; ")
    );
    Ok(())
}

/// CPU is throttled at the limit and memory cannot grow past it, so a target
/// the HPA reaches only beyond the limit (its tolerance included) is no
/// backup at all.
#[test]
fn keda_can_still_fire_before_the_limits() -> Result {
    let backup = backup()?;
    for (name, trigger) in [("cpu", &backup.cpu), ("memory", &backup.memory)] {
        let fires_at = trigger.fraction() * (1.0 + HPA_DEFAULT_TOLERANCE);
        assert!(
            fires_at < 1.0,
            "05-keda-scaler.yaml: the {name} trigger at {}% of the request fires only above \
             {fires_at:.3} of the limit (with the HPA's default tolerance), which {name} \
             never reaches",
            trigger.percent,
        );
    }
    Ok(())
}

#[test]
fn keda_never_scales_in() -> Result {
    let backup = backup()?;
    assert_eq!(
        backup.scale_down_select_policy.as_deref(),
        Some("Disabled"),
        "05-keda-scaler.yaml: behavior.scaleDown.selectPolicy must be Disabled, so KEDA \
         never undoes the load-balancer's scale-out or races its scale-in"
    );
    Ok(())
}

#[test]
fn quantities_parse_to_base_units() {
    let mib = 1024.0 * 1024.0;
    for (text, expected) in [
        ("500m", 0.5),
        ("1", 1.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("2.", 2.0),
        ("+1", 1.0),
        ("-1", -1.0),
        ("100n", 100e-9),
        ("250u", 250e-6),
        ("1k", 1e3),
        ("1G", 1e9),
        ("1E", 1e18),
        ("512Mi", 512.0 * mib),
        ("1Gi", 1024.0 * mib),
        ("1.5Gi", 1536.0 * mib),
        ("64Ki", 65536.0),
        ("2Ti", 2.0 * 1024f64.powi(4)),
        ("1e3", 1e3),
        ("1E3", 1e3),
        ("5e-3", 5e-3),
        ("1e+2", 1e2),
    ] {
        let parsed = parse_quantity(text);
        assert!(
            parsed
                .as_ref()
                .is_ok_and(|q| (q - expected).abs() <= expected.abs() * 1e-12),
            "{text}: {parsed:?}, expected {expected}"
        );
    }
}

#[test]
fn bad_quantities_are_errors_that_name_the_text() {
    assert_eq!(parse_quantity(""), Err(QuantityError::Empty));
    for text in ["Mi", "m", ".", "-", "1.2.3", "--1", " 1"] {
        assert_eq!(
            parse_quantity(text),
            Err(QuantityError::BadNumber(text.to_owned())),
            "{text}"
        );
    }
    for (text, suffix) in [
        ("12Q", "Q"),
        ("1mi", "mi"),
        ("1GB", "GB"),
        ("1 Gi", " Gi"),
        ("1e", "e"),
        ("1e1.5", "e1.5"),
        ("1Gi ", "Gi "),
    ] {
        let err = parse_quantity(text);
        assert_eq!(
            err,
            Err(QuantityError::UnknownSuffix {
                quantity: text.to_owned(),
                suffix: suffix.to_owned(),
            }),
            "{text}"
        );
    }
    let message = parse_quantity("12Q").err().map(|e| e.to_string());
    assert_eq!(
        message.as_deref(),
        Some(
            "invalid quantity \"12Q\": unknown suffix \"Q\" \
             (allowed: n u m k M G T P E, Ki Mi Gi Ti Pi Ei, or e/E and an exponent)"
        )
    );
}

/// Exactly at the threshold is not above it: 170 % of a 500m request is
/// 0.85 of a 1-core limit, the hotspot threshold itself.
#[test]
fn limit_fraction_converts_request_percent_to_limit_fraction() -> Result {
    let (request, limit) = (parse_quantity("500m")?, parse_quantity("1")?);
    assert_eq!(limit_fraction(90, request, limit), 0.45);
    assert_eq!(limit_fraction(170, request, limit), 0.85);
    assert!(limit_fraction(170, request, limit) <= 0.85);
    assert!(limit_fraction(171, request, limit) > 0.85);
    let (request, limit) = (parse_quantity("512Mi")?, parse_quantity("1Gi")?);
    assert_eq!(limit_fraction(180, request, limit), 0.90);
    assert_eq!(limit_fraction(200, request, limit), 1.0);
    Ok(())
}
