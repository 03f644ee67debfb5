use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig, NamedAuthInfo};
use kube::{Api, Client, Config, Resource};

use crate::error::{BoxError, NoAnswer};
use crate::fixtures::UNSERVED_NODE;
use crate::{Endpoints, Error, Service, unique_name};

/// How long the API server may take to answer before the test is told to start the stack.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the service-account controller may take to fill a new
/// namespace. Seconds normally; but right after an API server restart (the
/// outage tests make one) its informers may be in client-go's watch backoff,
/// which grows to 30 s, and then re-list.
const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(90);

/// A connected Kubernetes client and a namespace created for one test.
///
/// The namespace is deleted when this value is dropped, or earlier by
/// [`cleanup`](Self::cleanup), which also reports failures. The stack's
/// namespace controller then removes everything in it, pods through their
/// graceful deletion; every test gets a fresh name, so a namespace still
/// `Terminating` does not get in anyone's way.
pub struct TestNamespace {
    client: Client,
    /// Kept to delete the namespace on drop with a client of its own, since
    /// `client` is bound to the runtime that drop may be blocking.
    config: Config,
    /// The kubeconfig the client came from, the base of the kubeconfigs
    /// written for service accounts.
    kubeconfig: PathBuf,
    name: String,
    deleted: bool,
}

impl TestNamespace {
    /// Reads the kubeconfig at `endpoints.kubeconfig` and creates a fresh
    /// namespace on the API server it names, then waits for the
    /// service-account controller to give it its `default` service account,
    /// without which the API server admits no pod into it.
    ///
    /// Only API servers on loopback are accepted, so a `KUBECONFIG` left
    /// pointing at a real cluster never receives test objects.
    ///
    /// # Errors
    ///
    /// [`Error::Kubeconfig`] when the kubeconfig cannot be read,
    /// [`Error::NotLoopback`] when it names a server off this machine,
    /// [`Error::Unreachable`] when the server does not answer, [`Error::Kube`]
    /// when it refuses the namespace.
    pub async fn create(endpoints: &Endpoints) -> Result<Self, Error> {
        let config = load_config(&endpoints.kubeconfig).await?;
        let address = config.cluster_url.to_string();
        let client = Client::try_from(config.clone())
            .map_err(|source| Error::unreachable(Service::KubernetesApi, &address, source))?;
        let name = unique_name("ns");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/part-of".to_owned(),
                        "rtc-testkit".to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let created = tokio::time::timeout(
            REQUEST_TIMEOUT,
            namespaces.create(&PostParams::default(), &namespace),
        )
        .await;
        match created {
            Ok(Ok(_)) => {}
            Ok(Err(error @ kube::Error::Api(_))) => return Err(Error::Kube(error)),
            Ok(Err(source)) => {
                return Err(Error::unreachable(Service::KubernetesApi, address, source));
            }
            Err(_elapsed) => {
                return Err(Error::unreachable(
                    Service::KubernetesApi,
                    address,
                    NoAnswer(REQUEST_TIMEOUT),
                ));
            }
        }
        let namespace = Self {
            client,
            config,
            kubeconfig: endpoints.kubeconfig.clone(),
            name,
            deleted: false,
        };
        namespace.wait_for_default_service_account().await?;
        Ok(namespace)
    }

    async fn wait_for_default_service_account(&self) -> Result<(), Error> {
        let accounts: Api<ServiceAccount> = self.api();
        let deadline = tokio::time::Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
        loop {
            match accounts.get_opt("default").await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(None) => {
                    return Err(Error::NoServiceAccount {
                        namespace: self.name.clone(),
                        waited: SERVICE_ACCOUNT_TIMEOUT,
                    });
                }
                Err(error) => return Err(Error::Kube(error)),
            }
        }
    }

    /// A client that authenticates as service account `account` of this
    /// namespace, with a bound token from the TokenRequest API, exactly as a
    /// pod running under that account would: the API server's RBAC decides
    /// what it may do.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] when the account does not exist or the token is
    /// refused.
    pub async fn service_account_client(&self, account: &str) -> Result<Client, Error> {
        let token = self.token(account).await?;
        let mut config = self.config.clone();
        config.auth_info = AuthInfo {
            token: Some(token.into()),
            ..AuthInfo::default()
        };
        let address = config.cluster_url.to_string();
        Client::try_from(config)
            .map_err(|source| Error::unreachable(Service::KubernetesApi, address, source))
    }

    /// Writes a kubeconfig at `path` that authenticates as service account
    /// `account` of this namespace (a bound token of one hour) against the
    /// same server, with this namespace as its default: for a process under
    /// test that should run with a pod's permissions.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] when the token is refused, [`Error::Kubeconfig`] when
    /// the kubeconfig cannot be read or written.
    pub async fn service_account_kubeconfig(
        &self,
        account: &str,
        path: &Path,
    ) -> Result<(), Error> {
        let token = self.token(account).await?;
        let failed = |source: BoxError| Error::Kubeconfig {
            path: path.to_owned(),
            source,
        };
        let mut kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| failed(e.into()))?;
        let user = format!("system:serviceaccount:{}:{account}", self.name);
        kubeconfig.auth_infos = vec![NamedAuthInfo {
            name: user.clone(),
            auth_info: Some(AuthInfo {
                token: Some(token.into()),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }];
        for context in kubeconfig
            .contexts
            .iter_mut()
            .filter_map(|c| c.context.as_mut())
        {
            context.user = Some(user.clone());
            context.namespace = Some(self.name.clone());
        }
        // JSON is YAML: every kubeconfig reader takes it.
        let text = serde_json::to_string(&kubeconfig).map_err(|e| failed(e.into()))?;
        std::fs::write(path, text).map_err(|e| failed(e.into()))
    }

    async fn token(&self, account: &str) -> Result<String, Error> {
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: None,
                expiration_seconds: Some(3_600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let issued = self
            .api::<ServiceAccount>()
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .map_err(Error::Kube)?;
        Ok(issued.status.and_then(|s| s.token).unwrap_or_default())
    }

    /// The connected client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The name of this test's namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An [`Api`] for namespaced resources of kind `K` in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace now.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] when the server refuses the deletion; a namespace that
    /// is already gone is not an error.
    pub async fn cleanup(mut self) -> Result<(), Error> {
        self.deleted = true;
        delete_namespace(&self.client, &self.name).await
    }
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("server", &self.config.cluster_url)
            .field("name", &self.name)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let config = self.config.clone();
        let name = std::mem::take(&mut self.name);
        crate::run_to_end(move || async move {
            if let Ok(client) = Client::try_from(config) {
                let _ =
                    tokio::time::timeout(REQUEST_TIMEOUT, delete_namespace(&client, &name)).await;
            }
        });
    }
}

async fn delete_namespace(client: &Client, name: &str) -> Result<(), Error> {
    // Pods bound to the node no agent serves would wait for a kubelet
    // forever, and the namespace with them: remove them at once, as the pod
    // garbage collector does in a cluster for pods of a vanished node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), name);
    let unserved = ListParams::default().fields(&format!("spec.nodeName={UNSERVED_NODE}"));
    let _ = pods
        .delete_collection(&DeleteParams::default().grace_period(0), &unserved)
        .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(Error::Kube(error)),
    }
}

async fn load_config(path: &Path) -> Result<Config, Error> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        path: path.to_owned(),
        source: source.into(),
    })?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.to_owned(),
            source: source.into(),
        })?;
    if !is_loopback(config.cluster_url.host().unwrap_or_default()) {
        return Err(Error::NotLoopback {
            address: config.cluster_url.to_string(),
            path: path.to_owned(),
        });
    }
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    Ok(config)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_accepted() {
        for host in ["127.0.0.1", "127.0.0.2", "localhost", "[::1]", "::1"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "kubernetes.default.svc",
            "",
            "192.168.1.10",
            "[2001:db8::1]",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
