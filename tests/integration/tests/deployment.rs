//! The deployment files say what the code reads.
//!
//! There is no Docker engine or cluster here, so instead of starting `compose.yaml` or applying
//! `deploy/k8s/`, each service's own `Config::from_env` (and its telemetry config, as `main` reads it)
//! runs on exactly the environment a file gives that service, through a
//! [`RecordingSource`] that notes every name the code asks for. That proves every value parses and
//! validates, that no variable set is one the service ignores (a typo or a dead setting), and gives
//! the ports and URLs the service will really use, which the files' ports, health checks, probes and
//! dependencies must then match. Schema validity is `.ci/run`'s job (kubernetes-validate,
//! check-jsonschema); this file checks meaning.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use platform::auth::TokenAudience;
use platform::config::{ConfigError, Env, RecordingSource};
use platform::telemetry::{LogFormat, TelemetryConfig};
use serde_norway::Value;

const SERVICES: [&str; 5] = ["identity", "catalog", "ordering", "notifications", "gateway"];

/// Variables a deployment file may set although no service config reads them, and who does.
const READ_ELSEWHERE: &[(&str, &str)] = &[("HEALTH_PORT", "the image's HEALTHCHECK (Dockerfile)")];

/// The infrastructure compose runs, with the port each listens on inside the network.
const INFRASTRUCTURE: [(&str, u16); 3] = [("postgres", 5432), ("redis", 6379), ("rabbitmq", 5672)];

/// The user the image runs as (`USER` in the Dockerfile), which the pods' securityContext repeats.
const IMAGE_UID: i64 = 10001;

/// The Secret every credential comes from in Kubernetes.
const SECRET_NAME: &str = "ticketflow-secrets";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_norway::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

/// Every document of a multi-document YAML file.
fn yaml_documents(relative: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = read(relative);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
        })
        .filter(|document| !document.is_null())
        .collect()
}

fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |v, key| v.get(*key).unwrap_or(&Value::Null))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).as_str()
}

/// A YAML scalar as the string a container sees (compose turns `true` and `5` into "true" and "5").
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn mapping_keys(value: &Value) -> BTreeSet<String> {
    value.as_mapping().map(|m| m.keys().map(scalar).collect()).unwrap_or_default()
}

/// One service's configuration, parsed by its own code from a deployment file's environment.
enum Loaded {
    Identity(identity::Config),
    Catalog(catalog::Config),
    Ordering(ordering::Config),
    Notifications(notifications::Config),
    Gateway(gateway::Config),
}

struct ServiceView {
    name: String,
    config: Loaded,
    telemetry: TelemetryConfig,
    /// Every variable the configs asked for.
    read: BTreeSet<String>,
}

impl ServiceView {
    /// Parses `vars` the way `<service>/src/main.rs` does; the error names the variable at fault.
    fn load(service: &str, vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let source: HashMap<String, String> = vars.clone().into_iter().collect();
        let recording = RecordingSource::new(source);
        let env = Env::new(&recording);
        let config = match service {
            "identity" => Loaded::Identity(identity::Config::from_env(&env)?),
            "catalog" => Loaded::Catalog(catalog::Config::from_env(&env)?),
            "ordering" => Loaded::Ordering(ordering::Config::from_env(&env)?),
            "notifications" => Loaded::Notifications(notifications::Config::from_env(&env)?),
            "gateway" => Loaded::Gateway(gateway::Config::from_env(&env)?),
            other => panic!("unknown service {other}"),
        };
        let telemetry = TelemetryConfig::from_env(&env, service)?;
        Ok(Self { name: service.to_owned(), config, telemetry, read: recording.requested() })
    }

    fn load_or_panic(service: &str, vars: &BTreeMap<String, String>, file: &str) -> Self {
        Self::load(service, vars).unwrap_or_else(|e| panic!("{file}: {service} refuses its environment: {e}"))
    }

    /// The public HTTP port (the API, `/alive`, a status-only `/health`); catalog (gRPC) and
    /// notifications (a worker) have none.
    fn public_http_addr(&self) -> Option<SocketAddr> {
        match &self.config {
            Loaded::Identity(c) => Some(c.listen_addr),
            Loaded::Ordering(c) => Some(c.listen_addr),
            Loaded::Gateway(c) => Some(c.listen_addr),
            Loaded::Catalog(_) | Loaded::Notifications(_) => None,
        }
    }

    /// The admin port: `/metrics`, the per-check `/health`, `/alive`.
    fn admin_addr(&self) -> SocketAddr {
        match &self.config {
            Loaded::Identity(c) => c.admin_listen_addr,
            Loaded::Catalog(c) => c.admin_listen_addr,
            Loaded::Ordering(c) => c.admin_listen_addr,
            Loaded::Notifications(c) => c.admin_listen_addr,
            Loaded::Gateway(c) => c.admin_listen_addr,
        }
    }

    /// Where health checks and probes go: the public port's cheap `/health` when there is one (what
    /// a load balancer sees), else the admin port.
    fn probe_addr(&self) -> SocketAddr {
        self.public_http_addr().unwrap_or_else(|| self.admin_addr())
    }

    fn grpc_addr(&self) -> Option<SocketAddr> {
        match &self.config {
            Loaded::Catalog(c) => Some(c.grpc_listen_addr),
            _ => None,
        }
    }

    fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.public_http_addr().into_iter().chain([self.admin_addr()]).chain(self.grpc_addr()).collect()
    }

    /// Every URL the service connects to, with the variable it came from.
    fn urls(&self) -> Vec<(&'static str, &str)> {
        match &self.config {
            Loaded::Identity(c) => vec![("DATABASE_URL", &c.database.url)],
            Loaded::Catalog(c) => vec![
                ("DATABASE_URL", &c.database.url),
                ("REDIS_URL", &c.cache.url),
                ("IDENTITY_URL", &c.identity_url),
            ],
            Loaded::Ordering(c) => vec![
                ("DATABASE_URL", &c.database.url),
                ("CATALOG_GRPC_URL", &c.catalog.url),
                ("IDENTITY_URL", &c.identity_url),
                ("AMQP_URL", &c.relay.amqp_url),
            ],
            Loaded::Notifications(c) => vec![("DATABASE_URL", &c.database.url), ("AMQP_URL", &c.amqp_url)],
            Loaded::Gateway(c) => vec![
                ("IDENTITY_URL", &c.downstream.identity_url),
                ("ORDERING_URL", &c.downstream.ordering_url),
                ("CATALOG_GRPC_URL", &c.downstream.catalog_url),
                ("AMQP_URL", &c.events.amqp_url),
            ],
        }
        .into_iter()
        .map(|(name, url)| (name, url.as_str()))
        .collect()
    }

    fn audience(&self) -> Option<&TokenAudience> {
        match &self.config {
            Loaded::Identity(c) => Some(&c.audience),
            Loaded::Catalog(c) => Some(&c.token_audience),
            Loaded::Ordering(c) => Some(&c.audience),
            Loaded::Notifications(_) => None,
            Loaded::Gateway(c) => Some(&c.audience),
        }
    }

    /// Names set in a file that this service does not read (and nothing else is known to).
    fn unread<'a>(&self, set: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
        set.into_iter()
            .filter(|name| !self.read.contains(*name))
            .filter(|name| !READ_ELSEWHERE.iter().any(|(allowed, _)| allowed == name))
            .collect()
    }
}

/// The service a URL points at, and the port (explicit, or the scheme's default).
fn url_target(url: &str) -> (String, u16) {
    let parsed = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    let host = parsed.host_str().unwrap_or_else(|| panic!("{url} names no host")).to_owned();
    let default_port = match parsed.scheme() {
        "postgres" | "postgresql" => 5432,
        "redis" => 6379,
        "amqp" => 5672,
        "amqps" => 5671,
        "http" => 80,
        "https" => 443,
        other => panic!("{url}: unexpected scheme {other}"),
    };
    (host, parsed.port().unwrap_or(default_port))
}

// ------------------------------------------------------------------------------------------------
// compose.yaml

struct Compose {
    doc: Value,
}

impl Compose {
    fn load() -> Self {
        Self { doc: yaml("compose.yaml") }
    }

    fn service(&self, name: &str) -> &Value {
        let service = at(&self.doc, &["services", name]);
        assert!(service.is_mapping(), "compose.yaml has no service {name}");
        service
    }

    fn service_names(&self) -> BTreeSet<String> {
        mapping_keys(at(&self.doc, &["services"]))
    }

    /// `environment` as a map, in either of compose's two spellings, with `${NAME:?...}` references
    /// to the operator's environment resolved to example values.
    fn environment(&self, name: &str) -> BTreeMap<String, String> {
        self.raw_environment(name)
            .into_iter()
            .map(|(var, value)| {
                let value = match required_from_host(&value) {
                    Some(host_var) => COMPOSE_HOST_EXAMPLES
                        .iter()
                        .find(|(known, _)| *known == host_var)
                        .map(|(_, example)| (*example).to_owned())
                        .unwrap_or_else(|| {
                            panic!("{name}: {var} needs {host_var}, which has no example here")
                        }),
                    None => value,
                };
                (var, value)
            })
            .collect()
    }

    /// `environment` as written.
    fn raw_environment(&self, name: &str) -> BTreeMap<String, String> {
        match at(self.service(name), &["environment"]) {
            Value::Null => BTreeMap::new(),
            Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
            Value::Sequence(items) => items
                .iter()
                .map(|item| {
                    let item = scalar(item);
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            other => panic!("{name}: environment is {other:?}"),
        }
    }

    fn view(&self, name: &str) -> ServiceView {
        ServiceView::load_or_panic(name, &self.environment(name), "compose.yaml")
    }

    /// Published ports as (host port, container port), short or long syntax.
    fn published(&self, name: &str) -> Vec<(u16, u16)> {
        let ports = at(self.service(name), &["ports"]).as_sequence().cloned().unwrap_or_default();
        ports
            .iter()
            .map(|port| match port {
                Value::Mapping(_) => {
                    let target = scalar(at(port, &["target"]));
                    let published = scalar(at(port, &["published"]));
                    (published.parse().expect("published port"), target.parse().expect("target port"))
                }
                short => {
                    let short = scalar(short);
                    let short = short.split('/').next().unwrap_or_default();
                    // [ip:]host:container
                    let parts: Vec<&str> = short.rsplitn(3, ':').collect();
                    assert!(parts.len() >= 2, "{name}: port {short} publishes no host port");
                    (parts[1].parse().expect("host port"), parts[0].parse().expect("container port"))
                }
            })
            .collect()
    }

    /// The health check command as one string.
    fn healthcheck(&self, name: &str) -> String {
        match at(self.service(name), &["healthcheck", "test"]) {
            Value::Sequence(parts) => parts.iter().map(scalar).collect::<Vec<_>>().join(" "),
            Value::String(command) => command.clone(),
            other => panic!("{name} has no healthcheck test (got {other:?})"),
        }
    }

    /// `depends_on` as service → condition.
    fn depends_on(&self, name: &str) -> BTreeMap<String, String> {
        match at(self.service(name), &["depends_on"]) {
            Value::Null => BTreeMap::new(),
            Value::Sequence(names) => {
                names.iter().map(|n| (scalar(n), "service_started".to_owned())).collect()
            }
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| (scalar(k), str_at(v, &["condition"]).unwrap_or("service_started").to_owned()))
                .collect(),
            other => panic!("{name}: depends_on is {other:?}"),
        }
    }
}

/// Variables compose takes from the operator's shell (`${NAME:?message}`: compose refuses to start
/// without them), with example values to parse.
const COMPOSE_HOST_EXAMPLES: [(&str, &str); 1] =
    [("KEY_ENCRYPTION_KEYS", "kek-1:Q0hBTkdFX01FX29wZW5zc2xfcmFuZF9iYXNlNjRfMzI=")];

/// `NAME` when `value` is exactly `${NAME:?message}`.
fn required_from_host(value: &str) -> Option<&str> {
    let inner = value.strip_prefix("${")?.strip_suffix('}')?;
    let (name, _) = inner.split_once(":?")?;
    Some(name)
}

#[test]
fn every_service_is_built_from_the_root_dockerfile_as_its_own_image() {
    let compose = Compose::load();
    for name in SERVICES {
        let service = compose.service(name);
        assert_eq!(str_at(service, &["image"]), Some(format!("ticketflow/{name}").as_str()), "{name}");
        assert_eq!(str_at(service, &["build", "context"]), Some("."), "{name}");
        assert_eq!(str_at(service, &["build", "args", "SERVICE"]), Some(name), "{name}");
        assert!(at(service, &["build", "dockerfile"]).is_null(), "{name}: the root Dockerfile, by default");
    }
}

#[test]
fn compose_sets_only_variables_each_service_reads_and_every_value_parses() {
    let compose = Compose::load();
    for name in SERVICES {
        let environment = compose.environment(name);
        let view = compose.view(name);
        let unread = view.unread(environment.keys());
        assert!(unread.is_empty(), "compose.yaml sets {unread:?} for {name}, which it never reads");
        assert_eq!(view.telemetry.format, LogFormat::Json, "{name}: containers log JSON");
    }
}

#[test]
fn compose_publishes_and_health_checks_the_ports_each_service_listens_on() {
    let compose = Compose::load();
    for name in SERVICES {
        let view = compose.view(name);
        for addr in view.listen_addrs() {
            assert!(addr.ip().is_unspecified(), "{name} listens on {addr}: other containers cannot reach it");
        }
        let listening: BTreeSet<u16> = view.listen_addrs().iter().map(SocketAddr::port).collect();
        let published = compose.published(name);
        let targets: BTreeSet<u16> = published.iter().map(|(_, container)| *container).collect();
        assert_eq!(targets, listening, "{name}: published container ports vs the ports it listens on");
        for (host, container) in published {
            assert_eq!(host, container, "{name}: the root README's port table has host = container port");
        }
        let check = compose.healthcheck(name);
        let port = view.probe_addr().port();
        assert!(
            check.contains(&format!("http://127.0.0.1:{port}/health"))
                || check.contains(&format!("http://127.0.0.1:{port}/alive")),
            "{name}: the health check `{check}` must probe /health or /alive on {port}"
        );
    }
    assert!(compose.published("gateway").contains(&(8080, 8080)), "the GraphQL API on 8080");
}

#[test]
fn compose_starts_each_service_after_everything_its_urls_point_at() {
    let compose = Compose::load();
    let names = compose.service_names();
    for name in SERVICES {
        let view = compose.view(name);
        let mut needed = BTreeSet::new();
        for (variable, url) in view.urls() {
            let (host, port) = url_target(url);
            assert!(names.contains(&host), "{name}: {variable}={url} points at no compose service");
            let expected_port = match INFRASTRUCTURE.iter().find(|(infra, _)| *infra == host) {
                Some((_, port)) => *port,
                None => {
                    let target = compose.view(&host);
                    let ports: Vec<u16> = target.listen_addrs().iter().map(SocketAddr::port).collect();
                    assert!(
                        ports.contains(&port),
                        "{name}: {variable}={url}, but {host} listens on {ports:?}"
                    );
                    port
                }
            };
            assert_eq!(port, expected_port, "{name}: {variable}={url}");
            needed.insert(host);
        }
        let depends_on = compose.depends_on(name);
        let waits_for: BTreeSet<String> = depends_on.keys().cloned().collect();
        assert_eq!(waits_for, needed, "{name}: depends_on vs the services its URLs point at");
        for (dependency, condition) in depends_on {
            assert_eq!(condition, "service_healthy", "{name} must wait until {dependency} is healthy");
            compose.healthcheck(&dependency);
        }
    }
}

#[test]
fn compose_infrastructure_is_health_checked_and_keeps_its_data_in_named_volumes() {
    let compose = Compose::load();
    let expectations = [
        ("postgres", "postgres:16", "pg_isready", "/var/lib/postgresql/data"),
        ("redis", "redis:", "redis-cli ping", "/data"),
        ("rabbitmq", "rabbitmq:3-management", "rabbitmq-diagnostics", "/var/lib/rabbitmq"),
    ];
    let declared = mapping_keys(at(&compose.doc, &["volumes"]));
    for (name, image, check, data_dir) in expectations {
        let service = compose.service(name);
        let actual_image = str_at(service, &["image"]).unwrap_or_default();
        assert!(actual_image.starts_with(image), "{name} image {actual_image}");
        assert!(compose.healthcheck(name).contains(check), "{name} health check");
        let volumes = at(service, &["volumes"]).as_sequence().cloned().unwrap_or_default();
        let mounted = volumes.iter().map(scalar).find_map(|v| {
            let (volume, dir) = v.split_once(':')?;
            (dir == data_dir).then(|| volume.to_owned())
        });
        let volume = mounted.unwrap_or_else(|| panic!("{name} keeps {data_dir} in no volume"));
        assert!(declared.contains(&volume), "{name}: volume {volume} is not a declared named volume");
    }
    assert!(
        compose.published("rabbitmq").contains(&(15672, 15672)),
        "RabbitMQ's management UI is published on 15672"
    );
    assert_eq!(
        compose.environment("postgres").get("POSTGRES_HOST_AUTH_METHOD").map(String::as_str),
        Some("trust"),
        "dev compose: no password to leak (the services' URLs carry none)"
    );
}

#[test]
fn identity_trusts_exactly_the_gateways_fixed_address_in_the_compose_network() {
    let compose = Compose::load();
    // The raw value, not identity's parsed type: it must parse (the view below), but this test should
    // not care how identity represents addresses and ranges.
    compose.view("identity");
    let environment = compose.environment("identity");
    let trusted = environment.get("TRUSTED_PROXY_ADDRS").map(String::as_str).unwrap_or_default();
    let trusted: Vec<&str> = trusted.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let networks = at(compose.service("gateway"), &["networks"]);
    let (network, gateway_ip) = networks
        .as_mapping()
        .and_then(|m| {
            m.iter()
                .find_map(|(k, v)| Some((scalar(k), str_at(v, &["ipv4_address"])?.parse::<Ipv4Addr>().ok()?)))
        })
        .expect("the gateway has a fixed ipv4_address, or identity could not name it");
    assert_eq!(trusted, [gateway_ip.to_string()], "TRUSTED_PROXY_ADDRS names the gateway alone");

    let ipam = at(&compose.doc, &["networks", network.as_str(), "ipam", "config"]);
    let pool = ipam.as_sequence().and_then(|c| c.first()).expect("the network has a fixed subnet");
    let in_cidr = |cidr: &str| {
        let (base, bits) = cidr.split_once('/').expect("CIDR");
        let (base, bits): (Ipv4Addr, u32) = (base.parse().expect("address"), bits.parse().expect("bits"));
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        u32::from(gateway_ip) & mask == u32::from(base) & mask
    };
    assert!(in_cidr(str_at(pool, &["subnet"]).expect("subnet")), "{gateway_ip} is outside the subnet");
    if let Some(range) = str_at(pool, &["ip_range"]) {
        assert!(!in_cidr(range), "{gateway_ip} is in ip_range, where other containers get addresses");
    }
    for name in ["identity", "gateway"] {
        let attached = match at(compose.service(name), &["networks"]) {
            Value::Sequence(list) => list.iter().map(scalar).collect(),
            other => mapping_keys(other),
        };
        assert!(attached.contains(&network), "{name} is not on {network}");
    }
}

#[test]
fn compose_runs_the_demo_seeded_catalogue() {
    let Loaded::Catalog(catalog) = Compose::load().view("catalog").config else { unreachable!() };
    assert!(catalog.seed_catalog, "compose is for trying TicketFlow: it needs concerts to sell");
}

fn assert_one_audience(views: &[ServiceView], file: &str) {
    let identity = views.iter().find(|v| v.name == "identity").and_then(ServiceView::audience);
    let identity = identity.expect("identity issues tokens");
    for view in views {
        if let Some(audience) = view.audience() {
            assert_eq!(
                (&audience.issuer, &audience.audience, audience.max_lifetime),
                (&identity.issuer, &identity.audience, identity.max_lifetime),
                "{file}: {} would reject identity's tokens",
                view.name
            );
        }
    }
}

#[test]
fn every_service_accepts_the_tokens_identity_issues() {
    let compose = Compose::load();
    let views: Vec<ServiceView> = SERVICES.iter().map(|name| compose.view(name)).collect();
    assert_one_audience(&views, "compose.yaml");
    let k8s = Kubernetes::load();
    let views: Vec<ServiceView> = SERVICES.iter().map(|name| k8s.view(name)).collect();
    assert_one_audience(&views, "deploy/k8s");
}

// ------------------------------------------------------------------------------------------------
// deploy/k8s

const K8S_DIR: &str = "deploy/k8s";

struct Kubernetes {
    /// Every object of every manifest, with the file it came from.
    objects: Vec<(String, Value)>,
    /// The example values of `ticketflow-secrets` in deploy/README.md.
    secret: BTreeMap<String, String>,
}

impl Kubernetes {
    fn load() -> Self {
        let objects = Self::manifest_files()
            .into_iter()
            .flat_map(|file| {
                let relative = format!("{K8S_DIR}/{file}");
                yaml_documents(&relative).into_iter().map(move |doc| (file.clone(), doc))
            })
            .collect();
        Self { objects, secret: documented_secret() }
    }

    /// The resource files (every .yaml but the kustomization).
    fn manifest_files() -> BTreeSet<String> {
        std::fs::read_dir(repo_root().join(K8S_DIR))
            .expect("deploy/k8s")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
            .collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .map(|(_, o)| o)
            .find(|o| str_at(o, &["kind"]) == Some(kind) && str_at(o, &["metadata", "name"]) == Some(name))
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name).unwrap_or_else(|| panic!("deploy/k8s has no {kind} {name}"))
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects.iter().map(|(_, o)| o).filter(move |o| str_at(o, &["kind"]) == Some(kind))
    }

    fn container(&self, name: &str) -> &Value {
        let deployment = self.get("Deployment", name);
        let containers = at(deployment, &["spec", "template", "spec", "containers"]);
        let containers = containers.as_sequence().expect("containers");
        assert_eq!(containers.len(), 1, "{name}: one container per pod");
        &containers[0]
    }

    /// The container's environment, every reference resolved (Secret values from the README).
    fn environment(&self, name: &str) -> BTreeMap<String, String> {
        let container = self.container(name);
        let mut vars = BTreeMap::new();
        for source in at(container, &["envFrom"]).as_sequence().into_iter().flatten() {
            let config_map = str_at(source, &["configMapRef", "name"])
                .unwrap_or_else(|| panic!("{name}: envFrom other than a ConfigMap: {source:?}"));
            let data = at(self.get("ConfigMap", config_map), &["data"]);
            for key in mapping_keys(data) {
                vars.insert(key.clone(), scalar(at(data, &[key.as_str()])));
            }
        }
        for entry in at(container, &["env"]).as_sequence().into_iter().flatten() {
            let var = str_at(entry, &["name"]).expect("env name").to_owned();
            let value = if let Some(value) = entry.get("value") {
                scalar(value)
            } else if let Some(r) = entry.get("valueFrom").and_then(|v| v.get("configMapKeyRef")) {
                let (map, key) = (str_at(r, &["name"]).expect("name"), str_at(r, &["key"]).expect("key"));
                let value = at(self.get("ConfigMap", map), &["data", key]);
                assert!(!value.is_null(), "{name}: {var} refers to {map}/{key}, which does not exist");
                scalar(value)
            } else if let Some(r) = entry.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                let (secret, key) = (str_at(r, &["name"]).expect("name"), str_at(r, &["key"]).expect("key"));
                assert_eq!(secret, SECRET_NAME, "{name}: {var} comes from an undocumented Secret");
                self.secret.get(key).cloned().unwrap_or_else(|| {
                    panic!("{name}: {var} reads key {key}, missing from the Secret in deploy/README.md")
                })
            } else {
                panic!("{name}: {var} has an unsupported source: {entry:?}")
            };
            assert!(vars.insert(var.clone(), value).is_none(), "{name}: {var} is set twice");
        }
        vars
    }

    fn view(&self, name: &str) -> ServiceView {
        ServiceView::load_or_panic(name, &self.environment(name), "deploy/k8s")
    }

    /// Container ports by name.
    fn container_ports(&self, name: &str) -> BTreeMap<String, u16> {
        let ports = at(self.container(name), &["ports"]).as_sequence().cloned().unwrap_or_default();
        ports
            .iter()
            .map(|p| {
                let port_name =
                    str_at(p, &["name"]).unwrap_or_else(|| panic!("{name}: unnamed port")).to_owned();
                let number = at(p, &["containerPort"]).as_u64().expect("containerPort");
                (port_name, u16::try_from(number).expect("port"))
            })
            .collect()
    }
}

/// `--from-literal=key='value'` pairs of the `kubectl create secret generic ticketflow-secrets`
/// command in deploy/README.md: the keys operators are told to create, with example values.
fn documented_secret() -> BTreeMap<String, String> {
    let readme = read("deploy/README.md");
    let start = readme
        .find(&format!("kubectl create secret generic {SECRET_NAME}"))
        .expect("deploy/README.md shows the command creating the Secret");
    let mut command = String::new();
    for line in readme[start..].lines() {
        let continued = line.trim_end().ends_with('\\');
        command.push_str(line.trim_end().trim_end_matches('\\'));
        command.push(' ');
        if !continued {
            break;
        }
    }
    let pairs: BTreeMap<String, String> = command
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--from-literal="))
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("key=value");
            (key.to_owned(), value.trim_matches('\'').to_owned())
        })
        .collect();
    assert!(!pairs.is_empty(), "the Secret command has no --from-literal");
    pairs
}

#[test]
fn k8s_deployments_set_only_variables_each_service_reads_and_every_value_parses() {
    let k8s = Kubernetes::load();
    for name in SERVICES {
        let container = k8s.container(name);
        assert_eq!(str_at(container, &["image"]), Some(format!("ticketflow/{name}").as_str()), "{name}");
        let environment = k8s.environment(name);
        let view = k8s.view(name);
        let unread = view.unread(environment.keys());
        assert!(unread.is_empty(), "deploy/k8s/{name}.yaml sets {unread:?}, which {name} never reads");
        assert_eq!(view.telemetry.format, LogFormat::Json, "{name}: production logs JSON");
    }
    let deployments: BTreeSet<String> = k8s
        .of_kind("Deployment")
        .filter_map(|d| str_at(d, &["metadata", "name"]))
        .map(str::to_owned)
        .collect();
    let services: BTreeSet<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(deployments, services, "one Deployment per service");
}

#[test]
fn the_key_encryption_keys_come_from_secrets_never_from_the_files() {
    let compose = Compose::load();
    let raw = compose.raw_environment("identity");
    let value = raw.get("KEY_ENCRYPTION_KEYS").expect("compose sets identity's KEY_ENCRYPTION_KEYS");
    assert_eq!(
        required_from_host(value),
        Some("KEY_ENCRYPTION_KEYS"),
        "compose.yaml: KEY_ENCRYPTION_KEYS must be ${{KEY_ENCRYPTION_KEYS:?...}}, required from the shell, not {value:?}"
    );

    let k8s = Kubernetes::load();
    let env = at(k8s.container("identity"), &["env"]).as_sequence().cloned().unwrap_or_default();
    let entry = env
        .iter()
        .find(|e| str_at(e, &["name"]) == Some("KEY_ENCRYPTION_KEYS"))
        .expect("deploy/k8s/identity.yaml sets KEY_ENCRYPTION_KEYS");
    assert!(entry.get("value").is_none(), "KEY_ENCRYPTION_KEYS is a literal in deploy/k8s/identity.yaml");
    assert_eq!(
        str_at(entry, &["valueFrom", "secretKeyRef", "key"]),
        Some("identity-key-encryption-keys"),
        "KEY_ENCRYPTION_KEYS comes from the Secret"
    );
    // And the documented example parses, with identity's own code (the view): an operator who follows
    // deploy/README.md gets a Secret identity accepts.
    k8s.view("identity");
}

#[test]
fn k8s_container_ports_services_and_probes_match_the_listen_addresses() {
    let k8s = Kubernetes::load();
    for name in SERVICES {
        let view = k8s.view(name);
        let mut expected = BTreeMap::from([("admin".to_owned(), view.admin_addr().port())]);
        if let Some(http) = view.public_http_addr() {
            expected.insert("http".to_owned(), http.port());
        }
        if let Some(grpc) = view.grpc_addr() {
            expected.insert("grpc".to_owned(), grpc.port());
        }
        for addr in view.listen_addrs() {
            assert!(addr.ip().is_unspecified(), "{name} listens on {addr}: the kubelet cannot probe it");
        }
        let ports = k8s.container_ports(name);
        assert_eq!(
            ports, expected,
            "{name}: container ports vs LISTEN_ADDR/ADMIN_LISTEN_ADDR/GRPC_LISTEN_ADDR"
        );

        let container = k8s.container(name);
        let probe_port = if view.public_http_addr().is_some() { "http" } else { "admin" };
        for (probe, path) in
            [("livenessProbe", "/alive"), ("readinessProbe", "/health"), ("startupProbe", "/alive")]
        {
            let get = at(container, &[probe, "httpGet"]);
            assert_eq!(str_at(get, &["path"]), Some(path), "{name}: {probe}");
            assert_eq!(scalar(at(get, &["port"])), probe_port, "{name}: {probe} on the {probe_port} port");
        }

        let annotations = at(k8s.get("Deployment", name), &["spec", "template", "metadata", "annotations"]);
        assert_eq!(str_at(annotations, &["prometheus.io/scrape"]), Some("true"), "{name}: scraped");
        assert_eq!(
            str_at(annotations, &["prometheus.io/port"]),
            Some(view.admin_addr().port().to_string().as_str()),
            "{name}: Prometheus scrapes the admin port"
        );
        assert_eq!(str_at(annotations, &["prometheus.io/path"]), Some("/metrics"), "{name}");

        let service = k8s.get("Service", name);
        let pod_labels = at(k8s.get("Deployment", name), &["spec", "template", "metadata", "labels"]);
        let selector = at(service, &["spec", "selector"]);
        for key in mapping_keys(selector) {
            assert_eq!(
                at(pod_labels, &[key.as_str()]),
                at(selector, &[key.as_str()]),
                "{name}: Service selects no pod"
            );
        }
        for port in at(service, &["spec", "ports"]).as_sequence().into_iter().flatten() {
            let target = scalar(at(port, &["targetPort"]));
            let container_port = ports.get(&target).unwrap_or_else(|| panic!("{name}: targetPort {target}"));
            let number = at(port, &["port"]).as_u64().expect("port");
            assert_eq!(number, u64::from(*container_port), "{name}: Service port {target} = container port");
        }
    }
}

/// The namespace label that admits Prometheus to the admin ports.
const MONITORING: (&str, &str) = ("kubernetes.io/metadata.name", "monitoring");

#[test]
fn k8s_admin_ports_are_reachable_only_from_the_monitoring_namespace() {
    let k8s = Kubernetes::load();
    for name in SERVICES {
        let admin = u64::from(k8s.view(name).admin_addr().port());
        let pod_labels = at(k8s.get("Deployment", name), &["spec", "template", "metadata", "labels"]);
        let selects_pod = |policy: &&Value| {
            let selector = at(policy, &["spec", "podSelector", "matchLabels"]);
            mapping_keys(selector)
                .iter()
                .all(|k| at(pod_labels, &[k.as_str()]) == at(selector, &[k.as_str()]))
        };
        let policies: Vec<&Value> = k8s.of_kind("NetworkPolicy").filter(selects_pod).collect();
        // A pod no policy selects accepts everything.
        assert!(!policies.is_empty(), "{name}: no NetworkPolicy selects its pods");
        let mut admitted = false;
        for rule in
            policies.iter().flat_map(|p| at(p, &["spec", "ingress"]).as_sequence().into_iter().flatten())
        {
            let ports = at(rule, &["ports"]).as_sequence();
            let opens_admin =
                ports.is_none_or(|ports| ports.iter().any(|p| at(p, &["port"]).as_u64() == Some(admin)));
            if !opens_admin {
                continue;
            }
            let from = at(rule, &["from"]).as_sequence().cloned().unwrap_or_default();
            assert!(!from.is_empty(), "{name}: a rule opens the admin port {admin} to everyone");
            for peer in &from {
                let namespace = at(peer, &["namespaceSelector", "matchLabels", MONITORING.0]);
                assert_eq!(
                    namespace.as_str(),
                    Some(MONITORING.1),
                    "{name}: admin port {admin} open to {peer:?}, not only the monitoring namespace"
                );
                assert!(
                    at(peer, &["podSelector"]).is_null() || at(peer, &["namespaceSelector"]).is_mapping()
                );
            }
            admitted = true;
        }
        assert!(admitted, "{name}: Prometheus cannot reach the admin port {admin}");
    }
}

#[test]
fn compose_and_manifests_serve_metrics_on_the_admin_port_apart_from_the_public_one() {
    let compose = Compose::load();
    let k8s = Kubernetes::load();
    for name in SERVICES {
        for view in [compose.view(name), k8s.view(name)] {
            if let Some(public) = view.public_http_addr() {
                assert_ne!(public.port(), view.admin_addr().port(), "{name}: /metrics would be public");
            }
        }
    }
}

#[test]
fn k8s_in_cluster_urls_point_at_services_and_ports_that_exist() {
    let k8s = Kubernetes::load();
    for name in SERVICES {
        for (variable, url) in k8s.view(name).urls() {
            let (host, port) = url_target(url);
            // Postgres, Redis and RabbitMQ are outside these manifests (operator or managed service).
            let Some(service) = k8s.find("Service", &host) else {
                assert!(
                    matches!(variable, "DATABASE_URL" | "REDIS_URL" | "AMQP_URL"),
                    "{name}: {variable}={url} points at no Service in deploy/k8s"
                );
                continue;
            };
            let target = k8s.view(&host);
            let listening: Vec<u16> = target.listen_addrs().iter().map(SocketAddr::port).collect();
            let service_ports: Vec<u64> = at(service, &["spec", "ports"])
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| at(p, &["port"]).as_u64())
                .collect();
            assert!(
                service_ports.contains(&u64::from(port)),
                "{name}: {variable}={url}, Service {host} has {service_ports:?}"
            );
            assert!(
                listening.contains(&port),
                "{name}: {variable}={url}, but {host} listens on {listening:?}"
            );
        }
    }
}

#[test]
fn k8s_credentials_come_only_from_the_documented_secret_and_every_config_key_is_used() {
    let k8s = Kubernetes::load();
    assert_eq!(k8s.of_kind("Secret").count(), 0, "no Secret (nor its values) is committed");
    let mut secret_keys_used = BTreeSet::new();
    let mut config_keys_used = BTreeSet::new();
    for name in SERVICES {
        for entry in at(k8s.container(name), &["env"]).as_sequence().into_iter().flatten() {
            let var = str_at(entry, &["name"]).unwrap_or_default();
            if let Some(key) = str_at(entry, &["valueFrom", "secretKeyRef", "key"]) {
                secret_keys_used.insert(key.to_owned());
            } else if let Some(key) = str_at(entry, &["valueFrom", "configMapKeyRef", "key"]) {
                config_keys_used.insert(key.to_owned());
            }
            let literal = str_at(entry, &["value"]).unwrap_or_default();
            assert!(
                !(var.ends_with("_URL") && literal.contains('@')),
                "{name}: {var} carries credentials in plain text; use a secretKeyRef"
            );
            for credential in ["DATABASE_URL", "REDIS_URL", "AMQP_URL", "SMTP_URL"] {
                assert!(
                    var != credential || entry.get("value").is_none(),
                    "{name}: {var} must come from the Secret"
                );
            }
        }
        assert!(at(k8s.container(name), &["envFrom"]).is_null(), "{name}: take keys one by one, not envFrom");
    }
    let documented: BTreeSet<String> = k8s.secret.keys().cloned().collect();
    assert_eq!(secret_keys_used, documented, "Secret keys read by the manifests vs deploy/README.md");

    for config_map in k8s.of_kind("ConfigMap") {
        let name = str_at(config_map, &["metadata", "name"]).unwrap_or_default();
        let dead: Vec<String> = mapping_keys(at(config_map, &["data"]))
            .into_iter()
            .filter(|k| !config_keys_used.contains(k))
            .collect();
        assert!(dead.is_empty(), "ConfigMap {name} has keys no Deployment takes: {dead:?}");
    }
}

#[test]
fn k8s_replicas_belong_to_autoscalers_and_node_drains_can_always_proceed() {
    let k8s = Kubernetes::load();
    for name in SERVICES {
        let deployment = k8s.get("Deployment", name);
        assert!(
            at(deployment, &["spec", "replicas"]).is_null(),
            "{name}: spec.replicas would reset the autoscaler's count on every apply"
        );
        let hpa = k8s.get("HorizontalPodAutoscaler", name);
        let target = at(hpa, &["spec", "scaleTargetRef"]);
        assert_eq!(
            (str_at(target, &["kind"]), str_at(target, &["name"])),
            (Some("Deployment"), Some(name)),
            "{name}: autoscaler target"
        );
        let min = at(hpa, &["spec", "minReplicas"]).as_u64().unwrap_or(1);
        let max = at(hpa, &["spec", "maxReplicas"]).as_u64().expect("maxReplicas");
        assert!(min <= max, "{name}: minReplicas {min} > maxReplicas {max}");
        let several = if matches!(name, "gateway" | "catalog" | "ordering") { 3 } else { 2 };
        assert!(min >= several, "{name}: at least {several} replicas (got {min})");

        let pdb = k8s.get("PodDisruptionBudget", name);
        let selector = at(pdb, &["spec", "selector", "matchLabels"]);
        let pod_labels = at(deployment, &["spec", "template", "metadata", "labels"]);
        for key in mapping_keys(selector) {
            assert_eq!(
                at(pod_labels, &[key.as_str()]),
                at(selector, &[key.as_str()]),
                "{name}: budget selects no pod"
            );
        }
        let drains_proceed = match at(pdb, &["spec", "minAvailable"]).as_u64() {
            Some(min_available) => min_available < min,
            None => at(pdb, &["spec", "maxUnavailable"]).as_u64().is_some_and(|n| n >= 1),
        };
        assert!(drains_proceed, "{name}: the disruption budget can block node drains");
    }
}

#[test]
fn k8s_runs_production_settings() {
    let k8s = Kubernetes::load();
    let Loaded::Catalog(catalog) = k8s.view("catalog").config else { unreachable!() };
    assert!(!catalog.seed_catalog, "no demo concerts in production");
    assert!(k8s.environment("catalog").contains_key("SEED_CATALOG"), "say so explicitly");
    let Loaded::Gateway(gateway) = k8s.view("gateway").config else { unreachable!() };
    assert!(
        !gateway.graphql.introspection && !gateway.playground_enabled,
        "gateway/README.md: off in production"
    );
    let identity = k8s.environment("identity");
    let trusted = identity.get("TRUSTED_PROXY_ADDRS").map(String::as_str).unwrap_or_default();
    assert!(
        trusted.contains('/'),
        "identity must trust the gateway pods, whose addresses change: a range such as the pod network"
    );
    assert!(
        !trusted.split(',').any(|entry| matches!(entry.trim(), "0.0.0.0/0" | "::/0")),
        "trusting every peer lets any client name its own address to the login throttle"
    );
    let Loaded::Notifications(notifications) = k8s.view("notifications").config else { unreachable!() };
    for name in SERVICES {
        let pod = at(k8s.get("Deployment", name), &["spec", "template", "spec"]);
        assert_eq!(at(pod, &["securityContext", "runAsUser"]).as_i64(), Some(IMAGE_UID), "{name}");
        assert_eq!(at(pod, &["securityContext", "runAsNonRoot"]).as_bool(), Some(true), "{name}");
        let grace = at(pod, &["terminationGracePeriodSeconds"]).as_u64().unwrap_or(30);
        assert!(
            Duration::from_secs(grace) > notifications.shutdown_timeout,
            "{name}: pods get {grace} s to stop; the worker may drain for {:?}",
            notifications.shutdown_timeout
        );
    }
}

#[test]
fn the_kustomization_lists_every_manifest_and_image() {
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let resources: BTreeSet<String> =
        at(&kustomization, &["resources"]).as_sequence().into_iter().flatten().map(scalar).collect();
    assert_eq!(resources, Kubernetes::manifest_files(), "kustomization resources vs deploy/k8s/*.yaml");
    let images: BTreeSet<String> = at(&kustomization, &["images"])
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|image| scalar(at(image, &["name"])))
        .collect();
    let expected: BTreeSet<String> = SERVICES.iter().map(|s| format!("ticketflow/{s}")).collect();
    assert_eq!(images, expected);
}

// ------------------------------------------------------------------------------------------------
// Dockerfile and .dockerignore

#[test]
fn the_image_health_check_probes_each_services_default_port() {
    let dockerfile = read("Dockerfile");
    // Defaults everywhere, but for the variables that have none (identity's key-encryption keys).
    let none: BTreeMap<String, String> =
        COMPOSE_HOST_EXAMPLES.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    for name in SERVICES {
        let port = ServiceView::load_or_panic(name, &none, "defaults").probe_addr().port();
        assert!(
            dockerfile.contains(&format!("{name}) port={port} ;;")),
            "Dockerfile: the health-port case for {name} must say port={port}, its LISTEN_ADDR default"
        );
    }
    let gateway = ServiceView::load_or_panic("gateway", &none, "defaults").probe_addr().port();
    assert!(
        dockerfile.contains(&format!("ticketflow) port={gateway} ;;")),
        "the launcher serves the gateway's port"
    );
    assert!(dockerfile.contains(&format!("USER {IMAGE_UID}")), "the image runs as uid {IMAGE_UID}");
    assert!(
        dockerfile.contains("cargo chef cook --release --locked"),
        "dependencies as Cargo.lock pins them"
    );
    assert!(dockerfile.contains("cargo build --release --locked"), "the binary as Cargo.lock pins it");
}

#[test]
fn the_build_context_keeps_everything_compiled_into_the_binaries() {
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for pattern in &ignored {
        // A glob such as `*.md` is how a file some crate include_str!s silently leaves the context.
        assert!(!pattern.contains(['*', '?', '[', '!']), ".dockerignore: use plain paths, not `{pattern}`");
    }
    let needed = [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "platform",
        "proto",
        "migrations",
        "gateway/assets",
        "tests/integration",
    ];
    let needed = needed.iter().copied().chain(SERVICES);
    for path in needed {
        let excluded = ignored.iter().any(|p| path == p || path.starts_with(&format!("{p}/")));
        assert!(!excluded, ".dockerignore excludes {path}, which the build needs");
        assert!(repo_root().join(path).exists(), "{path} moved: update this list and the Dockerfile");
    }
}
