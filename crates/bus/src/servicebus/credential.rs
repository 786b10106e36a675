//! Entra ID credentials for Service Bus (see [`EntraCredential`] for why the
//! adapter chains them itself rather than relying on `DefaultAzureCredential`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_identity::{
    DefaultAzureCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential,
};

use super::EntraCredential;
use crate::BusError;

/// Build the credential `kind` names, wrapped in [`RefreshAhead`].
pub(crate) fn build(kind: &EntraCredential) -> Result<Arc<dyn TokenCredential>, BusError> {
    Ok(Arc::new(RefreshAhead(build_inner(kind)?)))
}

/// Reports each token's expiry [`super::convert::TOKEN_REFRESH_AHEAD`] early
/// (see [`super::convert::token_refresh_at`]): azservicebus's CBS link
/// schedules the next `put-token` exactly at the expiry it is given, and
/// Service Bus detaches links whose token has expired, so without this every
/// link would race its token's expiry once an hour.
#[derive(Debug)]
struct RefreshAhead(Arc<dyn TokenCredential>);

#[async_trait::async_trait]
impl TokenCredential for RefreshAhead {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> azure_core::Result<AccessToken> {
        let mut token = self.0.get_token(scopes, options).await?;
        let now = azure_core::date::OffsetDateTime::now_utc();
        let at = super::convert::token_refresh_at(
            token.expires_on.unix_timestamp(),
            now.unix_timestamp(),
        );
        if let Ok(early) = azure_core::date::OffsetDateTime::from_unix_timestamp(at) {
            token.expires_on = early;
        }
        Ok(token)
    }
}

fn build_inner(kind: &EntraCredential) -> Result<Arc<dyn TokenCredential>, BusError> {
    let fail = |what: &str, e: azure_core::Error| {
        BusError::Config(format!("Entra ID {what} credential: {e}"))
    };
    let managed = |client_id: Option<String>| {
        ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(UserAssignedId::ClientId),
            ..Default::default()
        }))
    };
    Ok(match kind {
        EntraCredential::ManagedIdentity { client_id } => {
            managed(client_id.clone()).map_err(|e| fail("managed identity", e))?
        }
        EntraCredential::WorkloadIdentity => {
            WorkloadIdentityCredential::new(None).map_err(|e| fail("workload identity", e))?
        }
        EntraCredential::Developer => {
            DefaultAzureCredential::new().map_err(|e| fail("developer (Azure CLI)", e))?
        }
        EntraCredential::Auto => {
            let mut sources: Vec<(&'static str, Arc<dyn TokenCredential>)> = Vec::new();
            if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
                if let Ok(c) = WorkloadIdentityCredential::new(None) {
                    sources.push(("workload identity", c));
                }
            }
            if let Ok(c) = managed(
                std::env::var("AZURE_CLIENT_ID")
                    .ok()
                    .filter(|s| !s.is_empty()),
            ) {
                sources.push(("managed identity", c));
            }
            if let Ok(c) = DefaultAzureCredential::new() {
                sources.push(("Azure CLI / azd", c));
            }
            if sources.is_empty() {
                return Err(BusError::Config(
                    "Entra ID: no credential is available (no workload identity, managed identity or Azure CLI)".into(),
                ));
            }
            Arc::new(Chain {
                sources,
                chosen: AtomicUsize::new(usize::MAX),
            })
        }
    })
}

/// The first credential of `sources` that returns a token, remembered.
#[derive(Debug)]
struct Chain {
    sources: Vec<(&'static str, Arc<dyn TokenCredential>)>,
    chosen: AtomicUsize,
}

#[async_trait::async_trait]
impl TokenCredential for Chain {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions>,
    ) -> azure_core::Result<AccessToken> {
        if let Some((_, c)) = self.sources.get(self.chosen.load(Ordering::Relaxed)) {
            return c.get_token(scopes, options).await;
        }
        let mut errors = Vec::new();
        for (i, (name, c)) in self.sources.iter().enumerate() {
            match c.get_token(scopes, options.clone()).await {
                Ok(token) => {
                    tracing::info!(credential = name, "Entra ID: authenticated");
                    self.chosen.store(i, Ordering::Relaxed);
                    return Ok(token);
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        Err(azure_core::Error::with_message(
            ErrorKind::Credential,
            || {
                format!(
                    "no Entra ID credential returned a token ({})",
                    errors.join("; ")
                )
            },
        ))
    }
}
