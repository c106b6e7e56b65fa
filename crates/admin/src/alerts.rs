//! The payload Prometheus Alertmanager POSTs to a `webhook_config` receiver (payload version
//! `"4"`), received on `POST /v1/alerts` and handed to [`Handler::alerts`].
//!
//! Unlike our own API requests, these types do **not** deny unknown fields: the payload is
//! Alertmanager's, not ours, and Alertmanager (or a compatible sender such as Grafana, which adds
//! `orgId`, `silenceURL`, `values`, ...) may add fields in any release. Refusing them would turn
//! an Alertmanager upgrade into silently lost alerts (Alertmanager does not retry a 4xx), so
//! extra fields are accepted and ignored. Field names follow Alertmanager's JSON exactly
//! (`groupKey`, `externalURL`, `generatorURL`), which is not uniform camelCase.
//!
//! [`Handler::alerts`]: crate::Handler::alerts

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One webhook notification: a group of alerts that share `group_labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertmanagerPayload {
    /// The payload format version; `"4"` for every Alertmanager since 0.9.
    pub version: String,
    /// Identifies the alert group across notifications (for de-duplication).
    #[serde(rename = "groupKey", default)]
    pub group_key: String,
    /// How many alerts were left out because of the receiver's `max_alerts`.
    #[serde(rename = "truncatedAlerts", default)]
    pub truncated_alerts: u64,
    /// `firing` if at least one alert of the group fires, else `resolved`.
    pub status: AlertStatus,
    /// The name of the Alertmanager receiver that sent this.
    #[serde(default)]
    pub receiver: String,
    #[serde(rename = "groupLabels", default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(rename = "commonLabels", default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(rename = "commonAnnotations", default)]
    pub common_annotations: BTreeMap<String, String>,
    /// Link back to the Alertmanager that sent this.
    #[serde(rename = "externalURL", default)]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// One alert of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub status: AlertStatus,
    /// Identify the alert; cutover matches on these (e.g. `service`, `alertname`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339, as Alertmanager formats it. Kept a string: this crate only translates, and the
    /// host decides which timestamps it trusts.
    #[serde(rename = "startsAt", default)]
    pub starts_at: String,
    /// RFC 3339; `"0001-01-01T00:00:00Z"` (Go's zero time) while the alert still fires.
    #[serde(rename = "endsAt", default)]
    pub ends_at: String,
    /// Link to the expression that produced the alert.
    #[serde(rename = "generatorURL", default)]
    pub generator_url: String,
    /// Alertmanager's stable hash of the labels.
    #[serde(default)]
    pub fingerprint: String,
}

/// Whether an alert (or a group) fires or has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertmanagerPayload {
    /// Only version 4 is understood; another version may mean other semantics for the same
    /// field names, so it is refused (422, visible in Alertmanager's failed-notification
    /// metrics and logs) rather than guessed at.
    pub(crate) fn validate(&self) -> Result<(), crate::ApiError> {
        if self.version != "4" {
            return Err(crate::ApiError::invalid(format!(
                "version: Alertmanager webhook payload version {:?} is not supported: cutover \
                 understands version \"4\" (Alertmanager 0.9 and later)",
                self.version
            )));
        }
        Ok(())
    }
}
