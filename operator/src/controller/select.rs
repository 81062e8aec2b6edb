//! Which SbcClusters select an object, and what a cluster selects (the render's lookups).

use super::*;

/// The SbcClusters (from `clusters`) whose selector (`pick`) matches `obj`: the clusters to
/// re-render when `obj` changes. Only clusters in `obj`'s namespace can select it.
pub fn clusters_selecting<K: ResourceExt>(
    clusters: &[Arc<SbcCluster>],
    obj: &K,
    pick: fn(&SbcCluster) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Vec<ObjectRef<SbcCluster>> {
    clusters
        .iter()
        .filter(|c| c.namespace() == obj.namespace())
        .filter(|c| render::selects(pick(c), obj.labels()))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The SbcClusters to re-render when the Secret `namespace/name` is created, changed or
/// deleted: those whose rendered config refers to it (`spec.redis.urlSecretRef`,
/// `spec.auth.nonceSecretRef`, and the required headers of the AccessLists they select).
/// `access_lists` may hold AccessLists of any namespace; only the Secret's own namespace
/// counts, since every reference is to a Secret beside the object that names it.
pub fn clusters_using_secret(
    clusters: &[Arc<SbcCluster>],
    access_lists: &[Arc<AccessList>],
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<SbcCluster>> {
    let mut out: Vec<ObjectRef<SbcCluster>> = clusters
        .iter()
        .filter(|c| c.namespace().as_deref() == namespace)
        .filter(|c| {
            let selected = access_lists
                .iter()
                .filter(|a| a.namespace().as_deref() == namespace)
                .filter(|a| render::selects(c.spec.access_list_selector.as_ref(), a.labels()))
                .map(|a| a.as_ref());
            render::mounted_secrets(c, selected).contains(name)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The SbcClusters to re-render when Service `svc` changes: those selecting a DispatcherSet
/// whose destinations come from it (so a backend Service created after its DispatcherSet, or
/// a renamed port, is picked up at once).
pub fn clusters_using_service(
    clusters: &[Arc<SbcCluster>],
    sets: &[Arc<DispatcherSet>],
    svc: &Service,
) -> Vec<ObjectRef<SbcCluster>> {
    let svc_ns = svc.namespace();
    let users = sets.iter().filter(|ds| {
        ds.spec.destinations.service.as_ref().is_some_and(|src| {
            src.name == svc.name_any() && src.namespace.clone().or_else(|| ds.namespace()) == svc_ns
        })
    });
    let mut out: Vec<ObjectRef<SbcCluster>> = users
        .flat_map(|ds| {
            clusters_selecting(clusters, ds.as_ref(), |c| {
                c.spec.dispatcher_set_selector.as_ref()
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.dedup();
    out
}

/// The objects of kind `K` in `ns` that `selector` matches, and all of them (those a cluster
/// no longer selects must stop saying they are in effect), each sorted by name.
pub(super) async fn selected<K>(
    client: &Client,
    ns: &str,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<(Vec<K>, Vec<K>), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let mut all = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    all.sort_by_key(|o| o.name_any());
    let items: Vec<K> = all
        .iter()
        .filter(|o| render::selects(selector, o.labels()))
        .cloned()
        .collect();
    Ok((items, all))
}

pub(super) async fn lookups(
    client: &Client,
    ns: &str,
    cluster: &SbcCluster,
    sets: &[DispatcherSet],
    acls: &[AccessList],
) -> Result<Lookups, Error> {
    let mut out = Lookups::default();
    let secret_names = render::mounted_secrets(cluster, acls);
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    for name in secret_names {
        if let Some(s) = secrets.get_opt(&name).await? {
            let redis = cluster
                .spec
                .redis
                .as_ref()
                .filter(|r| r.url_secret_ref.name == name);
            if let Some(r) = redis {
                out.redis_url = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&r.url_secret_ref.key))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned());
            }
            // The rotation hash: of the data, so that a label change rolls nothing.
            let data = s.data.clone().unwrap_or_default();
            out.secret_hashes.insert(
                (ns.to_owned(), name.clone()),
                render::secret_data_hash(data.iter().map(|(k, v)| (k, v.0.as_slice()))),
            );
            // Only the keys: the values reach the pods through the mounted Secret.
            let keys = s
                .data
                .unwrap_or_default()
                .into_keys()
                .chain(s.string_data.unwrap_or_default().into_keys())
                .collect();
            out.secrets.insert((ns.to_owned(), name), keys);
        }
    }
    for ds in sets {
        if let Some(src) = &ds.spec.destinations.service {
            let sns = src.namespace.clone().unwrap_or_else(|| ns.to_owned());
            let key = (sns.clone(), src.name.clone());
            // Another namespace's Service is refused by the renderer, never read.
            if sns != ns || out.services.contains_key(&key) {
                continue;
            }
            let api = Api::<Service>::namespaced(client.clone(), &sns);
            if let Some(svc) = api.get_opt(&src.name).await? {
                let ports = svc
                    .spec
                    .and_then(|s| s.ports)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p.name)
                    .collect();
                out.services.insert(key, ports);
            }
        }
    }
    if cluster.spec.service.type_ == kubesbc_crds::cluster::ServiceType::LoadBalancer {
        let own = Api::<Service>::namespaced(client.clone(), ns)
            .get_opt(&cluster.name_any())
            .await?
            .filter(|svc| controlled_by(svc, cluster));
        out.load_balancer = own.as_ref().and_then(render::load_balancer_address);
    }
    Ok(out)
}
