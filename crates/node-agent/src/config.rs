//! The agent's settings: flags (each also from the environment), parsed and
//! checked once at start.

use std::path::PathBuf;

use clap::Args;
use rtc_telemetry::LogFormat;

use crate::image::{ImageError, ImageMap};
use crate::ipam::{PodIps, PrefixError};
use crate::kubelet_server::TlsFiles;
use crate::node::{TaintError, parse_taint};
use crate::quantity::{QuantityError, parse_non_negative};

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The node name is not a DNS subdomain.
    #[error(
        "invalid node name {0:?}: expected a lowercase DNS subdomain of at most 253 characters, such as rtc-node-0"
    )]
    NodeName(String),
    /// The pod address prefix is unusable.
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    /// An image mapping is unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A capacity is not a quantity.
    #[error("--{flag}: {source}")]
    Capacity {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        source: QuantityError,
    },
    /// The cgroup parent is not a plain name.
    #[error(
        "invalid cgroup parent {0:?}: expected a relative path of plain names, such as rtc-node-agent"
    )]
    CgroupParent(String),
    /// A taint is unusable.
    #[error(transparent)]
    Taint(#[from] TaintError),
    /// The pod limit is zero.
    #[error("--max-pods must be at least 1")]
    MaxPods,
    /// The kubelet port is asked for without its certificates.
    #[error(
        "--kubelet-port {port} needs {missing}: the port serves HTTPS with client certificates (or use --kubelet-port 0 to serve nothing)"
    )]
    KubeletTls {
        /// The port asked for.
        port: u16,
        /// The flags missing, comma-separated.
        missing: String,
    },
}

impl ConfigError {
    /// A short, fixed label for this kind of error, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NodeName(_) => "node_name",
            Self::Prefix(_) => "prefix",
            Self::Image(_) => "image",
            Self::Capacity { .. } => "capacity",
            Self::CgroupParent(_) => "cgroup_parent",
            Self::Taint(_) => "taint",
            Self::MaxPods => "max_pods",
            Self::KubeletTls { .. } => "kubelet_tls",
        }
    }
}

/// The agent's flags.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Kubeconfig with this node's credentials.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,

    /// Name of the Node to register and serve.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// First three octets of pod addresses: pods get PREFIX.2 to PREFIX.254.
    #[arg(long, env = "POD_IP_PREFIX", default_value = "127.10.0")]
    pub pod_ip_prefix: String,

    /// NAME=PROGRAM: containers of image NAME run PROGRAM (repeatable;
    /// IMAGE_MAP takes a comma-separated list).
    #[arg(
        long = "image",
        value_name = "NAME=PROGRAM",
        env = "IMAGE_MAP",
        value_delimiter = ','
    )]
    pub images: Vec<String>,

    /// Directory for pod working directories and logs.
    #[arg(long, env = "STATE_DIR")]
    pub state_dir: PathBuf,

    /// Cgroup under which the node's pod cgroups go, in every hierarchy.
    #[arg(long, env = "CGROUP_PARENT", default_value = "rtc-node-agent")]
    pub cgroup_parent: String,

    /// CPU capacity reported (and allocatable).
    #[arg(long, env = "NODE_CPU", default_value = "2")]
    pub cpu: String,

    /// Memory capacity reported (and allocatable).
    #[arg(long, env = "NODE_MEMORY", default_value = "8Gi")]
    pub memory: String,

    /// Pod capacity reported (and allocatable).
    #[arg(long, env = "MAX_PODS", default_value_t = 110)]
    pub max_pods: u32,

    /// key[=value]:Effect taints to create the Node with (repeatable or
    /// comma-separated), as the kubelet's flag of the same name.
    #[arg(
        long = "register-with-taints",
        value_name = "TAINT",
        env = "REGISTER_WITH_TAINTS",
        value_delimiter = ','
    )]
    pub taints: Vec<String>,

    /// Port of the kubelet API on 127.0.0.1 (HTTPS, `/metrics/resource`),
    /// advertised in the Node's status; 0 serves nothing and advertises 0.
    #[arg(long, env = "KUBELET_PORT", default_value_t = 0)]
    pub kubelet_port: u16,

    /// Serving certificate of the kubelet port (PEM).
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// Private key of the serving certificate (PEM).
    #[arg(long, env = "TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: Option<PathBuf>,

    /// CA whose client certificates the kubelet port accepts (PEM).
    #[arg(long, env = "CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Kubeconfig path.
    pub kubeconfig: PathBuf,
    /// Node name.
    pub node_name: String,
    /// The pod address pool.
    pub pod_ips: PodIps,
    /// Image map.
    pub images: ImageMap,
    /// State directory.
    pub state_dir: PathBuf,
    /// Cgroup parent.
    pub cgroup_parent: String,
    /// CPU capacity, as given.
    pub cpu: String,
    /// Memory capacity, as given.
    pub memory: String,
    /// Pod capacity.
    pub max_pods: u32,
    /// Taints to register with.
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// The kubelet port and its certificates, when it is served.
    pub kubelet: Option<(u16, TlsFiles)>,
}

impl AgentArgs {
    /// Checks the flags.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first unusable setting.
    pub fn config(&self) -> Result<AgentConfig, ConfigError> {
        if !is_dns_subdomain(&self.node_name) {
            return Err(ConfigError::NodeName(self.node_name.clone()));
        }
        let parent_ok = !self.cgroup_parent.is_empty()
            && self
                .cgroup_parent
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !parent_ok {
            return Err(ConfigError::CgroupParent(self.cgroup_parent.clone()));
        }
        if self.max_pods == 0 {
            return Err(ConfigError::MaxPods);
        }
        parse_non_negative(&self.cpu, "cpu capacity").map_err(|source| ConfigError::Capacity {
            flag: "cpu",
            source,
        })?;
        parse_non_negative(&self.memory, "memory capacity").map_err(|source| {
            ConfigError::Capacity {
                flag: "memory",
                source,
            }
        })?;
        let kubelet = self.kubelet()?;
        Ok(AgentConfig {
            kubeconfig: self.kubeconfig.clone(),
            node_name: self.node_name.clone(),
            pod_ips: PodIps::new(&self.pod_ip_prefix)?,
            images: ImageMap::from_entries(self.images.iter().map(String::as_str))?,
            state_dir: self.state_dir.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            max_pods: self.max_pods,
            taints: self
                .taints
                .iter()
                .filter(|t| !t.trim().is_empty())
                .map(|t| parse_taint(t.trim()))
                .collect::<Result<_, _>>()?,
            kubelet,
        })
    }

    fn kubelet(&self) -> Result<Option<(u16, TlsFiles)>, ConfigError> {
        if self.kubelet_port == 0 {
            return Ok(None);
        }
        let named = [
            ("--tls-cert-file", &self.tls_cert_file),
            ("--tls-private-key-file", &self.tls_private_key_file),
            ("--client-ca-file", &self.client_ca_file),
        ];
        let missing: Vec<&str> = named
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(flag, _)| *flag)
            .collect();
        match (
            &self.tls_cert_file,
            &self.tls_private_key_file,
            &self.client_ca_file,
        ) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some((
                self.kubelet_port,
                TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: client_ca.clone(),
                },
            ))),
            _ => Err(ConfigError::KubeletTls {
                port: self.kubelet_port,
                missing: missing.join(", "),
            }),
        }
    }
}

/// A lowercase RFC 1123 subdomain, as Node names must be.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(args: &[&str]) -> AgentArgs {
        let argv = std::iter::once("rtc-node-agent").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.agent,
            Err(e) => panic!("{e}"),
        }
    }

    const REQUIRED: [&str; 6] = [
        "--kubeconfig",
        "/k",
        "--node-name",
        "rtc-node-0",
        "--state-dir",
        "/s",
    ];

    #[test]
    fn the_stack_command_line_parses() {
        let mut args = REQUIRED.to_vec();
        args.extend([
            "--pod-ip-prefix",
            "127.10.0",
            "--image",
            "rtc/socket-node=/w/socket-node",
            "--image",
            "rtc/python=/usr/bin/python3",
            "--cgroup-parent",
            "rtc-node-agent",
            "--cpu",
            "2",
            "--memory",
            "8Gi",
            "--max-pods",
            "110",
        ]);
        let config = parse(&args).config().expect("valid");
        assert_eq!(config.node_name, "rtc-node-0");
        assert_eq!(config.images.to_string(), "rtc/python, rtc/socket-node");
        assert_eq!(config.max_pods, 110);
        assert_eq!((config.cpu.as_str(), config.memory.as_str()), ("2", "8Gi"));
        assert!(config.taints.is_empty());
        assert_eq!(config.kubelet, None);
    }

    #[test]
    fn the_kubelet_port_comes_with_its_certificates() {
        let mut args = REQUIRED.to_vec();
        args.extend([
            "--kubelet-port",
            "17250",
            "--tls-cert-file",
            "/pki/kubelet.crt",
            "--tls-private-key-file",
            "/pki/kubelet.key",
            "--client-ca-file",
            "/pki/ca.crt",
        ]);
        let (port, files) = parse(&args)
            .config()
            .expect("valid")
            .kubelet
            .expect("served");
        assert_eq!(port, 17250);
        assert_eq!(files.client_ca, PathBuf::from("/pki/ca.crt"));

        let mut args = REQUIRED.to_vec();
        args.extend([
            "--kubelet-port",
            "17250",
            "--tls-cert-file",
            "/pki/kubelet.crt",
        ]);
        let err = parse(&args).config().expect_err("no key, no CA");
        assert_eq!(err.label(), "kubelet_tls");
        assert_eq!(
            err.to_string(),
            "--kubelet-port 17250 needs --tls-private-key-file, --client-ca-file: the port serves HTTPS with client certificates (or use --kubelet-port 0 to serve nothing)"
        );
    }

    #[test]
    fn defaults() {
        let config = parse(&REQUIRED).config().expect("valid");
        assert_eq!(config.cgroup_parent, "rtc-node-agent");
        assert_eq!(config.max_pods, 110);
        assert!(config.images.is_empty());
    }

    #[test]
    fn comma_separated_images_split() {
        let mut args = REQUIRED.to_vec();
        args.extend(["--image", "a=/bin/a,b=/bin/b"]);
        let config = parse(&args).config().expect("valid");
        assert_eq!(config.images.to_string(), "a, b");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |extra: &[&str]| {
            let mut args = REQUIRED.to_vec();
            args.extend(extra);
            parse(&args).config().expect_err("invalid")
        };
        let err = parse(&[
            "--kubeconfig",
            "/k",
            "--node-name",
            "Node_0",
            "--state-dir",
            "/s",
        ])
        .config()
        .expect_err("bad name");
        assert_eq!(err.label(), "node_name");
        assert_eq!(bad(&["--pod-ip-prefix", "10.0.0"]).label(), "prefix");
        assert_eq!(bad(&["--image", "python3"]).label(), "image");
        assert_eq!(bad(&["--cgroup-parent", "../x"]).label(), "cgroup_parent");
        assert_eq!(bad(&["--cgroup-parent", "/abs"]).label(), "cgroup_parent");
        assert_eq!(bad(&["--max-pods", "0"]).label(), "max_pods");
        assert_eq!(bad(&["--register-with-taints", "x"]).label(), "taint");
        let err = bad(&["--memory", "8GB"]);
        assert!(
            err.to_string()
                .starts_with("--memory: invalid quantity \"8GB\""),
            "{err}"
        );
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        for good in ["rtc-node-0", "a", "node.example.com", "n1"] {
            assert!(is_dns_subdomain(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", &"x".repeat(64)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
