//! Prints, as one YAML stream, every object the operator renders for the resources in
//! `examples/` (with the `asterisk` Service and the signature Secret they refer to), so
//! `scripts/chart-check.sh` can validate them against the Kubernetes schemas.
//!
//! `cargo run -q -p kubesbc-operator --example render`

use std::collections::BTreeSet;
use std::path::Path;

use kubesbc_crds::{AccessList, DispatcherSet, SbcCluster, TenantThrottle};
use kubesbc_operator::render::{self, Inputs, Lookups};

fn load<T: serde::de::DeserializeOwned + kube::Resource>(
    dir: &Path,
    file: &str,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(dir.join(file))?;
    let mut obj: T = serde_saphyr::from_str(&text)?;
    obj.meta_mut().namespace = Some("voip".into());
    obj.meta_mut().uid = Some("00000000-0000-0000-0000-000000000001".into());
    Ok(obj)
}

fn main() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let cluster: SbcCluster = load(&dir, "sbccluster.yaml")?;
    let sets: Vec<DispatcherSet> = vec![
        load(&dir, "dispatcherset.yaml")?,
        load(&dir, "dispatcherset-static.yaml")?,
    ];
    let throttles: Vec<TenantThrottle> = vec![load(&dir, "tenantthrottle.yaml")?];
    let acls: Vec<AccessList> = vec![load(&dir, "accesslist.yaml")?];
    let mut lookups = Lookups::default();
    lookups.secrets.insert(
        ("voip".into(), "company-signature".into()),
        BTreeSet::from(["signature".to_owned()]),
    );
    lookups
        .services
        .insert(("voip".into(), "asterisk".into()), vec!["sip".into()]);
    for (secret, key) in [("sbc-auth", "nonce-key"), ("redis-url", "url")] {
        lookups.secrets.insert(
            ("voip".into(), secret.into()),
            BTreeSet::from([key.to_owned()]),
        );
    }
    lookups.redis_url = Some("redis://:change-me@redis.voip.svc:6379/0".into());
    let host: SbcCluster = load(&dir, "hostnetwork/sbccluster.yaml")?;
    let mut variants = vec![cluster.clone(), host];
    // Also the autoscaling + TLS shape, so the HPA is validated too (the hostNetwork example
    // above covers the DaemonSet).
    let mut scaled = cluster;
    scaled.spec.replicas = None;
    scaled.spec.autoscaling = Some(kubesbc_crds::cluster::Autoscaling {
        min_replicas: 2,
        max_replicas: 6,
        target_cpu_utilization: 70,
    });
    scaled.spec.tls = Some(kubesbc_crds::cluster::TlsSpec {
        secret_name: "sbc-cert".into(),
    });
    variants.push(scaled);

    let mut out = String::new();
    for c in &variants {
        let r = render::render(Inputs {
            cluster: c,
            dispatcher_sets: &sets,
            throttles: &throttles,
            access_lists: &acls,
            lookups: &lookups,
        })?;
        let mut docs = vec![
            serde_json::to_value(&r.config_map)?,
            match &r.workload {
                render::Workload::Deployment(d) => serde_json::to_value(d)?,
                render::Workload::DaemonSet(d) => serde_json::to_value(d)?,
            },
            serde_json::to_value(&r.admin_service)?,
            serde_json::to_value(&r.service_account)?,
            serde_json::to_value(&r.role)?,
            serde_json::to_value(&r.role_binding)?,
            serde_json::to_value(&r.pdb)?,
        ];
        for s in &r.services {
            docs.push(serde_json::to_value(s)?);
        }
        if let Some(h) = &r.hpa {
            docs.push(serde_json::to_value(h)?);
        }
        for d in docs {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(&d)?);
        }
    }
    print!("{out}");
    Ok(())
}
