//! `deploy/k8s/base/01-rbac.yaml` grants exactly the requests the scaler makes
//! (plus the leader election's leases), its objects are accepted by the
//! local stack's API server, and its service account is refused (403)
//! everything else by the server's real RBAC authorizer.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use rtc_workload::{Operation, WorkloadKind};

type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

const MANIFEST: &str = "../../deploy/k8s/base/01-rbac.yaml";

/// The Role's rules. They are written one per entry, each key on one line
/// with a flow sequence (a JSON array), so no YAML parser is needed.
fn manifest_rules() -> Result<Vec<PolicyRule>> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(MANIFEST))?;
    let role = text
        .split("\n---")
        .find(|doc| doc.contains("\nkind: Role\n"))
        .ok_or("no Role in the manifest")?;
    let rules_at = role.find("\nrules:").ok_or("the Role has no rules")?;
    let mut rules: Vec<PolicyRule> = Vec::new();
    for line in role[rules_at..].lines().map(str::trim) {
        let list = |key: &str| -> Result<Option<Vec<String>>> {
            match line.trim_start_matches("- ").strip_prefix(key) {
                Some(value) => Ok(Some(serde_json::from_str(value.trim())?)),
                None => Ok(None),
            }
        };
        if let Some(groups) = list("apiGroups:")? {
            rules.push(PolicyRule {
                api_groups: Some(groups),
                ..PolicyRule::default()
            });
        } else if let Some(resources) = list("resources:")? {
            rules
                .last_mut()
                .ok_or("resources before apiGroups")?
                .resources = Some(resources);
        } else if let Some(verbs) = list("verbs:")? {
            rules.last_mut().ok_or("verbs before apiGroups")?.verbs = verbs;
        }
    }
    Ok(rules)
}

fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

#[test]
fn the_role_grants_exactly_what_is_used() -> Result {
    let mut needed = BTreeSet::new();
    for kind in WorkloadKind::ALL {
        for op in [
            Operation::GetWorkload(kind),
            Operation::UpdateScale(kind),
            Operation::PatchWorkload(kind),
        ] {
            needed.insert((
                op.api_group().to_owned(),
                op.resource().to_owned(),
                op.verb().to_owned(),
            ));
        }
    }
    for op in [Operation::ListPods, Operation::PatchPod] {
        needed.insert((
            op.api_group().to_owned(),
            op.resource().to_owned(),
            op.verb().to_owned(),
        ));
    }
    // crates/balancer: a rebalance reads a hot node's pod for its IP.
    needed.insert(("".to_owned(), "pods".to_owned(), "get".to_owned()));
    // crates/leader: leader election on a Lease (reads, creates it once,
    // renews with merge patches that carry the resourceVersion).
    for verb in ["get", "create", "patch"] {
        needed.insert((
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            verb.to_owned(),
        ));
    }
    assert_eq!(grants(&manifest_rules()?), needed);
    Ok(())
}

#[tokio::test]
async fn the_manifest_objects_are_accepted_by_the_api_server() -> Result {
    let namespace = rtc_testkit::kubernetes().await?;
    let meta = || ObjectMeta {
        name: Some("load-balancer".to_owned()),
        ..ObjectMeta::default()
    };
    let params = PostParams::default();
    namespace
        .api::<ServiceAccount>()
        .create(
            &params,
            &ServiceAccount {
                metadata: meta(),
                ..ServiceAccount::default()
            },
        )
        .await?;
    let role = Role {
        metadata: meta(),
        rules: Some(manifest_rules()?),
    };
    let created = namespace.api::<Role>().create(&params, &role).await?;
    assert_eq!(created.rules, role.rules);
    let binding = RoleBinding {
        metadata: meta(),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: "load-balancer".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "load-balancer".to_owned(),
            namespace: Some(namespace.name().to_owned()),
            ..Subject::default()
        }]),
    };
    namespace
        .api::<RoleBinding>()
        .create(&params, &binding)
        .await?;
    namespace.cleanup().await?;
    Ok(())
}

/// The status code of a request's outcome: 200 for success, the API
/// server's code for an error.
fn code<T>(result: &Result<T, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(_) => 0,
    }
}

/// As the load-balancer's service account, under the real RBAC of the
/// stack's API server: what the Role grants is authorized (a 404 for an
/// object that is not there is an authorized answer), everything else is a
/// 403.
#[tokio::test]
async fn the_service_account_gets_403_for_anything_not_granted() -> Result {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::Api;
    use kube::api::{DeleteParams, ListParams, Patch, PatchParams};

    let namespace = rtc_testkit::kubernetes().await?;
    rtc_testkit::fixtures::grant_load_balancer(&namespace).await?;
    let client = namespace.service_account_client("load-balancer").await?;
    let ns = namespace.name();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "default");
    let merge = Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}}));

    // Granted: answered by the resource, not refused.
    assert_eq!(
        code(&deployments.get("socket").await),
        404,
        "get deployments"
    );
    assert_eq!(
        code(&pods.list(&ListParams::default()).await),
        200,
        "list pods"
    );
    assert_eq!(
        code(&leases.get("rtc-load-balancer").await),
        404,
        "get leases"
    );
    // Not granted: the real authorizer says 403.
    assert_eq!(
        code(&deployments.list(&ListParams::default()).await),
        403,
        "list deployments"
    );
    assert_eq!(
        code(&deployments.delete("socket", &DeleteParams::default()).await),
        403,
        "delete deployments"
    );
    assert_eq!(
        code(
            &deployments
                .patch("socket", &PatchParams::default(), &merge)
                .await
        ),
        404,
        "patch deployments (granted for the claim; there is no such Deployment)"
    );
    assert_eq!(
        code(&pods.delete("p", &DeleteParams::default()).await),
        403,
        "delete pods"
    );
    assert_eq!(
        code(&pods.get("p").await),
        404,
        "get pods (granted for a rebalance's shed; there is no such pod)"
    );
    assert_eq!(
        code(&secrets.list(&ListParams::default()).await),
        403,
        "list secrets"
    );
    assert_eq!(
        code(&leases.delete("l", &DeleteParams::default()).await),
        403,
        "delete leases"
    );
    assert_eq!(
        code(&elsewhere.list(&ListParams::default()).await),
        403,
        "pods of another namespace"
    );
    namespace.cleanup().await?;
    Ok(())
}
