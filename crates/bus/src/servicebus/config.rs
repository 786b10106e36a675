//! Service Bus settings: how to authenticate, which topic, how to receive.
//!
//! Parsed once, validated at [`super::ServiceBusBus::connect`]. Secrets (the
//! SAS key or signature of a connection string) live in a [`SecretString`] and
//! are redacted from `Debug` output and from every error message.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::{BusError, MONITORING_SUBSCRIPTION, SQL_WRITER_SUBSCRIPTION, TOPIC};

/// The connection-string keys whose values are secret.
const SECRET_KEYS: [&str; 2] = ["SharedAccessKey", "SharedAccessSignature"];
/// The connection-string keys whose values may be shown.
const PUBLIC_KEYS: [&str; 4] = [
    "Endpoint",
    "SharedAccessKeyName",
    "EntityPath",
    "UseDevelopmentEmulator",
];

/// Messages a receive link locks ahead by default (see [`ServiceBusConfig::prefetch`]).
pub const DEFAULT_PREFETCH: u32 = 20;

/// How to authenticate to the namespace.
#[derive(Clone)]
pub enum ServiceBusAuth {
    /// A SAS connection string (`Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…`),
    /// or the emulator's (`…;UseDevelopmentEmulator=true`).
    ConnectionString(SecretString),
    /// Entra ID (managed identity, workload identity, developer login) to a
    /// fully qualified namespace (`<name>.servicebus.windows.net`).
    Entra {
        namespace: String,
        credential: EntraCredential,
    },
}

impl fmt::Debug for ServiceBusAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceBusAuth::ConnectionString(cs) => f
                .debug_tuple("ConnectionString")
                .field(&redact_connection_string(cs.expose_secret()))
                .finish(),
            ServiceBusAuth::Entra {
                namespace,
                credential,
            } => f
                .debug_struct("Entra")
                .field("namespace", namespace)
                .field("credential", credential)
                .finish(),
        }
    }
}

/// Which Entra ID credential to use.
///
/// `azure_identity` 0.25's `DefaultAzureCredential` only chains the Azure CLI
/// and the Azure Developer CLI — it has no managed or workload identity — so
/// [`EntraCredential::Auto`] builds the chain a deployed service needs itself:
/// workload identity (when `AZURE_FEDERATED_TOKEN_FILE` is set), then managed
/// identity (user-assigned when `AZURE_CLIENT_ID` is set), then
/// `DefaultAzureCredential` for developers. The first that returns a token is
/// used from then on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntraCredential {
    #[default]
    Auto,
    /// Managed identity only; `client_id` selects a user-assigned identity.
    ManagedIdentity { client_id: Option<String> },
    /// Workload identity federation only (AKS; `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`).
    WorkloadIdentity,
    /// `azure_identity::DefaultAzureCredential` only (Azure CLI / azd login).
    Developer,
}

/// Settings of the Service Bus adapter.
#[derive(Debug, Clone)]
pub struct ServiceBusConfig {
    pub auth: ServiceBusAuth,
    /// The topic (default `realtime-mirror`).
    pub topic: String,
    /// Whether the subscriptions require sessions. When on, every message is
    /// published with `SessionId` = its partition key, and receivers accept the
    /// next available session. Must match the IaC's `requiresSession`.
    pub sessions: bool,
    /// Messages the receive link requests ahead of time (0 = only on demand).
    /// Prefetched messages are locked as soon as they arrive, so keep it below
    /// what a worker settles within one lock duration.
    pub prefetch: u32,
    /// The subscriptions' `maxDeliveryCount` as deployed (IaC default 5). The
    /// adapter cannot read it over AMQP; it uses it to warn when an abandon
    /// will make the broker dead-letter the message itself.
    pub max_delivery_count: u32,
    /// Renew a delivery's lock in the background while it is in flight, for
    /// at most this long. Off (`None`) by default: the port promises that an
    /// unsettled delivery whose lock is not kept alive comes back after the
    /// lock duration, and the writer already calls
    /// [`crate::Delivery::keep_alive`] every 10 s while it applies a batch —
    /// inside the IaC's one-minute lock — and stops when it stops working, so a
    /// hung worker's messages are released. Turn it on for consumers that
    /// cannot call `keep_alive` themselves.
    pub lock_renewal: Option<Duration>,
    /// The topic's duplicate-detection window as deployed (IaC `PT10M`; the
    /// emulator's is at most `PT5M`). A publish of a message id this bus had
    /// published less than this ago is reported as
    /// [`crate::PublishOutcome::Duplicate`] (it is still sent: the broker
    /// decides). `Duration::ZERO` turns that reporting off.
    pub duplicate_detection_window: Duration,
    /// Subscriptions [`crate::EventBus::ensure_topology`] checks exist.
    pub verify_subscriptions: Vec<String>,
    /// Client identifier shown in Service Bus diagnostics.
    pub identifier: Option<String>,
}

impl ServiceBusConfig {
    /// Defaults of the plan: topic `realtime-mirror`, no sessions, prefetch 20,
    /// max delivery count 5, no background lock renewal (see [`Self::lock_renewal`]).
    pub fn new(auth: ServiceBusAuth, topic: impl Into<String>) -> ServiceBusConfig {
        ServiceBusConfig {
            auth,
            topic: topic.into(),
            sessions: false,
            prefetch: DEFAULT_PREFETCH,
            max_delivery_count: crate::DEFAULT_MAX_DELIVERIES,
            lock_renewal: None,
            duplicate_detection_window: Duration::from_secs(600),
            verify_subscriptions: vec![
                SQL_WRITER_SUBSCRIPTION.to_owned(),
                MONITORING_SUBSCRIPTION.to_owned(),
            ],
            identifier: None,
        }
    }

    /// SAS connection string auth; fails (naming the problem, never the key)
    /// when the string is not a Service Bus connection string.
    pub fn from_connection_string(
        connection_string: &str,
        topic: &str,
    ) -> Result<ServiceBusConfig, BusError> {
        let parsed = ConnectionString::parse(connection_string)?;
        if let Some(path) = parsed.entity_path {
            if path != topic {
                return Err(BusError::Config(format!(
                    "the connection string is scoped to entity `{path}`, not to topic `{topic}`"
                )));
            }
        }
        Ok(ServiceBusConfig::new(
            ServiceBusAuth::ConnectionString(SecretString::from(connection_string.to_owned())),
            non_empty_topic(topic),
        ))
    }

    /// Entra ID auth to `namespace` (fully qualified; validated at connect).
    pub fn entra(namespace: &str, topic: &str) -> ServiceBusConfig {
        ServiceBusConfig::new(
            ServiceBusAuth::Entra {
                namespace: namespace.to_owned(),
                credential: EntraCredential::Auto,
            },
            non_empty_topic(topic),
        )
    }

    /// Check the settings; every error names the setting.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.topic.is_empty() || self.topic.len() > 260 {
            return Err(BusError::Config(format!(
                "topic `{}` must be 1 to 260 characters",
                self.topic
            )));
        }
        if self.max_delivery_count == 0 {
            return Err(BusError::Config(
                "max_delivery_count must be at least 1".into(),
            ));
        }
        if self.prefetch > 10_000 {
            return Err(BusError::Config(format!(
                "prefetch {} is over 10000",
                self.prefetch
            )));
        }
        match &self.auth {
            ServiceBusAuth::ConnectionString(cs) => {
                ConnectionString::parse(cs.expose_secret()).map(|_| ())
            }
            ServiceBusAuth::Entra { namespace, .. } => {
                fully_qualified_namespace(namespace).map(|_| ())
            }
        }
    }

    /// Whether the connection string targets the local emulator (plain AMQP, no TLS).
    pub fn is_emulator(&self) -> bool {
        match &self.auth {
            ServiceBusAuth::ConnectionString(cs) => ConnectionString::parse(cs.expose_secret())
                .map(|c| c.emulator)
                .unwrap_or(false),
            ServiceBusAuth::Entra { .. } => false,
        }
    }

    /// Whether the library signs SAS tokens from this configuration's key —
    /// 30-minute signatures its CBS link refreshes only at their expiry, so the
    /// adapter replaces such connections ahead of it
    /// (see [`super::convert::renew_connection`]).
    pub(crate) fn signs_sas(&self) -> bool {
        match &self.auth {
            ServiceBusAuth::ConnectionString(cs) => ConnectionString::parse(cs.expose_secret())
                .map(|c| c.signed_with_key)
                .unwrap_or(false),
            ServiceBusAuth::Entra { .. } => false,
        }
    }

    /// The namespace host, for logs.
    pub fn namespace(&self) -> String {
        match &self.auth {
            ServiceBusAuth::ConnectionString(cs) => ConnectionString::parse(cs.expose_secret())
                .map(|c| c.host)
                .unwrap_or_else(|_| "?".into()),
            ServiceBusAuth::Entra { namespace, .. } => {
                fully_qualified_namespace(namespace).unwrap_or_else(|_| namespace.clone())
            }
        }
    }

    /// `text` with every secret of this configuration replaced, for error messages.
    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.auth {
            ServiceBusAuth::ConnectionString(cs) => scrub_secrets(text, cs.expose_secret()),
            ServiceBusAuth::Entra { .. } => text.to_owned(),
        }
    }
}

fn non_empty_topic(topic: &str) -> String {
    if topic.is_empty() {
        TOPIC.to_owned()
    } else {
        topic.to_owned()
    }
}

/// The parts of a connection string the adapter looks at (never the key).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConnectionString {
    pub host: String,
    pub entity_path: Option<String>,
    pub emulator: bool,
    /// Signed by the library from `SharedAccessKey` (a fixed
    /// `SharedAccessSignature` is used as given, until it expires).
    pub signed_with_key: bool,
}

impl ConnectionString {
    pub(crate) fn parse(s: &str) -> Result<ConnectionString, BusError> {
        let bad = |why: &str| BusError::Config(format!("Service Bus connection string: {why}"));
        let mut host = None;
        let mut entity_path = None;
        let mut emulator = false;
        let mut key_name = false;
        let mut key = false;
        let mut signature = false;
        for pair in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(bad("has a part that is not `key=value`"));
            };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "Endpoint" => {
                    let url = url::Url::parse(v).map_err(|_| bad("`Endpoint` is not a URL"))?;
                    let h = url
                        .host_str()
                        .filter(|h| !h.is_empty())
                        .ok_or_else(|| bad("`Endpoint` has no host"))?;
                    host = Some(match url.port() {
                        Some(p) => format!("{h}:{p}"),
                        None => h.to_owned(),
                    });
                }
                "EntityPath" if !v.is_empty() => entity_path = Some(v.to_owned()),
                "SharedAccessKeyName" => key_name = !v.is_empty(),
                "SharedAccessKey" => key = !v.is_empty(),
                "SharedAccessSignature" => signature = !v.is_empty(),
                "UseDevelopmentEmulator" => emulator = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        let host = host.ok_or_else(|| bad("has no `Endpoint=sb://<namespace>/`"))?;
        if !(signature || key_name && key) {
            return Err(bad(
                "needs `SharedAccessKeyName` and `SharedAccessKey`, or `SharedAccessSignature`",
            ));
        }
        Ok(ConnectionString {
            host,
            entity_path,
            emulator,
            signed_with_key: key_name && key && !signature,
        })
    }
}

/// The connection string with every value but the public ones replaced by `<redacted>`.
pub(crate) fn redact_connection_string(s: &str) -> String {
    s.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if PUBLIC_KEYS.contains(&k.trim()) => format!("{}={}", k.trim(), v.trim()),
            Some((k, _)) => format!("{}=<redacted>", k.trim()),
            None => "<redacted>".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// `text` with the secret values of `connection_string` (and the whole string) replaced.
pub(crate) fn scrub_secrets(text: &str, connection_string: &str) -> String {
    let mut out = text.replace(
        connection_string,
        &redact_connection_string(connection_string),
    );
    for pair in connection_string.split(';') {
        if let Some((k, v)) = pair.split_once('=') {
            let v = v.trim();
            if SECRET_KEYS.contains(&k.trim()) && v.len() >= 4 {
                out = out.replace(v, "<redacted>");
            }
        }
    }
    out
}

/// `name.servicebus.windows.net` from what an operator may type (`sb://…/`, a bare host).
pub(crate) fn fully_qualified_namespace(namespace: &str) -> Result<String, BusError> {
    let ns = namespace.trim();
    let ns = ns
        .strip_prefix("sb://")
        .or_else(|| ns.strip_prefix("amqps://"))
        .unwrap_or(ns);
    let ns = ns.trim_end_matches('/');
    if ns.is_empty() || !ns.contains('.') || ns.contains('/') || ns.contains(char::is_whitespace) {
        return Err(BusError::Config(format!(
            "Service Bus namespace `{namespace}` must be fully qualified, like `<name>.servicebus.windows.net`"
        )));
    }
    Ok(ns.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1kby1ub3QtbG9n";
    fn cs() -> String {
        format!("Endpoint=sb://demo.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY}")
    }

    #[test]
    fn parses_connection_strings() {
        type Case = (String, Result<(&'static str, bool), &'static str>);
        let cases: Vec<Case> = vec![
            (cs(), Ok(("demo.servicebus.windows.net", false))),
            (
                "Endpoint=sb://localhost;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;".into(),
                Ok(("localhost", true)),
            ),
            (
                "Endpoint=sb://demo.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1&skn=k".into(),
                Ok(("demo.servicebus.windows.net", false)),
            ),
            ("".into(), Err("no `Endpoint")),
            ("Endpoint=sb://demo.servicebus.windows.net/".into(), Err("SharedAccessKey")),
            (format!("Endpoint=not a url;SharedAccessKeyName=a;SharedAccessKey={KEY}"), Err("not a URL")),
            (format!("Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey={KEY};garbage"), Err("not `key=value`")),
        ];
        for (input, expected) in cases {
            let got = ConnectionString::parse(&input);
            match (got, expected) {
                (Ok(c), Ok((host, emulator))) => {
                    assert_eq!(c.host, host, "{input}");
                    assert_eq!(c.emulator, emulator, "{input}");
                }
                (Err(e), Err(needle)) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(needle),
                        "{input}: `{text}` does not mention {needle}"
                    );
                    assert!(!text.contains(KEY), "the key leaked into `{text}`");
                }
                (got, expected) => panic!("{input}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn secrets_never_reach_debug_output_or_errors() {
        let config = ServiceBusConfig::from_connection_string(&cs(), "realtime-mirror").unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains(KEY), "{debug}");
        assert!(debug.contains("SharedAccessKey=<redacted>"), "{debug}");
        assert!(
            debug.contains("Endpoint=sb://demo.servicebus.windows.net/"),
            "{debug}"
        );
        assert!(debug.contains("RootManageSharedAccessKey"), "{debug}");
        let pretty = format!("{config:#?}");
        assert!(!pretty.contains(KEY), "{pretty}");

        let sas = "Endpoint=sb://d.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=a&sig=SIGNATURE&se=1";
        let config = ServiceBusConfig::from_connection_string(sas, "t").unwrap();
        assert!(!format!("{config:?}").contains("SIGNATURE"));

        let error = format!("cannot connect: bad key {KEY} in {}", cs());
        let scrubbed = scrub_secrets(&error, &cs());
        assert!(!scrubbed.contains(KEY), "{scrubbed}");
        assert!(
            scrubbed.contains("demo.servicebus.windows.net"),
            "{scrubbed}"
        );
    }

    #[test]
    fn defaults_follow_the_plan() {
        let c = ServiceBusConfig::from_connection_string(&cs(), "").unwrap();
        assert_eq!(c.topic, "realtime-mirror");
        assert!(!c.sessions);
        assert_eq!(c.max_delivery_count, 5);
        assert_eq!(c.lock_renewal, None);
        assert_eq!(c.verify_subscriptions, ["sql-writer", "monitoring"]);
        assert!(!c.is_emulator());
        c.validate().unwrap();
    }

    /// Only key-signed connections are replaced by age: Entra ID tokens are
    /// refreshed ahead by the credential, a fixed signature cannot be renewed.
    #[test]
    fn only_key_signed_connections_renew_by_age() {
        let keyed = ServiceBusConfig::from_connection_string(&cs(), "t").unwrap();
        assert!(keyed.signs_sas());
        let fixed = ServiceBusConfig::from_connection_string(
            "Endpoint=sb://demo.servicebus.windows.net/;SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1&skn=z",
            "t",
        )
        .unwrap();
        assert!(!fixed.signs_sas());
        assert!(!ServiceBusConfig::entra("demo.servicebus.windows.net", "t").signs_sas());
    }

    #[test]
    fn entity_path_must_be_the_topic() {
        let scoped = format!("{};EntityPath=other", cs());
        let e = ServiceBusConfig::from_connection_string(&scoped, "realtime-mirror").unwrap_err();
        assert!(e.to_string().contains("`other`"), "{e}");
        let scoped = format!("{};EntityPath=realtime-mirror", cs());
        assert!(ServiceBusConfig::from_connection_string(&scoped, "realtime-mirror").is_ok());
    }

    #[test]
    fn entra_namespaces_must_be_fully_qualified() {
        for (input, expected) in [
            (
                "demo.servicebus.windows.net",
                Some("demo.servicebus.windows.net"),
            ),
            (
                "sb://demo.servicebus.windows.net/",
                Some("demo.servicebus.windows.net"),
            ),
            ("demo", None),
            ("", None),
            ("https://x/y", None),
        ] {
            assert_eq!(
                fully_qualified_namespace(input).ok().as_deref(),
                expected,
                "{input}"
            );
        }
        let c = ServiceBusConfig::entra("demo", "realtime-mirror");
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("fully qualified"), "{e}");
        assert!(
            ServiceBusConfig::entra("demo.servicebus.windows.net", "realtime-mirror")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = ServiceBusConfig::from_connection_string(&cs(), "t").unwrap();
        c.max_delivery_count = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_delivery_count"));
        c.max_delivery_count = 5;
        c.prefetch = 1_000_000;
        assert!(c.validate().unwrap_err().to_string().contains("prefetch"));
    }
}
