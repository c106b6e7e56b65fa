//! Traffic routers: the weights a Gateway API `HTTPRoute` or an Istio `VirtualService` must
//! carry for a route table of the engine's. Pure: the objects come in as JSON, the new
//! `spec` part goes out, or `None` when the object already says so (no write).
//!
//! Only the weights of the two backends cutover was told about are touched: other
//! backendRefs, matches, filters stay as the user wrote them. DESIGN.md invariant 10 (the
//! blast radius): a router that cannot express the weight exactly rounds the canary *down*.
//!
//! Sticky routing (`trafficRouting.sticky`) is what each router can do with one client key:
//! Gateway API `sessionPersistence` on the split rules, Istio `consistentHash` on the
//! DestinationRules. Neither is DESIGN.md invariant 2 (docs/kubernetes.md says what each
//! one guarantees); the single-host proxy is the runtime that keeps it.

use cutover_core::Weight;
use serde_json::{json, Value};

use crate::crd::StickyKey;

/// What is wrong with a route object, naming the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {message}")]
pub struct RouteError {
    pub kind: &'static str,
    pub name: String,
    pub message: String,
}

/// Gateway API weights: relative integers, so basis points are exact (0.5 % = 50 of 10,000).
fn gateway_weights(canary: Weight) -> (i64, i64) {
    (i64::from(canary.complement().bp()), i64::from(canary.bp()))
}

/// Istio weights: whole percent summing to 100; the canary's is rounded down.
pub fn istio_weights(canary: Weight) -> (i64, i64) {
    let c = i64::from(canary.bp()) / 100;
    (100 - c, c)
}

/// Gateway API `sessionPersistence` for a sticky key (GEP-1619, experimental channel): the
/// gateway pins a session to the backend it first chose, by this header or cookie. A query
/// parameter has no equivalent (the spec refuses it: `RolloutSpec::to_core`).
pub fn session_persistence(key: &StickyKey) -> Option<Value> {
    match key {
        StickyKey::Header(h) => Some(json!({"sessionName": h, "type": "Header"})),
        StickyKey::Cookie(c) => Some(json!({"sessionName": c, "type": "Cookie"})),
        StickyKey::Query(_) => None,
    }
}

/// Istio `consistentHash` for a sticky key. The other hash keys are set to `null` so a merge
/// patch replaces whichever one was there (they are a oneof: two would be refused). A cookie
/// gets `ttl: 0s`: Envoy then issues a session cookie to a client that has none.
pub fn consistent_hash(key: &StickyKey) -> Value {
    let mut h = json!({"httpHeaderName": null, "httpCookie": null,
                       "httpQueryParameterName": null, "useSourceIp": null});
    match key {
        StickyKey::Header(n) => h["httpHeaderName"] = n.as_str().into(),
        StickyKey::Query(n) => h["httpQueryParameterName"] = n.as_str().into(),
        StickyKey::Cookie(n) => h["httpCookie"] = json!({"name": n, "ttl": "0s"}),
    }
    h
}

/// RFC 7386 JSON merge patch, applied to `target`: what the API server makes of a patch, so
/// a patch that would change nothing is not sent.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The merge patch of a DestinationRule's `spec` that makes its load balancer hash on
/// `key`, or `None` when it already does. The DestinationRule must be for `stable` or
/// `canary` (else it would change another service's balancing).
pub fn destination_rule_spec(
    dr: &Value,
    stable: &str,
    canary: &str,
    key: &StickyKey,
) -> Result<Option<Value>, RouteError> {
    let name = dr["metadata"]["name"].as_str().unwrap_or("?").to_string();
    let host = &dr["spec"]["host"];
    if !(host_is(host, stable) || host_is(host, canary)) {
        return Err(RouteError {
            kind: "DestinationRule",
            name,
            message: format!(
                "its host {host} is neither {stable:?} nor {canary:?}; list only the \
                 DestinationRules of stableService and canaryService in istio.destinationRules"
            ),
        });
    }
    // `simple` and `consistentHash` are a oneof too.
    let patch = json!({"trafficPolicy": {"loadBalancer": {
        "simple": null, "consistentHash": consistent_hash(key)}}});
    let mut after = dr["spec"].clone();
    merge(&mut after, &patch);
    Ok((after != dr["spec"]).then_some(patch))
}

/// The HTTPRoute's `spec.rules` with the backendRefs named `stable` and `canary` weighted
/// (and, with `persistence`, that `sessionPersistence` on the rules that split), or `None`
/// when they already are.
pub fn http_route_rules(
    route: &Value,
    stable: &str,
    canary: &str,
    weight: Weight,
    persistence: Option<&Value>,
) -> Result<Option<Value>, RouteError> {
    let name = route["metadata"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let err = |message: String| RouteError {
        kind: "HTTPRoute",
        name: name.clone(),
        message,
    };
    let mut rules = route["spec"]["rules"].clone();
    let Some(list) = rules.as_array_mut() else {
        return Err(err("has no spec.rules".into()));
    };
    let (ws, wc) = gateway_weights(weight);
    let mut found = false;
    for rule in list.iter_mut() {
        let Some(refs) = rule["backendRefs"].as_array_mut() else {
            continue;
        };
        let has = |n: &str| refs.iter().any(|r| r["name"] == n);
        if !(has(stable) && has(canary)) {
            continue;
        }
        found = true;
        for r in refs.iter_mut() {
            if r["name"] == stable {
                r["weight"] = ws.into();
            } else if r["name"] == canary {
                r["weight"] = wc.into();
            }
        }
        if let Some(p) = persistence {
            rule["sessionPersistence"] = p.clone();
        }
    }
    if !found {
        return Err(err(format!(
            "no rule has backendRefs to both {stable:?} and {canary:?}; add both Services \
             (stableService, canaryService) to the backendRefs of the rule to split"
        )));
    }
    Ok((rules != route["spec"]["rules"]).then_some(rules))
}

/// Whether a VirtualService destination host names the Service `svc` (short or FQDN).
fn host_is(host: &Value, svc: &str) -> bool {
    host.as_str()
        .is_some_and(|h| h == svc || h.strip_prefix(svc).is_some_and(|r| r.starts_with('.')))
}

/// The VirtualService's `spec.http` with the destinations to `stable` and `canary` weighted,
/// or `None` when they already are.
pub fn virtual_service_http(
    vs: &Value,
    stable: &str,
    canary: &str,
    weight: Weight,
) -> Result<Option<Value>, RouteError> {
    let name = vs["metadata"]["name"].as_str().unwrap_or("?").to_string();
    let err = |message: String| RouteError {
        kind: "VirtualService",
        name: name.clone(),
        message,
    };
    let mut http = vs["spec"]["http"].clone();
    let Some(list) = http.as_array_mut() else {
        return Err(err("has no spec.http".into()));
    };
    let (ws, wc) = istio_weights(weight);
    let mut found = false;
    for route in list.iter_mut() {
        let Some(dests) = route["route"].as_array_mut() else {
            continue;
        };
        let has = |n: &str| dests.iter().any(|d| host_is(&d["destination"]["host"], n));
        if !(has(stable) && has(canary)) {
            continue;
        }
        found = true;
        for d in dests.iter_mut() {
            if host_is(&d["destination"]["host"], stable) {
                d["weight"] = ws.into();
            } else if host_is(&d["destination"]["host"], canary) {
                d["weight"] = wc.into();
            }
        }
    }
    if !found {
        return Err(err(format!(
            "no http route has destinations to both {stable:?} and {canary:?}; add both \
             Services (stableService, canaryService) as destinations of the route to split"
        )));
    }
    Ok((http != vs["spec"]["http"]).then_some(http))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn w(bp: u16) -> Weight {
        Weight::from_bp(bp).unwrap()
    }

    #[test]
    fn http_route_weights_are_basis_points_and_other_refs_stay() {
        let route = json!({"metadata": {"name": "web"}, "spec": {"rules": [
            {"matches": [{"path": {"value": "/admin"}}], "backendRefs": [{"name": "admin", "port": 80}]},
            {"backendRefs": [{"name": "web-stable", "port": 80, "weight": 100}, {"name": "web-canary", "port": 80, "weight": 0}]}
        ]}});
        let rules = http_route_rules(&route, "web-stable", "web-canary", w(50), None)
            .unwrap()
            .unwrap();
        assert_eq!(rules[0], route["spec"]["rules"][0]);
        assert_eq!(rules[1]["backendRefs"][0]["weight"], 9950);
        assert_eq!(rules[1]["backendRefs"][1]["weight"], 50);
        let mut done = route.clone();
        done["spec"]["rules"] = rules;
        assert_eq!(
            http_route_rules(&done, "web-stable", "web-canary", w(50), None).unwrap(),
            None
        );
    }

    #[test]
    fn a_route_without_both_services_is_an_error_naming_them() {
        let route = json!({"metadata": {"name": "web"}, "spec": {"rules": [
            {"backendRefs": [{"name": "web-stable"}]}]}});
        let e = http_route_rules(&route, "web-stable", "web-canary", w(200), None).unwrap_err();
        assert!(e.to_string().contains("\"web-canary\""), "{e}");
    }

    #[test]
    fn session_persistence_goes_on_the_split_rules_only() {
        let route = json!({"metadata": {"name": "web"}, "spec": {"rules": [
            {"backendRefs": [{"name": "admin"}]},
            {"backendRefs": [{"name": "web-stable", "weight": 9950}, {"name": "web-canary", "weight": 50}]}
        ]}});
        let p = session_persistence(&StickyKey::Header("x-client-id".into())).unwrap();
        let rules = http_route_rules(&route, "web-stable", "web-canary", w(50), Some(&p))
            .unwrap()
            .unwrap();
        assert_eq!(rules[0], route["spec"]["rules"][0]);
        assert_eq!(
            rules[1]["sessionPersistence"],
            json!({"sessionName": "x-client-id", "type": "Header"})
        );
        let mut done = route.clone();
        done["spec"]["rules"] = rules;
        assert_eq!(
            http_route_rules(&done, "web-stable", "web-canary", w(50), Some(&p)).unwrap(),
            None
        );
        assert_eq!(
            session_persistence(&StickyKey::Cookie("sid".into())),
            Some(json!({"sessionName": "sid", "type": "Cookie"}))
        );
        assert_eq!(session_persistence(&StickyKey::Query("c".into())), None);
    }

    #[test]
    fn a_destination_rule_hashes_on_the_key_and_only_once() {
        let dr = json!({"metadata": {"name": "web-stable"}, "spec": {"host": "web-stable",
            "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST", "warmupDurationSecs": "60s"},
                              "connectionPool": {"http": {"http2MaxRequests": 100}}}}});
        let key = StickyKey::Cookie("sid".into());
        let patch = destination_rule_spec(&dr, "web-stable", "web-canary", &key)
            .unwrap()
            .unwrap();
        let mut after = dr.clone();
        merge(&mut after["spec"], &patch);
        assert_eq!(
            after["spec"]["trafficPolicy"],
            json!({"loadBalancer": {"warmupDurationSecs": "60s",
                                    "consistentHash": {"httpCookie": {"name": "sid", "ttl": "0s"}}},
                   "connectionPool": {"http": {"http2MaxRequests": 100}}})
        );
        assert_eq!(
            destination_rule_spec(&after, "web-stable", "web-canary", &key).unwrap(),
            None
        );
        // Another key replaces the cookie rather than joining it (a oneof).
        let by_header = destination_rule_spec(
            &after,
            "web-stable",
            "web-canary",
            &StickyKey::Header("x-client-id".into()),
        )
        .unwrap()
        .unwrap();
        merge(&mut after["spec"], &by_header);
        assert_eq!(
            after["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"],
            json!({"httpHeaderName": "x-client-id"})
        );
        let other = json!({"metadata": {"name": "db"}, "spec": {"host": "db"}});
        let e = destination_rule_spec(&other, "web-stable", "web-canary", &key).unwrap_err();
        assert!(e.to_string().contains("istio.destinationRules"), "{e}");
    }

    #[test]
    fn istio_rounds_the_canary_down_and_matches_fqdn_hosts() {
        assert_eq!(istio_weights(w(50)), (100, 0));
        assert_eq!(istio_weights(w(250)), (98, 2));
        let vs = json!({"metadata": {"name": "web"}, "spec": {"http": [{"route": [
            {"destination": {"host": "web-stable.default.svc.cluster.local"}, "weight": 100},
            {"destination": {"host": "web-canary"}, "weight": 0}]}]}});
        let http = virtual_service_http(&vs, "web-stable", "web-canary", w(1000))
            .unwrap()
            .unwrap();
        assert_eq!(http[0]["route"][0]["weight"], 90);
        assert_eq!(http[0]["route"][1]["weight"], 10);
        assert!(!host_is(&json!("web-stable-x"), "web-stable"));
    }
}
