//! Service-account credentials for pods, as the kubelet's projected
//! `kube-api-access` volume gives them: a token bound to the pod, obtained
//! through the TokenRequest API with the node's own credentials (the Node
//! authorizer and NodeRestriction allow exactly that: a token for the
//! service account of a pod bound to this node, bound to that pod).
//!
//! Pods here are processes on the host, so the files cannot sit at
//! `/var/run/secrets/kubernetes.io/serviceaccount` (every pod would share
//! one path). They go to `<pod dir>/serviceaccount/` (`token`, `namespace`,
//! and a `kubeconfig` naming the API server, its CA and the token file),
//! and the container gets `KUBECONFIG` pointing at that kubeconfig, plus
//! `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`. A client that
//! infers its configuration (kube-rs `Client::try_default`, client-go's
//! `BuildConfigFromFlags("", $KUBECONFIG)`, kubectl) then talks to the API
//! server as the pod's service account.
//!
//! A token is requested at each container start, valid for
//! [`TOKEN_LIFETIME`]; the API server rejects it once the pod is deleted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::PostParams;
use kube::config::Kubeconfig;
use kube::{Api, Client};
use serde_json::{Value, json};

/// How long a pod's token is valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Where the API server is and how to trust it, from the agent's own
/// kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAccess {
    /// The API server's URL.
    pub server: String,
    /// Its CA bundle, base64 PEM, as a kubeconfig carries it.
    pub ca_data: Option<String>,
    /// Or the path of its CA bundle.
    pub ca_file: Option<String>,
}

impl ApiAccess {
    /// The current context's cluster of `kubeconfig`; `None` when it names
    /// none or the cluster has no server.
    pub fn of(kubeconfig: &Kubeconfig) -> Option<Self> {
        let context = kubeconfig.current_context.as_deref()?;
        let cluster_name = kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == context)?
            .context
            .as_ref()?
            .cluster
            .clone();
        let cluster = kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)?
            .cluster
            .as_ref()?;
        Some(Self {
            server: cluster.server.clone()?,
            ca_data: cluster.certificate_authority_data.clone(),
            ca_file: cluster.certificate_authority.clone(),
        })
    }

    /// Host and port of the server URL, for `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT`.
    pub fn host_port(&self) -> Option<(String, String)> {
        let rest = self
            .server
            .strip_prefix("https://")
            .or_else(|| self.server.strip_prefix("http://"))?;
        let authority = rest.split('/').next()?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                (host, port)
            }
            _ => (authority, "443"),
        };
        Some((host.to_owned(), port.to_owned()))
    }
}

/// Whether `pod` gets a token: it names a service account and does not
/// opt out with `automountServiceAccountToken: false`.
pub fn wants_token(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if spec.automount_service_account_token == Some(false) {
        return None;
    }
    spec.service_account_name
        .as_deref()
        .filter(|name| !name.is_empty())
}

/// The kubeconfig of a pod's service account (JSON, which every kubeconfig
/// reader accepts).
pub fn pod_kubeconfig(access: &ApiAccess, namespace: &str, token_file: &Path) -> Value {
    let mut cluster = json!({ "server": access.server });
    if let Some(data) = &access.ca_data {
        cluster["certificate-authority-data"] = json!(data);
    }
    if let Some(file) = &access.ca_file {
        cluster["certificate-authority"] = json!(file);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "cluster", "cluster": cluster }],
        "users": [{ "name": "pod", "user": { "tokenFile": token_file.display().to_string() } }],
        "contexts": [{ "name": "pod", "context": { "cluster": "cluster", "user": "pod", "namespace": namespace } }],
        "current-context": "pod",
    })
}

/// Requests a token for `pod`'s service account `account`, bound to the
/// pod, writes the files under `dir/serviceaccount` and returns the
/// variables the container gets.
///
/// # Errors
///
/// A message naming what failed (the request, or a file).
pub async fn credentials(
    client: &Client,
    access: &ApiAccess,
    pod: &Pod,
    account: &str,
    dir: &Path,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.clone().unwrap_or_default();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(name),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(i64::try_from(TOKEN_LIFETIME.as_secs()).unwrap_or(86_400)),
        }),
        ..TokenRequest::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            format!("requesting a token for service account {namespace}/{account}: {e}")
        })?;
    let token = answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("the token request for {namespace}/{account} returned no token"))?;
    let sa_dir = dir.join("serviceaccount");
    let write = |path: PathBuf, content: Vec<u8>| async move {
        tokio::fs::write(&path, content)
            .await
            .map_err(|e| format!("writing {}: {e}", path.display()))
    };
    tokio::fs::create_dir_all(&sa_dir)
        .await
        .map_err(|e| format!("creating {}: {e}", sa_dir.display()))?;
    let token_file = sa_dir.join("token");
    write(token_file.clone(), token.into_bytes()).await?;
    write(sa_dir.join("namespace"), namespace.as_bytes().to_vec()).await?;
    let kubeconfig = sa_dir.join("kubeconfig");
    let text = pod_kubeconfig(access, namespace, &token_file).to_string();
    write(kubeconfig.clone(), text.into_bytes()).await?;
    let mut env = vec![("KUBECONFIG".to_owned(), kubeconfig.display().to_string())];
    if let Some((host, port)) = access.host_port() {
        env.push(("KUBERNETES_SERVICE_HOST".to_owned(), host));
        env.push(("KUBERNETES_SERVICE_PORT".to_owned(), port));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(server: &str) -> ApiAccess {
        ApiAccess {
            server: server.to_owned(),
            ca_data: Some("Q0E=".to_owned()),
            ca_file: None,
        }
    }

    #[test]
    fn the_access_comes_from_the_current_context() -> Result<(), Box<dyn std::error::Error>> {
        let text = r#"
apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: "https://10.0.0.1:6443"}
- name: local
  cluster: {server: "https://127.0.0.1:16443", certificate-authority-data: Q0E=}
users:
- name: node
  user: {token: x}
contexts:
- name: here
  context: {cluster: local, user: node}
current-context: here
"#;
        let kubeconfig = Kubeconfig::from_yaml(text)?;
        assert_eq!(
            ApiAccess::of(&kubeconfig),
            Some(access("https://127.0.0.1:16443"))
        );
        Ok(())
    }

    #[test]
    fn host_and_port_of_the_server() {
        let port = |s: &str| access(s).host_port();
        assert_eq!(
            port("https://127.0.0.1:16443"),
            Some(("127.0.0.1".into(), "16443".into()))
        );
        assert_eq!(
            port("https://api.example/"),
            Some(("api.example".into(), "443".into()))
        );
        assert_eq!(port("unix:///x"), None);
    }

    #[test]
    fn the_pod_kubeconfig_reads_back_with_the_token_file_and_namespace()
    -> Result<(), Box<dyn std::error::Error>> {
        let value = pod_kubeconfig(
            &access("https://127.0.0.1:16443"),
            "rtc",
            Path::new("/p/serviceaccount/token"),
        );
        let kubeconfig = Kubeconfig::from_yaml(&value.to_string())?;
        assert_eq!(
            ApiAccess::of(&kubeconfig),
            Some(access("https://127.0.0.1:16443"))
        );
        let user = kubeconfig.auth_infos[0]
            .auth_info
            .as_ref()
            .ok_or("no user")?;
        assert_eq!(user.token_file.as_deref(), Some("/p/serviceaccount/token"));
        let context = kubeconfig.contexts[0]
            .context
            .as_ref()
            .ok_or("no context")?;
        assert_eq!(context.namespace.as_deref(), Some("rtc"));
        Ok(())
    }

    #[test]
    fn only_pods_with_a_service_account_that_do_not_opt_out_get_a_token() {
        use k8s_openapi::api::core::v1::PodSpec;
        let pod = |account: Option<&str>, automount: Option<bool>| Pod {
            spec: Some(PodSpec {
                service_account_name: account.map(str::to_owned),
                automount_service_account_token: automount,
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert_eq!(wants_token(&pod(Some("lb"), None)), Some("lb"));
        assert_eq!(wants_token(&pod(Some("lb"), Some(true))), Some("lb"));
        assert_eq!(wants_token(&pod(Some("lb"), Some(false))), None);
        assert_eq!(wants_token(&pod(None, None)), None);
        assert_eq!(wants_token(&pod(Some(""), None)), None);
    }
}
