//! Which Alertmanager alerts abort a rollout is decided in core, with plain values.

use cutover_core::spec::AlertsSpec;
use std::collections::BTreeMap;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spec() -> AlertsSpec {
    AlertsSpec {
        matchers: labels(&[("service", "{{service}}"), ("severity", "page")]),
    }
}

#[test]
fn a_firing_alert_with_every_matcher_label_matches() {
    let l = labels(&[
        ("alertname", "HighLatency"),
        ("service", "shop"),
        ("severity", "page"),
    ]);
    assert!(spec().matches("shop", true, &l));
    assert_eq!(AlertsSpec::name(&l), "HighLatency");
}

#[test]
fn resolved_alerts_other_services_and_missing_labels_do_not_match() {
    let l = labels(&[("service", "shop"), ("severity", "page")]);
    assert!(!spec().matches("shop", false, &l), "resolved");
    assert!(
        !spec().matches("cart", true, &l),
        "{{service}} is this service"
    );
    let partial = labels(&[("service", "shop")]);
    assert!(
        !spec().matches("shop", true, &partial),
        "every matcher must hold"
    );
    let literal = labels(&[("service", "{{service}}"), ("severity", "page")]);
    assert!(!spec().matches("shop", true, &literal));
    assert_eq!(AlertsSpec::name(&partial), "(unnamed)");
}

#[test]
fn no_matchers_match_every_firing_alert() {
    let any = AlertsSpec {
        matchers: BTreeMap::new(),
    };
    assert!(any.matches("shop", true, &labels(&[])));
    assert!(!any.matches("shop", false, &labels(&[])));
}
