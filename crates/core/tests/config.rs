//! Config parsing and validation (DESIGN.md invariant 9): every invalid field is reported with
//! its path and a fix, unknown fields are errors, and the defaults are the blueprint's.

use cutover_core::spec::{AbortSpec, Config, GateSpec, ScheduleKind};
use cutover_core::{Dur, Weight};

const MINIMAL: &str = r#"
[service]
name = "shop"
[app]
command = ["./app", "--port", "{port}"]
"#;

fn errors(text: &str) -> Vec<String> {
    Config::from_toml_str(text)
        .expect_err("config rejected")
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn example_config_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/cutover.toml"
    ))
    .unwrap();
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(c.app.instances, 2);
    assert_eq!(
        c.rollout,
        Config::from_toml_str(MINIMAL).unwrap().rollout,
        "the example spells out the defaults"
    );
}

#[test]
fn defaults_are_the_blueprints() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    let r = &c.rollout;
    assert_eq!(r.schedule, ScheduleKind::Double);
    assert_eq!(r.initial(), Weight::from_bp(200).unwrap());
    assert_eq!(r.step_interval, Dur::from_secs(90));
    assert_eq!(r.interval, Dur::from_secs(5));
    assert_eq!(r.window, Dur::from_secs(30));
    assert_eq!(r.hold_previous, Dur::from_secs(3600));
    assert_eq!(r.min_samples, 50);
    assert_eq!(r.max_lookback, Dur::from_secs(300));
    assert_eq!(r.max_inconclusive, Dur::from_secs(600));
    assert!(
        matches!(&r.gates[0], GateSpec::Latency { quantile, max_increase_percent: Some(p), .. } if *quantile == 0.99 && *p == 5.0)
    );
    assert!(
        matches!(&r.aborts[0], AbortSpec::Latency { above, for_, .. } if *above == Dur::from_millis(800) && *for_ == Dur::from_secs(45))
    );
    assert_eq!(c.admin.listen.ip().to_string(), "127.0.0.1");
}

#[test]
fn unknown_field_is_an_error_naming_its_path() {
    let e = errors(&format!("{MINIMAL}\n[rollout]\nstep_intervall = \"5s\"\n"));
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("rollout"), "{}", e[0]);
    assert!(e[0].contains("unknown field `step_intervall`"), "{}", e[0]);
    assert!(e[0].contains("fix:"), "{}", e[0]);
    let e = errors(&format!("{MINIMAL}\n[[rollout.gates]]\nname = \"g\"\nmetric = \"latency\"\nmax_increase_percent = 5.0\nquantil = 0.9\n"));
    assert!(
        e[0].contains("rollout.gates[0]") && e[0].contains("quantil"),
        "{}",
        e[0]
    );
}

#[test]
fn type_errors_name_the_path_and_line() {
    let e = errors(&format!(
        "{MINIMAL}\n[rollout]\ninterval = \"five seconds\"\n"
    ));
    assert!(e[0].starts_with("rollout.interval"), "{}", e[0]);
    assert!(e[0].contains("\"90s\""), "{}", e[0]);
    assert!(e[0].contains("line"), "{}", e[0]);
    let e = errors("[service]\nname = \"x\"\n");
    assert!(e[0].starts_with("app: is required but missing"), "{}", e[0]);
}

/// Issue 10 item 7: type errors no longer stop at the first; each names its path, its line,
/// what was given and how to write it.
#[test]
fn every_type_error_is_reported_at_once_with_its_line_and_fix() {
    let text = r#"[service]
name = "shop"
listen = "localhost:99999"
workers = 70000
[admin]
listen = "localhost:9180"
[app]
command = ["./app", "--port", "{port}", 7]
[rollout]
min_samples = "ten"
step_intervall = "5s"
interval = "five seconds"
schedule = "doubel"
[[rollout.gates]]
name = "p99"
metric = "latency"
quantile = "high"
max_increase_percent = 5
[sticky]
fallback = "peer"
"#;
    let e = errors(text);
    let expected = [
        "service.listen: \"localhost:99999\" is not a socket address: port 99999 is out of range (0–65535) (line 3) (fix: write it as \"127.0.0.1:8080\"",
        "service.workers: expected a whole number from 0 to 65535, got the number 70000 (line 4)",
        "admin.listen: \"localhost:9180\" is not a socket address: \"localhost\" is a host name, not an IP address (line 6) (fix: write an IP address, e.g. \"127.0.0.1:9180\"",
        "app.command[3]: expected a string, got the number 7 (line 8) (fix: put the value in double quotes)",
        "rollout.min_samples: expected a whole number of 0 or more, got the string \"ten\" (line 10) (fix: write the number without quotes, e.g. min_samples = 50)",
        "rollout.step_intervall: unknown field `step_intervall` (line 11) (fix: did you mean `step_interval`?)",
        "rollout.interval: \"five seconds\" is not a duration",
        "rollout.schedule: \"doubel\" is not one of \"double\", \"steps\" (line 13) (fix: did you mean \"double\"?)",
        "rollout.gates[0].quantile: expected a number, got the string \"high\" (line 17) (fix: write the number without quotes, e.g. quantile = 0.99)",
        "sticky.fallback: \"peer\" is not one of \"peer_ip\", \"random\" (line 20)",
    ];
    assert_eq!(e.len(), expected.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expected) {
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}…");
    }
}

#[test]
fn type_errors_and_semantic_errors_come_in_one_list() {
    let e = errors(&format!(
        "{MINIMAL}\n[rollout]\nmin_samples = \"ten\"\ninitial_weight = 150\n"
    ));
    let joined = e.join("\n");
    assert_eq!(e.len(), 2, "{joined}");
    assert!(e[0].starts_with("rollout.min_samples:"), "{joined}");
    assert!(e[1].starts_with("rollout.initial_weight:"), "{joined}");
}

/// A key taken out for its type error gets its default for the rest of the checks; what the
/// validation then says about that key (or with it) would be about the default, not the file.
#[test]
fn a_bad_key_is_reported_once_not_again_through_its_default() {
    let e = errors(&format!(
        "{MINIMAL}\n[rollout]\nwindow = \"soon\"\ninterval = \"60s\"\n"
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("rollout.window: \"soon\" is not a duration"),
        "{e:#?}"
    );
}

#[test]
fn missing_required_keys_are_all_reported() {
    let e = errors(
        "[service]\n[app]\ncommand = [\"x\", \"{port}\"]\n[[notify]]\nname = \"a\"\n[[rollout.aborts]]\nname = \"x\"\nmetric = \"error_ratio\"\n",
    );
    let joined = e.join("\n");
    for want in [
        "service.name: is required but missing (line 1)",
        "notify[0].url: is required but missing (line 4)",
        "rollout.aborts[0].above: is required but missing (line 6)",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    assert_eq!(e.len(), 3, "{joined}");
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let e = errors("[service]\nname = shop\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].starts_with("(syntax): "), "{}", e[0]);
    assert!(e[0].contains("(line 2, column 8)"), "{}", e[0]);
    assert!(e[0].contains("fix: "), "{}", e[0]);
}

#[test]
fn every_bad_duration_names_the_one_grammar() {
    for bad in ["five", "1.5s", "5 seconds", "30s1m", "10", "2min"] {
        let e = errors(&format!("{MINIMAL}\n[rollout]\nwindow = \"{bad}\"\n"));
        assert_eq!(e.len(), 1, "{bad}: {e:#?}");
        assert!(
            e[0].starts_with(&format!("rollout.window: \"{bad}\" is not a duration")),
            "{}",
            e[0]
        );
        assert!(
            e[0].contains(cutover_core::time::DURATION_GRAMMAR),
            "{}",
            e[0]
        );
    }
    let e = errors(&format!("{MINIMAL}\n[rollout]\nschedule = \"steps\"\nsteps = [{{ weight = 5, pause = \"2 minutes\" }}]\n"));
    assert!(
        e[0].starts_with("rollout.steps[0].pause:")
            && e[0].contains(cutover_core::time::DURATION_GRAMMAR),
        "{}",
        e[0]
    );
    let ok = Config::from_toml_str(&format!(
        "{MINIMAL}\n[rollout]\nwindow = \"1m30s\"\ninterval = \"250ms\"\nmax_hold = \"1h 30m\"\n"
    ))
    .unwrap();
    assert_eq!(ok.rollout.window, Dur::from_secs(90));
    assert_eq!(ok.rollout.interval, Dur::from_millis(250));
    assert_eq!(ok.rollout.max_hold, Dur::from_secs(5400));
}

#[test]
fn every_invalid_value_is_reported_at_once_with_a_fix() {
    let text = r#"
[service]
name = "my shop!"
listen = "127.0.0.1:9000"
[admin]
listen = "127.0.0.1:9000"
[app]
command = ["./app"]
instances = 0
[app.readiness]
path = "ready"
failure_threshold = 0
[rollout]
initial_weight = 150
window = "1s"
interval = "5s"
steps = [{ weight = 5 }]
[[rollout.gates]]
name = "g"
metric = "latency"
quantile = 1.5
[[rollout.aborts]]
name = "g"
metric = "error_ratio"
above = 2.0
"#;
    let e = errors(text);
    let joined = e.join("\n");
    for path in [
        "service.name",
        "admin.listen",
        "app.command",
        "app.instances",
        "app.readiness.path",
        "app.readiness.failure_threshold",
        "rollout.initial_weight",
        "rollout.window",
        "rollout.steps",
        "rollout.gates[0].quantile",
        "rollout.gates[0]: has neither",
        "rollout.aborts[0].name",
        "rollout.aborts[0].above",
    ] {
        assert!(joined.contains(path), "missing {path} in:\n{joined}");
    }
    assert!(e.iter().all(|l| l.contains("(fix: ")), "{joined}");
}

#[test]
fn steps_must_not_go_backwards() {
    let e = errors(&format!("{MINIMAL}\n[rollout]\nschedule = \"steps\"\nsteps = [{{ weight = 20 }}, {{ weight = 10 }}]\n"));
    assert!(
        e[0].contains("rollout.steps[1].weight") && e[0].contains("only grow"),
        "{}",
        e[0]
    );
    let ok = Config::from_toml_str(&format!("{MINIMAL}\n[rollout]\nschedule = \"steps\"\nsteps = [{{ weight = 0.5 }}, {{ pause = \"until_promoted\" }}, {{ weight = 50, pause = \"2m\" }}]\n"));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn unknown_placeholders_are_rejected() {
    let e = errors("[service]\nname = \"s\"\n[app]\ncommand = [\"./app\", \"--port\", \"{port}\", \"{verison}\"]\n");
    assert!(e[0].contains("{verison}"), "{}", e[0]);
}

#[test]
fn drain_and_sticky_query_settings_are_checked() {
    let e = errors(&format!("{MINIMAL}\n[app.stop]\ndrain_path = \"drain\"\ndrain_signal = \"SIGUSR1\"\n[sticky]\nquery = \"a&b\"\n"));
    let joined = e.join("\n");
    assert!(
        joined.contains("app.stop.drain_path: \"drain\" does not start with '/'"),
        "{joined}"
    );
    assert!(
        joined.contains("together with app.stop.drain_signal"),
        "{joined}"
    );
    assert!(joined.contains("sticky.query"), "{joined}");
    let ok = Config::from_toml_str(&format!("{MINIMAL}\n[app.stop]\ndrain_path = \"/drain\"\nquiet_period = \"500ms\"\n[sticky]\nquery = \"client\"\n")).unwrap();
    assert_eq!(ok.app.stop.quiet_period, Dur::from_millis(500));
    assert_eq!(ok.sticky.query.as_deref(), Some("client"));
}

#[test]
fn proxy_workers_are_one_to_1024_or_one_per_cpu() {
    assert_eq!(
        Config::from_toml_str(MINIMAL).unwrap().service.workers,
        None
    );
    let with = |w: &str| {
        MINIMAL.replace(
            "name = \"shop\"",
            &format!("name = \"shop\"\nworkers = {w}"),
        )
    };
    assert_eq!(
        Config::from_toml_str(&with("4")).unwrap().service.workers,
        Some(4)
    );
    for bad in ["0", "1025"] {
        let e = errors(&with(bad)).join("\n");
        assert!(
            e.contains("service.workers") && e.contains("(fix: use 1 to 1024"),
            "{e}"
        );
    }
    let e = errors(&with("-1")).join("\n");
    assert!(e.contains("workers"), "{e}");
}

/// `service.trusted_proxies`: none by default; CIDRs and single addresses of both families;
/// a bad entry is refused naming its index and what to write.
#[test]
fn trusted_proxies_are_cidrs_and_none_by_default() {
    assert!(Config::from_toml_str(MINIMAL)
        .unwrap()
        .service
        .trusted_proxies
        .is_empty());
    let with = |list: &str| {
        MINIMAL.replace(
            "name = \"shop\"",
            &format!("name = \"shop\"\ntrusted_proxies = {list}"),
        )
    };
    let c = Config::from_toml_str(&with(r#"["10.0.0.0/8", "192.0.2.7", "fd00::/8"]"#)).unwrap();
    let listed: Vec<String> = c
        .service
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(listed, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
    for (bad, says) in [
        (
            r#"["10.0.0.0/8", "10.0.0.1/8"]"#,
            "write the network as \"10.0.0.0/8\"",
        ),
        (r#"["lb.internal"]"#, "is not an IP address range"),
        (r#"["::/200"]"#, "over 128"),
        ("\"10.0.0.0/8\"", "expected a list"),
    ] {
        let e = errors(&with(bad)).join("\n");
        assert!(
            e.contains("service.trusted_proxies") && e.contains(says),
            "{bad}: {e}"
        );
    }
}

#[test]
fn digest_paths_default_to_none_and_reject_per_instance_placeholders() {
    assert!(Config::from_toml_str(MINIMAL)
        .unwrap()
        .app
        .digest_paths
        .is_empty());
    let ok = MINIMAL.replace(
        "[app]\n",
        "[app]\ndigest_paths = [\"lib\", \"templates/*.html\", \"conf-{version}.toml\"]\n",
    );
    assert_eq!(
        Config::from_toml_str(&ok).unwrap().app.digest_paths.len(),
        3
    );
    let bad = MINIMAL.replace(
        "[app]\n",
        "[app]\ndigest_paths = [\"lib\", \" \", \"log-{instance}\", \"{nope}\"]\n",
    );
    let e = errors(&bad);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("app.digest_paths[1]") && e[0].contains("empty"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("app.digest_paths[2]") && e[1].contains("{instance}"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("app.digest_paths[3]") && e[2].contains("{nope}"),
        "{}",
        e[2]
    );
}

#[test]
fn max_lookback_shorter_than_the_window_is_refused() {
    let e = errors(&format!(
        "{MINIMAL}\n[rollout]\nwindow = \"30s\"\nmax_lookback = \"10s\"\nmax_inconclusive = \"0s\"\n"
    ));
    let joined = e.join("\n");
    assert!(
        joined.contains("rollout.max_lookback") && joined.contains("shorter than rollout.window"),
        "{joined}"
    );
    assert!(joined.contains("rollout.max_inconclusive"), "{joined}");
    let ok = Config::from_toml_str(&format!(
        "{MINIMAL}\n[rollout]\nwindow = \"30s\"\nmax_lookback = \"30s\"\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

/// All at once, for every key the example sets: each replaced by `true` (no field of the spec
/// is a boolean) is one error naming that key, and nothing else is reported.
#[test]
fn every_key_of_the_example_set_wrong_at_once_is_one_error_each() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/cutover.toml"
    ))
    .unwrap();
    let mut doc: toml::Value = toml::from_str(&text).unwrap();
    fn spoil(v: &mut toml::Value, path: String, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t.iter_mut() {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    // `metric` picks a gate's kind; the kind's own keys are what is checked.
                    if matches!(v, toml::Value::Table(_) | toml::Value::Array(_)) || k == "metric" {
                        if k != "metric" {
                            spoil(v, p, out);
                        }
                    } else {
                        *v = toml::Value::Boolean(true);
                        out.push(p);
                    }
                }
            }
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) => {
                for (i, v) in a.iter_mut().enumerate() {
                    spoil(v, format!("{path}[{i}]"), out);
                }
            }
            other => {
                *other = toml::Value::Boolean(true);
                out.push(path);
            }
        }
    }
    let mut spoiled = Vec::new();
    spoil(&mut doc, String::new(), &mut spoiled);
    assert!(spoiled.len() > 50, "{spoiled:?}");
    let e = Config::from_toml_str(&toml::to_string(&doc).unwrap())
        .expect_err("every key is wrong")
        .errors;
    let mut paths: Vec<String> = e.iter().map(|e| e.path.clone()).collect();
    paths.sort();
    spoiled.sort();
    assert_eq!(paths, spoiled, "{e:#?}");
    for err in &e {
        assert!(err.message.contains("got true"), "{err}");
        assert!(!err.fix.is_empty(), "{err}");
    }
}

mod mangled {
    use super::*;
    use proptest::prelude::*;

    fn leaves(v: &toml::Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let mut p = path.clone();
                    p.push(k.clone());
                    leaves(v, p, out);
                }
            }
            _ => out.push(path),
        }
    }

    fn set(v: &mut toml::Value, path: &[String], new: toml::Value) {
        match (v, path) {
            (toml::Value::Table(t), [k]) => {
                t.insert(k.clone(), new);
            }
            (toml::Value::Table(t), [k, rest @ ..]) => {
                if let Some(v) = t.get_mut(k) {
                    set(v, rest, new);
                }
            }
            _ => {}
        }
    }

    fn any_value() -> impl Strategy<Value = toml::Value> {
        prop_oneof![
            "[a-z0-9:. {}]{0,12}".prop_map(toml::Value::String),
            any::<i64>().prop_map(toml::Value::Integer),
            (-1e6f64..1e6).prop_map(toml::Value::Float),
            any::<bool>().prop_map(toml::Value::Boolean),
            Just(toml::Value::Array(vec![toml::Value::Integer(1)])),
            Just(toml::Value::Table(toml::Table::new())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever values the example's keys are given, reading ends (no panic, no loop) with
        /// either a config or at least one error, each with a path and a fix.
        #[test]
        fn any_values_give_a_config_or_errors_with_fixes(
            picks in proptest::collection::vec((any::<prop::sample::Index>(), any_value()), 1..8)
        ) {
            let text = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/cutover.toml"
            ))
            .unwrap();
            let mut doc: toml::Value = toml::from_str(&text).unwrap();
            let mut all = Vec::new();
            leaves(&doc, Vec::new(), &mut all);
            for (i, v) in picks {
                let path = i.get(&all).clone();
                set(&mut doc, &path, v);
            }
            if let Err(e) = Config::from_toml_str(&toml::to_string(&doc).unwrap()) {
                prop_assert!(!e.errors.is_empty());
                for err in &e.errors {
                    prop_assert!(!err.path.is_empty() && !err.fix.is_empty(), "{}", err);
                }
            }
        }
    }
}

#[test]
fn an_unknown_notify_event_names_its_place_and_lists_the_kinds() {
    let sink = |events: &str| {
        errors(&format!(
            "{MINIMAL}\n[[notify]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/hook\"\nevents = {events}\n"
        ))
    };
    let all =
        "\"started\", \"step\", \"held\", \"paused\", \"resumed\", \"promoted\", \"aborted\", \
               \"rolled_back\", \"previous_released\", \"crash_loop\"";
    let e = sink("[\"aborted\", \"failed\"]");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with(&format!(
            "notify[0].events[1]: \"failed\" is not one of {all}"
        )) && e[0].contains(&format!("(fix: use one of {all})")),
        "{e:#?}"
    );
    let e = sink("[\"promotd\"]");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("notify[0].events[0]: \"promotd\" is not one of")
            && e[0].contains("did you mean \"promoted\"?"),
        "{e:#?}"
    );
}

#[test]
fn notify_kinds_read_by_their_config_names() {
    use cutover_core::spec::NotifyKind;
    for k in NotifyKind::ALL {
        let json = serde_json::to_value(k).unwrap();
        assert_eq!(json, k.as_str());
        assert_eq!(k.as_str().parse::<NotifyKind>(), Ok(k));
    }
    let err = "failed".parse::<NotifyKind>().unwrap_err();
    assert!(err.contains("use one of started, step,"), "{err}");
}

#[test]
fn handoff_needs_one_instance_and_no_steps_and_says_so() {
    use cutover_core::spec::Strategy;
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.rollout.strategy, Strategy::Canary, "the default");
    assert_eq!(c.rollout.handoff.path, "/cutover/handoff");
    assert_eq!(c.rollout.handoff.timeout, Dur::from_secs(5));
    assert_eq!(c.rollout.handoff.drain_timeout, Dur::from_secs(10));

    let ok = format!("{MINIMAL}[rollout]\nstrategy = \"handoff\"\n");
    assert_eq!(
        Config::from_toml_str(&ok).unwrap().rollout.strategy,
        Strategy::Handoff
    );

    let text = r#"
[service]
name = "signer"
[app]
command = ["./app", "--port", "{port}"]
instances = 2
[rollout]
strategy = "handoff"
schedule = "steps"
steps = [{ weight = 5 }]
[rollout.handoff]
path = "handoff"
timeout = "0s"
"#;
    let errs = errors(text);
    let has = |needle: &str| errs.iter().any(|e| e.contains(needle));
    assert!(
        has("app.instances: is 2 but rollout.strategy is \"handoff\"")
            && has("set app.instances = 1"),
        "{errs:?}"
    );
    assert!(
        has("rollout.steps: is set but rollout.strategy is \"handoff\""),
        "{errs:?}"
    );
    assert!(
        has("rollout.handoff.path: \"handoff\" does not start with '/'"),
        "{errs:?}"
    );
    assert!(has("rollout.handoff.timeout: is zero"), "{errs:?}");

    let typo = format!("{MINIMAL}[rollout]\nstrategy = \"hand-off\"\n");
    let errs = errors(&typo);
    assert!(
        errs.iter().any(|e| e.contains("rollout.strategy")),
        "{errs:?}"
    );
}
